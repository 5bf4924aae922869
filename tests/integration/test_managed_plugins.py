"""Plugins through a registry, on a running daemon: a Docker managed volume plugin
(config.json + rootfs, run as a hidden container) created, pushed, removed, installed
again by its short name from the daemon's plugin registry and used through the docker
CLI; a Python plugin pushed as an OCI artifact and installed by reference; refusals
(a wrong grant, an image that is not a plugin) that leave nothing behind."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DOCKER, Daemon, import_busybox, needs_root, new_daemon_dir
from test_registry_peers import engine_registry

from engine.registry.htpasswd import bcrypt_hash

from engine.sdk.packaging import build_wheel

pytestmark = [pytest.mark.root, needs_root,
              pytest.mark.skipif(not DOCKER, reason="the docker CLI is not installed"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/python3.11"),
                                 reason="the example's rootfs copies /usr/bin/python3.11")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load_builder():
    spec = importlib.util.spec_from_file_location(
        "managed_volume_build", EXAMPLES / "managed-volume" / "build_rootfs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def managed_dir(tmp_path_factory) -> Path:
    """The example managed plugin's directory, built once per session."""
    return _load_builder().build(tmp_path_factory.mktemp("managed-volume") / "plugin")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = engine_registry(tmp_path_factory.mktemp("plugin-registry"))
    yield reg
    reg.stop()


@pytest.fixture
def daemon(registry, busybox_tar):
    """A daemon whose short plugin names resolve in the test registry."""
    d = Daemon(new_daemon_dir()).start("--plugin-registry", f"{registry.host}/plugins")
    try:
        import_busybox(d, busybox_tar)
        yield d
    finally:
        for p in _plugins(d):  # a failed test may leave a plugin running
            if not p["Builtin"]:
                d.request("DELETE", f"/plugins/{p['Name']}?force=1")
        memfs_state = Path(d.data_root, "drivers", "volume", "memfs")
        d.cleanup()
        shutil.rmtree(Path("/dev/shm/engine-memfs",
                           hashlib.sha256(str(memfs_state).encode()).hexdigest()[:12]),
                      ignore_errors=True)


def _plugins(d: Daemon) -> list[dict]:
    status, body = d.request("GET", "/plugins")
    return json.loads(body) if status == 200 else []


def _run(d: Daemon, argv: list[str], ok: bool | None = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, env=d.env, timeout=120,
                       stdin=subprocess.DEVNULL)
    if ok is not None and (p.returncode == 0) != ok:
        raise AssertionError(f"{' '.join(argv)} -> {p.returncode}\n{p.stdout}\n{p.stderr}\n"
                             f"{d.log_path.read_text()[-3000:]}")
    return p


