"""Remote (out-of-process) plugins through a real daemon and the docker CLI.

A plugin server (``plugin_server.py``, http.server on a unix socket) runs as a separate
process; the daemon discovers it through ``ENGINE_PLUGIN_PATH``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DOCKER, needs_root

pytestmark = [pytest.mark.root, needs_root]

SERVER = str(Path(__file__).with_name("plugin_server.py"))


class PluginProcess:
    """The test plugin, started before the daemon and killed by pid."""

    def __init__(self, base: Path, name: str = "testplug", network: bool = False) -> None:
        self.dir = base / "plugins"
        self.root = base / "plugroot"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir()
        self.sock = self.dir / f"{name}.sock"
        args = [sys.executable, SERVER, str(self.sock), str(self.root)]
        if network:
            args.append("--network")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == b"ready"

    def calls(self) -> list[dict]:
        path = self.root / "calls.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except OSError:
                pass
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(params=[False], ids=["volume"])
def plugged(tmp_path, monkeypatch, request):
    """(daemon, plugin): the plugin is up before the daemon starts, so discovery
    at load time finds it."""
    if not DOCKER:
        pytest.skip("the docker CLI is not installed")
    plugin = PluginProcess(tmp_path, network=request.param)
    monkeypatch.setenv("ENGINE_PLUGIN_PATH", str(plugin.dir))
    try:
        daemon = request.getfixturevalue("fresh_daemon")
        yield daemon, plugin
    finally:
        plugin.stop()


@pytest.fixture
def late_plugin(tmp_path, monkeypatch, request):
    """(daemon, start): the daemon starts with an empty plugin directory; ``start()``
    then starts the plugin ``lateplug`` in it."""
    if not DOCKER:
        pytest.skip("the docker CLI is not installed")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    monkeypatch.setenv("ENGINE_PLUGIN_PATH", str(plugins))
    started: list[PluginProcess] = []

    def start() -> PluginProcess:
        started.append(PluginProcess(tmp_path, name="lateplug"))
        return started[-1]

    try:
        yield request.getfixturevalue("fresh_daemon"), start
    finally:
        for p in started:
            p.stop()


def docker(daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True,
                          env=daemon.env, timeout=timeout)


def test_volume_plugin_used_by_a_container(plugged):
    daemon, plugin = plugged
    r = docker(daemon, "volume", "create", "-d", "testplug", "v1")
    assert r.returncode == 0, r.stderr
    assert (plugin.root / "volumes" / "v1").is_dir()

    r = docker(daemon, "volume", "inspect", "v1")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)[0]
    assert info["Driver"] == "testplug"
    assert info["Mountpoint"] == str(plugin.root / "volumes" / "v1")

    r = docker(daemon, "run", "--rm", "--mount",
               "type=volume,source=v1,target=/data,volume-driver=testplug",
               "busybox", "sh", "-c", "echo x > /data/f")
    assert r.returncode == 0, r.stderr
    assert (plugin.root / "volumes" / "v1" / "f").read_text() == "x\n"

    methods = [c["method"] for c in plugin.calls()]
    assert methods[0] == "Plugin.Activate"
    mounts = [c for c in plugin.calls() if c["method"] == "VolumeDriver.Mount"]
    unmounts = [c for c in plugin.calls() if c["method"] == "VolumeDriver.Unmount"]
    assert len(mounts) == 1 and len(unmounts) == 1
    assert mounts[0]["body"]["ID"] == unmounts[0]["body"]["ID"]

    r = docker(daemon, "volume", "ls", "-q")
    assert "v1" in r.stdout.split()
    r = docker(daemon, "volume", "rm", "v1")
    assert r.returncode == 0, r.stderr
    assert not (plugin.root / "volumes" / "v1").exists()


def test_plugin_errors_reach_the_client(plugged):
    daemon, plugin = plugged
    r = docker(daemon, "volume", "create", "-d", "testplug", "-o", "fail=quota", "bad")
    assert r.returncode != 0
    assert "create refused: quota" in r.stderr


def test_dead_plugin_fails_fast_and_clearly(plugged):
    daemon, plugin = plugged
    assert docker(daemon, "volume", "create", "-d", "testplug", "v2").returncode == 0
    # a local volume and a container that have nothing to do with the plugin
    assert docker(daemon, "volume", "create", "loc").returncode == 0
    plugin.stop()

    t0 = time.monotonic()
    r = docker(daemon, "volume", "create", "-d", "testplug", "v3")
    assert r.returncode != 0
    assert "volume plugin testplug is not responding" in r.stderr
    assert time.monotonic() - t0 < 5

    r = docker(daemon, "run", "--rm", "--mount",
               "type=volume,source=v2,target=/data,volume-driver=testplug",
               "busybox", "true")
    assert r.returncode != 0
    assert "testplug is not responding" in r.stderr

    t0 = time.monotonic()
    assert docker(daemon, "ps", "-a").returncode == 0
    assert docker(daemon, "volume", "inspect", "loc").returncode == 0
    r = docker(daemon, "volume", "ls", "-q")
    assert r.returncode == 0 and "loc" in r.stdout.split()
    r = docker(daemon, "run", "--rm", "-v", "loc:/data", "busybox", "true")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10


def test_hung_plugin_times_out_without_blocking_others(plugged):
    daemon, plugin = plugged
    assert docker(daemon, "volume", "create", "-d", "testplug", "v4").returncode == 0
    os.kill(plugin.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        t0 = time.monotonic()
        hung = subprocess.Popen([DOCKER, "volume", "create", "-d", "testplug", "v5"],
                                env=daemon.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        # meanwhile the daemon serves everyone else at once
        t1 = time.monotonic()
        assert docker(daemon, "ps").returncode == 0
        r = docker(daemon, "run", "--rm", "busybox", "echo", "alive")
        assert r.returncode == 0 and r.stdout == "alive\n", r.stderr
        assert time.monotonic() - t1 < 5
        assert hung.poll() is None  # still waiting on the plugin
        _, err = hung.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        assert hung.returncode != 0
        assert "volume plugin testplug is not responding" in err
        assert "timed out" in err
        assert 9 <= elapsed < 20
        # right after a timeout the plugin is held off: listing does not wait again
        t2 = time.monotonic()
        r = docker(daemon, "volume", "ls")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t2 < 3
    finally:
        os.kill(plugin.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("plugged", [True], ids=["network"], indirect=True)
def test_network_plugin_plugs_an_interface_into_the_container(plugged):
    daemon, plugin = plugged
    r = docker(daemon, "network", "create", "-d", "testplug", "--subnet", "10.231.0.0/24",
               "tpnet")
    assert r.returncode == 0, r.stderr
    try:
        r = docker(daemon, "run", "--rm", "--network", "tpnet", "busybox", "sh", "-c",
                   "ip -o -4 addr show; ip route; cat /sys/class/net/eth0/address")
        assert r.returncode == 0, r.stderr
        assert "eth0    inet 10.231.0.2/24" in " ".join(r.stdout.split("  ")) or \
            "10.231.0.2/24" in r.stdout, r.stdout
        assert "default via 10.231.0.1 dev eth0" in r.stdout
        assert "10.232.0.0/16 dev eth0" in r.stdout  # the plugin's static route
        assert "02:42:0a:e7:00:02" in r.stdout
    finally:
        docker(daemon, "network", "rm", "tpnet")
    calls = plugin.calls()
    methods = [c["method"] for c in calls]
    for m in ("NetworkDriver.CreateNetwork", "NetworkDriver.CreateEndpoint",
              "NetworkDriver.Join", "NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint",
              "NetworkDriver.DeleteNetwork"):
        assert m in methods, methods
    assert methods.index("NetworkDriver.Join") < methods.index("NetworkDriver.Leave")
    create = next(c for c in calls if c["method"] == "NetworkDriver.CreateNetwork")
    assert create["body"]["IPv4Data"][0]["Pool"] == "10.231.0.0/24"
    ep = next(c for c in calls if c["method"] == "NetworkDriver.CreateEndpoint")
    assert ep["body"]["Interface"]["Address"] == "10.231.0.2/24"
    join = next(c for c in calls if c["method"] == "NetworkDriver.Join")
    # the plugin's veth pair is gone: it was handed back and deleted on Leave
    host_end = "tph" + join["body"]["EndpointID"][:6]
    assert subprocess.run(["ip", "link", "show", host_end], capture_output=True).returncode != 0


@pytest.mark.parametrize("plugged", [True], ids=["network"], indirect=True)
def test_a_network_plugin_may_be_its_own_ipam_driver(plugged):
    daemon, _plugin = plugged
    r = docker(daemon, "network", "create", "-d", "testplug", "--ipam-driver", "testplug",
               "--subnet", "10.233.0.0/24", "tpipam")
    assert r.returncode == 0, r.stderr
    try:
        r = docker(daemon, "network", "inspect", "-f", "{{.IPAM.Driver}}", "tpipam")
        assert r.stdout.strip() == "testplug", r.stderr
    finally:
        docker(daemon, "network", "rm", "tpipam")
    r = docker(daemon, "network", "create", "-d", "testplug", "--ipam-driver", "other",
               "tpother")
    assert r.returncode != 0 and "IPAM driver 'other' not found" in r.stderr
    r = docker(daemon, "network", "create", "--ipam-driver", "bridge", "tpbridge")
    assert r.returncode != 0 and "not found" in r.stderr


def test_a_plugin_started_after_the_daemon_is_found_by_name(late_plugin):
    daemon, start = late_plugin
    r = docker(daemon, "volume", "create", "-d", "lateplug", "early")
    assert r.returncode != 0 and "not found" in r.stderr
    plugin = start()
    r = docker(daemon, "volume", "create", "-d", "lateplug", "lv")
    assert r.returncode == 0, r.stderr
    assert (plugin.root / "volumes" / "lv").is_dir()
    r = docker(daemon, "run", "--rm", "-v", "lv:/data", "busybox", "sh", "-c",
               "echo late > /data/f")
    assert r.returncode == 0, r.stderr
    assert (plugin.root / "volumes" / "lv" / "f").read_text() == "late\n"
    r = docker(daemon, "volume", "ls", "-q")
    assert "lv" in r.stdout.split()
    assert docker(daemon, "volume", "rm", "lv").returncode == 0
