"""Every built-in driver runs the same conformance suites a third party runs."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine.plugins.log.jsonfile import JsonFileDriver
from engine.plugins.log.local import LocalLogDriver
from engine.plugins.log.syslog import SyslogLogDriver
from engine.plugins.log.none import NoneLogDriver
from engine.plugins.network.host import HostNetworkDriver
from engine.plugins.network.none import NoneNetworkDriver
from engine.plugins.volume.bind import BindDriver, LocalDriver
from engine.sdk.drivers import DriverContext
from engine.sdk.testing.log import LogDriverSuite
from engine.sdk.testing.network import NetworkDriverSuite
from engine.sdk.testing.volume import VolumeDriverSuite


def ctx(tmp_path: Path, name: str) -> DriverContext:
    state = tmp_path / "state" / name
    state.mkdir(parents=True)
    return DriverContext(name=name, state_dir=str(state), data_root=str(tmp_path),
                         exec_root=str(tmp_path / "run"))


class TestLocalVolumes(VolumeDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return LocalDriver(ctx(tmp_path, "local"))


class TestBindVolumes(VolumeDriverSuite):
    create_options = {"create_host_path": "true"}
    lists_volumes = False
    remove_forgets = False
    rejects_slashes = False
    keeps_labels = False

    def volume_name(self, base: str, scratch: Path) -> str:
        return str(scratch / "host" / base)

    @pytest.fixture
    def driver(self, tmp_path):
        return BindDriver(ctx(tmp_path, "bind"))


class TestJsonFileLogs(LogDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return JsonFileDriver(ctx(tmp_path, "json-file"))


class TestJsonFileLogsRotated(LogDriverSuite):
    """Rotation keeps every line readable while the files hold them all."""

    log_options = {"max-size": "1k", "max-file": "10"}

    @pytest.fixture
    def driver(self, tmp_path):
        return JsonFileDriver(ctx(tmp_path, "json-file"))


class TestJsonFileLogsRotatedCompressed(LogDriverSuite):
    """The same with the rotated files gzipped."""

    log_options = {"max-size": "1k", "max-file": "10", "compress": "true"}

    @pytest.fixture
    def driver(self, tmp_path):
        return JsonFileDriver(ctx(tmp_path, "json-file"))


class TestLocalLogs(LogDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return LocalLogDriver(ctx(tmp_path, "local"))


@pytest.fixture(scope="module")
def syslog_sink():
    """A UDP socket on loopback that receives (and ignores) what syslog sends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"udp://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


class TestSyslogLogs(LogDriverSuite):
    """Dual logging: lines go to syslog and to a local cache ``logs`` reads back."""

    @pytest.fixture(autouse=True)
    def _address(self, syslog_sink, monkeypatch):
        monkeypatch.setattr(self, "log_options", {"syslog-address": syslog_sink})

    @pytest.fixture
    def driver(self, tmp_path):
        return SyslogLogDriver(ctx(tmp_path, "syslog"))


class TestNoneLogs(LogDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return NoneLogDriver(ctx(tmp_path, "none"))


class TestHostNetwork(NetworkDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return HostNetworkDriver(ctx(tmp_path, "host"))


class TestNullNetwork(NetworkDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return NoneNetworkDriver(ctx(tmp_path, "null"))


def test_unreadable_drivers_skip_rather_than_pass(tmp_path):
    """A suite test of behaviour a driver does not claim is skipped, never passed."""
    suite = TestNoneLogs()
    with pytest.raises(pytest.skip.Exception):
        suite.readable(NoneLogDriver(ctx(tmp_path, "none")))


# Built-in drivers that cannot run the suites here, and why. A new built-in driver
# must either get a suite class above or a reason here.
NOT_HERE = {
    ("log", "journald"): "needs a systemd-journald socket",
    ("log", "fluentd"): "needs a fluentd server",
    ("network", "bridge"): "needs root and netlink: tests/integration/test_bridge.py",
    ("network", "remote"): "out-of-process drivers: tests/integration/test_remote_plugins.py",
    ("volume", "remote"): "out-of-process drivers: tests/integration/test_remote_plugins.py",
}


def test_every_builtin_driver_runs_a_suite(tmp_path):
    import sys
    import tomllib
    from importlib.metadata import EntryPoint

    from engine.core.plugins import GROUP, PluginHost

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    eps = tomllib.loads(pyproject.read_text())["project"]["entry-points"][GROUP]
    host = PluginHost(str(tmp_path / "data"), str(tmp_path / "run"))
    host.discover([EntryPoint(name=n, value=v, group=GROUP) for n, v in eps.items()])
    covered = set()
    for obj in vars(sys.modules[__name__]).values():
        if isinstance(obj, type) and obj.__name__.startswith("Test"):
            suite = next((b for b in obj.__mro__ if b in (VolumeDriverSuite, LogDriverSuite,
                                                          NetworkDriverSuite)), None)
            fixture = getattr(obj, "driver", None)
            if suite is not None and fixture is not None:
                kind = {VolumeDriverSuite: "volume", LogDriverSuite: "log",
                        NetworkDriverSuite: "network"}[suite]
                drv = fixture.__wrapped__(obj(), tmp_path / obj.__name__)
                covered.add((kind, drv.name))
    builtin = {(kind, name) for kind, table in host.drivers.items() for name in table}
    assert builtin, "no built-in driver was found"
    missing = builtin - covered - set(NOT_HERE)
    assert not missing, f"built-in drivers without a conformance suite: {sorted(missing)}"
