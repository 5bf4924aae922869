"""Third-party plugins on a running daemon: the examples installed from wheels and
from directories, used through the docker CLI, disabled (refused while in use),
enabled and removed, all without a restart; a broken plugin shows its error in
``plugin ls`` while the daemon keeps working."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import DOCKER, needs_root

from engine.sdk.packaging import build_wheel

pytestmark = [pytest.mark.root, needs_root,
              pytest.mark.skipif(not DOCKER, reason="the docker CLI is not installed")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    return {name: build_wheel(EXAMPLES / name, out) for name in ("volume-memfs", "net-dummy")}


class Tools:
    """The ``engine`` and ``docker`` CLIs against one daemon."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def _run(self, argv: list[str], ok: bool | None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(argv, capture_output=True, text=True, env=self.daemon.env,
                           timeout=120, stdin=subprocess.DEVNULL)
        if ok is not None and (p.returncode == 0) != ok:
            raise AssertionError(f"{' '.join(argv)} -> {p.returncode}\n{p.stdout}\n{p.stderr}\n"
                                 f"{self.daemon.log_path.read_text()[-2000:]}")
        return p

    def engine(self, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, "-m", "engine.sdk.cli", *args], ok)

    def docker(self, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
        return self._run([DOCKER, *args], ok)

    def plugins(self) -> dict[str, dict]:
        return {p["Name"]: p for p in json.loads(self.daemon.request("GET", "/plugins")[1])}


@pytest.fixture
def tools(fresh_daemon):
    t = Tools(fresh_daemon)
    yield t
    memfs_state = Path(fresh_daemon.data_root, "drivers", "volume", "memfs")
    shutil.rmtree(Path("/dev/shm/engine-memfs",
                       hashlib.sha256(str(memfs_state).encode()).hexdigest()[:12]),
                  ignore_errors=True)


def test_volume_plugin_from_a_wheel(tools, wheels):
    out = tools.engine("plugin", "install", "--grant-all-permissions",
                       str(wheels["volume-memfs"])).stdout
    assert out.splitlines()[-1] == "Installed plugin memfs"
    ls = tools.docker("plugin", "ls").stdout
    assert any(line.split()[1:2] == ["memfs"] and line.split()[-1] == "true"
               for line in ls.splitlines())
    assert tools.docker("volume", "create", "-d", "memfs", "v1").stdout.strip() == "v1"
    mount = "type=volume,src=v1,dst=/data,volume-driver=memfs"
    tools.docker("run", "-d", "--name", "holder", "--mount", mount, "busybox",
                 "sh", "-c", "echo kept > /data/f; sleep 60")
    refused = tools.engine("plugin", "disable", "memfs", ok=False)
    assert "in use" in refused.stderr
    tools.docker("rm", "-f", "holder")
    assert tools.docker("run", "--rm", "--mount", mount, "busybox",
                        "cat", "/data/f").stdout == "kept\n"
    assert "enabled" in tools.engine("plugin", "rm", "memfs", ok=False).stderr
    tools.docker("volume", "rm", "v1")
    tools.engine("plugin", "disable", "memfs")
    assert "not found" in tools.docker("volume", "create", "-d", "memfs", "v2", ok=False).stderr
    tools.engine("plugin", "enable", "memfs")
    tools.docker("volume", "create", "-d", "memfs", "v2")
    tools.docker("volume", "rm", "v2")
    tools.engine("plugin", "rm", "-f", "memfs")
    assert "memfs" not in tools.plugins()
    site = next(Path(tools.daemon.data_root, "plugins", "env", "lib").glob("*/site-packages"))
    assert not (site / "engine_memfs").exists()


def test_log_plugin_from_a_directory_and_network_plugin_from_a_wheel(tools, wheels):
    # a container first: monitors (and their fork server) already run when the plugin
    # arrives, and still find its log writer
    tools.docker("run", "--rm", "busybox", "true")
    tools.engine("plugin", "install", "--grant-all-permissions", str(EXAMPLES / "log-counter"))
    assert tools.plugins()["log-counter"]["Enabled"] is True
    tools.docker("run", "--name", "counted", "--log-driver", "counter", "busybox",
                 "sh", "-c", "echo one; echo two; echo three")
    assert tools.docker("logs", "counted").stdout == "one\ntwo\nthree\n"
    assert tools.docker("logs", "--tail", "1", "counted").stdout == "three\n"
    assert "in use" in tools.engine("plugin", "disable", "log-counter", ok=False).stderr
    tools.docker("rm", "counted")
    tools.engine("plugin", "rm", "-f", "log-counter")
    assert "log-counter" not in tools.plugins()

    tools.engine("plugin", "install", "--grant-all-permissions", "--alias", "dummy-net",
                 str(wheels["net-dummy"]))
    tools.docker("network", "create", "-d", "dummy", "--subnet", "10.231.7.0/24", "dn")
    addrs = tools.docker("run", "--rm", "--network", "dn", "busybox", "ip", "-o", "-4",
                         "addr").stdout
    assert "10.231.7.2/24" in addrs
    tools.docker("network", "rm", "dn")
    tools.engine("plugin", "disable", "dummy-net")
    tools.engine("plugin", "rm", "dummy-net")
    assert "dummy-net" not in tools.plugins()


def _broken_wheel(directory: Path) -> Path:
    """A wheel whose plugin fails at import (written by hand: no build needed)."""
    files = {
        "broken_plugin/__init__.py": b"raise RuntimeError('broken on purpose')\n",
        "broken_plugin/engine-plugin.json": b'{"description": "Fails to import"}',
        "broken_plugin-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n",
        "broken_plugin-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "broken_plugin-1.0.dist-info/entry_points.txt":
            b"[engine.plugins]\nbroken = broken_plugin\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("broken_plugin-1.0.dist-info/RECORD,,")
    path = directory / "broken_plugin-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("broken_plugin-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_a_broken_plugin_is_shown_and_the_daemon_goes_on(tools, tmp_path):
    wheel = _broken_wheel(tmp_path)
    failed = tools.engine("plugin", "install", "--grant-all-permissions", str(wheel), ok=False)
    assert "broken on purpose" in failed.stderr
    ls = tools.engine("plugin", "ls", "--no-trunc").stdout
    line = next(line for line in ls.splitlines() if line.split()[1] == "broken")
    assert "broken on purpose" in line and line.split()[-1] == "false"
    assert tools.plugins()["broken"]["Error"]
    assert tools.docker("run", "--rm", "busybox", "echo", "alive").stdout == "alive\n"
    tools.engine("plugin", "rm", "broken")
    assert "broken" not in tools.plugins()


def test_create_builds_a_directory_into_a_disabled_plugin_which_upgrades(tools):
    assert tools.engine("plugin", "create", "ramvol", str(EXAMPLES / "volume-memfs")).stdout \
        == "ramvol\n"
    created = tools.plugins()["ramvol"]
    assert created["Enabled"] is False and created["PluginReference"] == "created:ramvol"
    tools.engine("plugin", "enable", "ramvol")
    tools.docker("volume", "create", "-d", "memfs", "made")
    assert "disabled before upgrading" in tools.engine(
        "plugin", "upgrade", "--grant-all-permissions", "ramvol",
        str(EXAMPLES / "volume-memfs"), ok=False).stderr
    tools.engine("plugin", "disable", "ramvol")
    tools.engine("plugin", "upgrade", "--grant-all-permissions", "ramvol",
                 str(EXAMPLES / "volume-memfs"))
    upgraded = tools.plugins()["ramvol"]
    assert upgraded["Enabled"] is False
    assert upgraded["PluginReference"] == str(EXAMPLES / "volume-memfs")
    tools.engine("plugin", "enable", "ramvol")
    assert tools.docker("volume", "ls", "-q", "--filter", "driver=memfs").stdout == "made\n"
    tools.docker("volume", "rm", "made")
    # (pushing is covered in test_managed_plugins.py, against a loopback registry)
    assert "not found" in tools.engine("plugin", "push", "nosuch:1.0", ok=False).stderr
    tools.engine("plugin", "rm", "--force", "ramvol")