def engine(d: Daemon, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
    return _run(d, [sys.executable, "-m", "engine.sdk.cli", *args], ok)


def docker(d: Daemon, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
    return _run(d, [DOCKER, *args], ok)


def _mounts_below(path: Path) -> list[tuple[str, str]]:
    """``(mount point, type)`` of the host's mounts strictly below ``path``."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            fstype = fields[fields.index("-") + 1]
            if point.startswith(str(path) + "/"):
                out.append((point, fstype))
    return out


def _nothing_left(d: Daemon) -> None:
    assert _mounts_below(Path(d.data_root)) == []
    managed = Path(d.data_root, "plugins", "managed")
    assert not managed.exists() or not any(managed.iterdir())
    assert not any(Path(d.exec_root, "pm").glob("*")) if Path(d.exec_root, "pm").exists() \
        else True


def test_managed_volume_plugin_through_the_registry(daemon, registry, managed_dir):
    d = daemon
    engine(d, "plugin", "create", "managed-volume", str(managed_dir))
    listed = {p["Name"]: p for p in _plugins(d)}
    assert listed["managed-volume:latest"]["Enabled"] is False
    assert listed["managed-volume:latest"]["Config"]["Interface"]["Types"] == [
        "docker.volumedriver/1.0"]

    pushed = docker(d, "plugin", "push", "managed-volume").stdout
    assert f"[{registry.host}/plugins/managed-volume]" in pushed
    assert "latest: digest: sha256:" in pushed
    # what Docker's registry clients see: a schema 2 manifest, the plugin config type
    status, body = d.request("GET", "/plugins/privileges?remote=managed-volume")
    assert status == 200, body
    asked = json.loads(body)
    assert {p["Name"]: p["Value"] for p in asked} == {
        "network": ["host"], "capabilities": ["CAP_SYS_ADMIN"]}
    engine(d, "plugin", "rm", "managed-volume")
    assert _plugins(d) == [] or all(p.get("Managed") is not True for p in _plugins(d))
    _nothing_left(d)

    # a wrong grant is refused before the rootfs is downloaded; nothing is left
    wrong = [{"Name": "network", "Value": ["host"]}]
    status, body = d.request("POST", "/plugins/pull?remote=managed-volume",
                             json.dumps(wrong).encode())
    assert status == 403, body
    assert b"privileges granted do not match" in body
    _nothing_left(d)

    # the docker CLI sends docker.io/library/managed-volume: the plugin registry stands in
    # with a setting: the config lets VOLUME_ROOT be set
    out = docker(d, "plugin", "install", "--grant-all-permissions", "managed-volume",
                 "VOLUME_ROOT=/data/elsewhere").stdout
    assert out.splitlines()[-1] == "Installed plugin managed-volume"
    plugin = {p["Name"]: p for p in _plugins(d)}["managed-volume:latest"]
    assert plugin["Enabled"] is True
    assert plugin["PluginReference"] == f"{registry.host}/plugins/managed-volume:latest"
    ls = docker(d, "plugin", "ls").stdout
    assert any("managed-volume:latest" in line and line.split()[-1] == "true"
               for line in ls.splitlines())

    docker(d, "volume", "create", "-d", "managed-volume", "v1")
    docker(d, "run", "--rm", "-v", "v1:/data", "busybox", "sh", "-c", "echo hi > /data/f")
    assert docker(d, "run", "--rm", "-v", "v1:/data", "busybox",
                  "cat", "/data/f").stdout == "hi\n"
    inspect = json.loads(docker(d, "volume", "inspect", "v1").stdout)[0]
    assert inspect["Driver"] == "managed-volume"
    # the data lives under VOLUME_ROOT, in the plugin's PropagatedMount (/data): a host
    # directory
    assert Path(inspect["Mountpoint"], "f").read_text() == "hi\n"
    assert inspect["Mountpoint"].endswith("/propagated-mount/elsewhere/v1")
    propagated = Path(inspect["Mountpoint"]).parents[1]

    # a mount the plugin makes in its namespace reaches the host, and the containers
    docker(d, "volume", "create", "-d", "managed-volume", "-o", "type=tmpfs", "-o", "size=8m",
           "t1")
    t1 = Path(json.loads(docker(d, "volume", "inspect", "t1").stdout)[0]["Mountpoint"])
    assert _mounts_below(propagated) == [(str(t1), "tmpfs")]
    df = docker(d, "run", "--rm", "-v", "t1:/data", "busybox", "sh", "-c",
                "echo in-tmpfs > /data/g && df -k /data | tail -1").stdout.split()
    assert df[0] == "tmpfs" and int(df[1]) == 8192
    assert (t1 / "g").read_text() == "in-tmpfs\n"
    docker(d, "volume", "rm", "t1")
    assert _mounts_below(propagated) == [] and not t1.exists()
    docker(d, "volume", "create", "-d", "managed-volume", "-o", "type=tmpfs", "t2")
    t2 = Path(json.loads(docker(d, "volume", "inspect", "t2").stdout)[0]["Mountpoint"])
    assert _mounts_below(propagated) == [(str(t2), "tmpfs")]
    docker(d, "volume", "rm", "t2")

    refused = engine(d, "plugin", "disable", "managed-volume", ok=False)
    assert "in use" in refused.stderr and "v1" in refused.stderr
    docker(d, "volume", "rm", "v1")
    engine(d, "plugin", "disable", "managed-volume")
    assert "not found" in docker(d, "volume", "create", "-d", "managed-volume", "v2",
                                 ok=False).stderr
    engine(d, "plugin", "rm", "managed-volume")
    assert "managed-volume:latest" not in {p["Name"] for p in _plugins(d)}
    _nothing_left(d)

    # by its full reference: the reference is its name
    full = f"{registry.host}/plugins/managed-volume"
    engine(d, "plugin", "install", "--grant-all-permissions", "--disable", full)
    shown = json.loads(engine(d, "plugin", "inspect", full).stdout)[0]
    assert shown["Name"] == f"{full}:latest" and shown["Enabled"] is False
    engine(d, "plugin", "rm", full)
    _nothing_left(d)


def test_enabled_managed_plugin_restarts_with_the_daemon(daemon, managed_dir):
    d = daemon
    engine(d, "plugin", "create", "mv", str(managed_dir))
    engine(d, "plugin", "enable", "mv")
    docker(d, "volume", "create", "-d", "mv", "kept")
    pidfile = next(Path(d.exec_root, "pm").glob("*/pid"))
    pid = int(pidfile.read_text())
    # live restore: the plugin outlives the daemon and the next daemon uses it as it is
    d.stop()
    d.start()
    assert int(pidfile.read_text()) == pid
    assert "kept" in docker(d, "volume", "ls", "-q").stdout.split()
    # a plugin that exits is started again by the daemon, as Docker does
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [f.read_text() for f in Path(d.exec_root, "pm").glob("*/pid")]
        if pids and int(pids[0]) != pid and any(Path(d.exec_root, "plugins").glob("*/*.sock")):
            break
        time.sleep(0.1)
    pid = int(next(Path(d.exec_root, "pm").glob("*/pid")).read_text())
    docker(d, "volume", "create", "-d", "mv", "again")
    docker(d, "volume", "rm", "again")
    # a plugin that died with the machine is started again
    d.stop()
    os.kill(pid, 9)
    d.start()
    assert {p["Name"]: p["Enabled"] for p in _plugins(d)}["mv:latest"] is True
    assert int(next(Path(d.exec_root, "pm").glob("*/pid")).read_text()) != pid
    assert "kept" in docker(d, "volume", "ls", "-q").stdout.split()
    docker(d, "volume", "rm", "kept")
    engine(d, "plugin", "rm", "-f", "mv")
    _nothing_left(d)


def test_a_plugin_that_fails_to_start_reports_its_output(daemon, managed_dir, tmp_path):
    d = daemon
    broken = tmp_path / "broken"
    shutil.copytree(managed_dir / "rootfs", broken / "rootfs", symlinks=True)
    config = json.loads((managed_dir / "config.json").read_text())
    config["entrypoint"] = ["/usr/bin/python3.11", "-I", "-S", "-c",
                            "print('no backend configured'); raise SystemExit(3)"]
    (broken / "config.json").write_text(json.dumps(config))
    engine(d, "plugin", "create", "broken", str(broken))
    failed = engine(d, "plugin", "enable", "broken", ok=False)
    assert "exited before creating its socket" in failed.stderr
    assert "no backend configured" in failed.stderr
    assert {p["Name"]: p["Enabled"] for p in _plugins(d)}["broken:latest"] is False
    assert not any(Path(d.exec_root, "pm").glob("*"))
    # engine plugin ls shows managed and engine plugins in Docker's columns
    ls = engine(d, "plugin", "ls").stdout.splitlines()
    assert ls[0].split() == ["ID", "NAME", "DESCRIPTION", "ENABLED"]
    assert any("broken:latest" in line and line.split()[-1] == "false" for line in ls)
    assert any(line.split()[1] == "vol-bind" for line in ls[1:])
    engine(d, "plugin", "rm", "broken")
    _nothing_left(d)


def test_managed_network_plugin(daemon, tmp_path):
    """The test suite's protocol server as a managed network plugin: host network and
    CAP_NET_ADMIN (it makes veth pairs with the host's ip, copied in with its
    libraries), its init a shell that ends it on SIGTERM."""
    d = daemon
    server = Path(__file__).with_name("plugin_server.py")
    config = {
        "description": "the test suite's NetworkDriver server",
        "entrypoint": ["/bin/sh", "-c", "trap 'kill $!; exit 0' TERM; /usr/bin/python3.11 "
                       "-I -S /plugin/plugin_server.py /run/docker/plugins/net.sock /state "
                       "--network & wait"],
        # both, as weaveworks/net-plugin declares them: the IPAM interface is served
        # through the network driver (here the subnet is given, so it is not asked)
        "interface": {"types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
                      "socket": "net.sock"},
        "network": {"type": "host"},
        "linux": {"capabilities": ["CAP_NET_ADMIN"]},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    builder = _load_builder()
    out = builder.build(tmp_path / "netplug", script=server, config=tmp_path / "config.json")
    builder.add_binary(out / "rootfs", shutil.which("ip") or "/usr/sbin/ip")
    bin_dir = out / "rootfs" / "bin"
    bin_dir.mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", bin_dir / "busybox")
    for applet in ("sh", "rm"):
        (bin_dir / applet).symlink_to("busybox")
    docker(d, "plugin", "create", "netplug", str(out))
    docker(d, "plugin", "enable", "netplug")
    assert {p["Name"]: p for p in _plugins(d)}["netplug:latest"]["Drivers"] == {
        "network": ["netplug"]}
    # the server answers Join with the gateway 10.231.0.1: the subnet must hold it
    docker(d, "network", "create", "-d", "netplug", "--subnet", "10.231.0.0/24", "pn")
    addrs = docker(d, "run", "--rm", "--network", "pn", "busybox", "ip", "-o", "-4",
                   "addr").stdout
    assert "10.231.0.2/24" in addrs
    refused = docker(d, "plugin", "disable", "netplug", ok=False).stderr
    assert "in use" in refused and "network pn" in refused
    docker(d, "network", "rm", "pn")
    docker(d, "plugin", "disable", "netplug")
    docker(d, "plugin", "rm", "netplug")
    _nothing_left(d)


def test_python_plugin_pushed_and_installed_by_reference(daemon, registry, tmp_path):
    d = daemon
    wheel = build_wheel(EXAMPLES / "volume-memfs", tmp_path)
    engine(d, "plugin", "install", "--grant-all-permissions", "--disable", str(wheel))
    # NAME:TAG pushes plugin NAME under that tag, to the plugin registry
    pushed = engine(d, "plugin", "push", "memfs:1.0").stdout
    assert "1.0: digest: sha256:" in pushed
    engine(d, "plugin", "rm", "memfs")
    # the privileges come from the artifact's config alone
    status, body = d.request("GET", "/plugins/privileges?remote=memfs:1.0")
    assert status == 200, body
    assert [(p["Name"], p["Value"]) for p in json.loads(body)] == [("mount", ["/dev/shm"])]

    ref = f"{registry.host}/plugins/memfs:1.0"
    out = engine(d, "plugin", "install", "--grant-all-permissions", ref).stdout
    assert out.splitlines()[-1] == "Installed plugin memfs"
    assert {p["Name"]: p for p in _plugins(d)}["memfs"]["PluginReference"] == ref
    docker(d, "volume", "create", "-d", "memfs", "m1")
    assert docker(d, "run", "--rm", "-v", "m1:/data", "busybox", "sh", "-c",
                  "echo memfs > /data/f; cat /data/f").stdout == "memfs\n"
    docker(d, "volume", "rm", "m1")
    engine(d, "plugin", "rm", "-f", "memfs")
    site = next(Path(d.data_root, "plugins", "env", "lib").glob("*/site-packages"))
    assert not (site / "engine_memfs").exists()
    assert not Path(d.data_root, "plugins", "wheels", "engine-volume-memfs").exists()


def test_plugins_through_a_registry_that_wants_credentials(daemon, managed_dir, tmp_path):
    """The docker CLI's credentials (docker login) travel in X-Registry-Auth with
    plugin push, privileges and install, as with images."""
    d = daemon
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt_hash('secret')}\n")
    reg = engine_registry(tmp_path / "reg", "--htpasswd", str(htpasswd))
    try:
        ref = f"{reg.host}/team/locked"
        docker(d, "plugin", "create", ref, str(managed_dir))
        denied = docker(d, "plugin", "push", ref, ok=False)
        assert "authentication required" in denied.stderr
        login = subprocess.run([DOCKER, "login", reg.host, "-u", "alice", "--password-stdin"],
                               input="secret\n", capture_output=True, text=True, env=d.env)
        assert login.returncode == 0, login.stderr
        docker(d, "plugin", "push", ref)
        docker(d, "plugin", "rm", ref)
        docker(d, "plugin", "install", "--grant-all-permissions", "--disable", ref)
        assert f"{ref}:latest" in {p["Name"] for p in _plugins(d)}
        docker(d, "plugin", "rm", ref)
    finally:
        reg.stop()
    _nothing_left(d)


def test_an_image_is_not_a_plugin(daemon, registry):
    d = daemon
    ref = f"{registry.host}/plugins/notaplugin:latest"
    docker(d, "tag", "busybox", ref)
    docker(d, "push", ref)
    refused = engine(d, "plugin", "install", "--grant-all-permissions", "notaplugin", ok=False)
    assert "is not a plugin: it is a container image" in refused.stderr
    missing = engine(d, "plugin", "install", "--grant-all-permissions", "nosuchplugin",
                     ok=False)
    assert "not found" in missing.stderr
    assert all(p["Builtin"] for p in _plugins(d))
    _nothing_left(d)


DOCKERD = shutil.which("dockerd")


@pytest.fixture
def real_dockerd(tmp_path):
    """A private dockerd (no bridge, no iptables): the reference implementation."""
    base = Path("/tmp") / f"dk-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    base.mkdir()
    sock = base / "d.sock"
    log = open(tmp_path / "dockerd.log", "wb")
    proc = subprocess.Popen([DOCKERD, "-H", f"unix://{sock}", "--data-root", str(base / "data"),
                             "--exec-root", str(base / "exec"), "--pidfile", str(base / "pid"),
                             "--iptables=false", "--ip6tables=false", "--bridge=none"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start: {(tmp_path / 'dockerd.log').read_text()}")
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(base))]
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(not DOCKERD, reason="dockerd is not installed")
def test_docker_installs_what_the_engine_pushes_and_back(daemon, registry, managed_dir,
                                                         real_dockerd):
    """The formats are Docker's: dockerd 20.10 installs and uses the managed plugin
    the engine pushed, and the engine installs and uses one dockerd pushed."""
    d = daemon
    engine(d, "plugin", "create", "interop", str(managed_dir))
    engine(d, "plugin", "push", "interop")
    ref = f"{registry.host}/plugins/interop"
    _run(d, [DOCKER, "-H", real_dockerd, "plugin", "install", "--grant-all-permissions", ref])
    _run(d, [DOCKER, "-H", real_dockerd, "volume", "create", "-d", ref, "dv"])
    _run(d, [DOCKER, "-H", real_dockerd, "volume", "rm", "dv"])

    _run(d, [DOCKER, "-H", real_dockerd, "plugin", "create", f"{ref}-docker:1.0",
             str(managed_dir)])
    _run(d, [DOCKER, "-H", real_dockerd, "plugin", "push", f"{ref}-docker:1.0"])
    docker(d, "plugin", "install", "--grant-all-permissions", "interop-docker:1.0")
    docker(d, "volume", "create", "-d", "interop-docker:1.0", "ev")
    docker(d, "run", "--rm", "-v", "ev:/data", "busybox", "sh", "-c", "echo x > /data/f")
    docker(d, "volume", "rm", "ev")
    docker(d, "plugin", "rm", "-f", "interop-docker:1.0")
    for name in (ref, f"{ref}-docker:1.0"):
        _run(d, [DOCKER, "-H", real_dockerd, "plugin", "rm", "-f", name])
