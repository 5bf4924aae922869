"""build_spec and friends: Docker's HostConfig mapped onto an OCI runtime spec."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.core.runtime import caps, linux, rootfs, spec

DOCKER_DEFAULT_CAPEFF = 0xA80425FB  # CapEff of a default `docker run` as root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (r / "etc" / "group").write_text("root:x:0:\nwheel:x:10:app\napp:x:1000:\n")
    return r


def build(root: Path, **kw) -> dict:
    kw.setdefault("args", ["sh"])
    kw.setdefault("env", [])
    return spec.build_spec(container_id="c1", rootfs=str(root), cgroups_path="engine/c1",
                           **kw)


def ns_types(s: dict) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in s["linux"]["namespaces"]}


def test_basic_shape(root: Path) -> None:
    s = build(root, args=["echo", "hi"], env=["A=1"], cwd="/work", tty=True,
              hostname="h", domainname="d", annotations={"k": "v"})
    assert s["ociVersion"] == "1.0.2"
    p = s["process"]
    assert p["args"] == ["echo", "hi"] and p["cwd"] == "/work" and p["terminal"] is True
    assert p["user"] == {"uid": 0, "gid": 0, "additionalGids": []}
    assert p["env"][0].startswith("PATH=") and "A=1" in p["env"]
    assert "HOME=/root" in p["env"] and "TERM=xterm" in p["env"] and "HOSTNAME=h" in p["env"]
    assert s["root"] == {"path": str(root), "readonly": False}
    assert s["hostname"] == "h" and s["domainname"] == "d"
    assert s["linux"]["cgroupsPath"] == "engine/c1"
    assert s["annotations"]["k"] == "v"
    json.dumps(s)  # serialisable as is


def test_given_env_wins(root: Path) -> None:
    s = build(root, env=["PATH=/x", "HOME=/h"], user="app")
    assert s["process"]["env"] == ["PATH=/x", "HOME=/h"]


def test_user_resolution_and_group_add(root: Path) -> None:
    s = build(root, user="app", host_config={"GroupAdd": ["1234"]})
    assert s["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 1234]}
    assert "HOME=/home/app" in s["process"]["env"]
    with pytest.raises(ValueError, match="unable to find user bob: no matching entries"):
        build(root, user="bob")


def test_default_namespaces(root: Path) -> None:
    types = ns_types(build(root))
    assert {"pid", "mount", "ipc", "uts", "network"} <= set(types)
    assert types["network"] is None


def test_network_namespace_variants(root: Path) -> None:
    assert ns_types(build(root, netns="/run/netns/x"))["network"] == "/run/netns/x"
    assert "network" not in ns_types(build(root, host_network=True))


def test_host_modes_drop_namespaces(root: Path) -> None:
    s = build(root, hostname="h",
              host_config={"PidMode": "host", "IpcMode": "host", "UTSMode": "host"})
    types = ns_types(s)
    assert "pid" not in types and "ipc" not in types and "uts" not in types
    assert "hostname" not in s  # runc refuses a hostname without a uts namespace


def test_default_capabilities(root: Path) -> None:
    c = build(root)["process"]["capabilities"]
    assert set(c["bounding"]) == set(caps.DEFAULT_CAPS)
    assert c["effective"] == c["permitted"] == c["bounding"]
    assert caps.to_mask(c["bounding"]) == DOCKER_DEFAULT_CAPEFF


def test_cap_add_drop_with_and_without_prefix(root: Path) -> None:
    hc = {"CapAdd": ["net_admin", "CAP_SYS_TIME"], "CapDrop": ["MKNOD", "cap_chown"]}
    bounding = build(root, host_config=hc)["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in bounding and "CAP_SYS_TIME" in bounding
    assert "CAP_MKNOD" not in bounding and "CAP_CHOWN" not in bounding
    assert bounding == sorted(bounding, key=caps.CAP_NUMBERS.__getitem__)


def test_cap_drop_all_then_add(root: Path) -> None:
    hc = {"CapDrop": ["ALL"], "CapAdd": ["NET_BIND_SERVICE"]}
    assert build(root, host_config=hc)["process"]["capabilities"]["bounding"] == [
        "CAP_NET_BIND_SERVICE"]


def test_cap_add_all_minus_drop(root: Path) -> None:
    hc = {"CapAdd": ["ALL"], "CapDrop": ["SYS_ADMIN"]}
    bounding = build(root, host_config=hc)["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in bounding
    assert set(bounding) == set(caps.all_caps()) - {"CAP_SYS_ADMIN"}


def test_unknown_capability(root: Path) -> None:
    with pytest.raises(ValueError, match='unknown capability: "CAP_BOGUS"'):
        build(root, host_config={"CapAdd": ["bogus"]})


def test_masked_and_readonly_paths(root: Path) -> None:
    lin = build(root)["linux"]
    assert set(spec.DEFAULT_MASKED_PATHS) <= set(lin["maskedPaths"])
    assert "/proc/kcore" in lin["maskedPaths"] and "/sys/firmware" in lin["maskedPaths"]
    assert lin["readonlyPaths"] == list(spec.DEFAULT_READONLY_PATHS)


def test_privileged(root: Path) -> None:
    s = build(root, host_config={"Privileged": True, "CapDrop": ["ALL"]})
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    assert set(s["process"]["capabilities"]["bounding"]) == set(caps.all_caps())
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    sysfs = next(m for m in s["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]
    assert any(d["path"] == "/dev/null" for d in s["linux"].get("devices", []))


def test_default_mounts_then_given_mounts(root: Path) -> None:
    extra = {"destination": "/data", "type": "bind", "source": "/srv/data",
             "options": ["rbind", "rw"]}
    mounts = build(root, mounts=[extra], host_config={"ShmSize": 1 << 20})["mounts"]
    dests = [m["destination"] for m in mounts]
    assert dests[:7] == ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup",
                         "/dev/mqueue", "/dev/shm"]
    assert mounts[-1] == extra
    pts = mounts[2]["options"]
    assert "newinstance" in pts and "ptmxmode=0666" in pts and "gid=5" in pts
    assert f"size={1 << 20}" in mounts[6]["options"]
    sysfs = mounts[3]
    assert sysfs["type"] == "sysfs" and {"ro", "nosuid", "noexec", "nodev"} <= set(
        sysfs["options"])


def test_default_shm_size(root: Path) -> None:
    shm = next(m for m in build(root)["mounts"] if m["destination"] == "/dev/shm")
    assert "size=67108864" in shm["options"]


def test_resources_mapping(root: Path) -> None:
    hc = {"Memory": 64 << 20, "MemoryReservation": 32 << 20, "NanoCpus": 1_500_000_000,
          "CpuShares": 512, "CpusetCpus": "0", "PidsLimit": 42, "OomKillDisable": True}
    res = build(root, host_config=hc)["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20,
                             "reservation": 32 << 20, "disableOOMKiller": True}
    assert res["cpu"] == {"shares": 512, "period": 100000, "quota": 150000, "cpus": "0"}
    assert res["pids"] == {"limit": 42}
    assert res["devices"][0] == {"allow": False, "access": "rwm"}


def test_memory_swap_values(root: Path) -> None:
    res = spec.resources({"Memory": 100, "MemorySwap": -1})
    assert res["memory"]["swap"] == -1
    res = spec.resources({"Memory": 100, "MemorySwap": 300})
    assert res["memory"] == {"limit": 100, "swap": 300}
    assert "memory" not in spec.resources({})
    res = spec.resources({"CpuQuota": 5000, "CpuPeriod": 10000})
    assert res["cpu"] == {"quota": 5000, "period": 10000}
    assert "pids" not in spec.resources({"PidsLimit": -1})


def test_rlimits(root: Path, monkeypatch) -> None:
    from engine.core.runtime import spec

    monkeypatch.setattr(spec, "default_nofile", lambda: 1048576)
    assert build(root)["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]
    hc = {"Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 20},
                      {"Name": "nproc", "Soft": 5, "Hard": 6}]}
    got = {r["type"]: r for r in build(root, host_config=hc)["process"]["rlimits"]}
    assert got["RLIMIT_NOFILE"] == {"type": "RLIMIT_NOFILE", "hard": 20, "soft": 10}
    assert got["RLIMIT_NPROC"]["hard"] == 6
    with pytest.raises(ValueError, match="invalid ulimit"):
        build(root, host_config={"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]})


def test_security_opt_no_new_privileges(root: Path) -> None:
    assert build(root)["process"]["noNewPrivileges"] is False
    for opt in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"):
        s = build(root, host_config={"SecurityOpt": ["seccomp=unconfined", opt]})
        assert s["process"]["noNewPrivileges"] is True
    s = build(root, host_config={"SecurityOpt": ["no-new-privileges:false"]})
    assert s["process"]["noNewPrivileges"] is False


def test_readonly_sysctls_and_init(root: Path) -> None:
    s = build(root, host_config={"ReadonlyRootfs": True, "Init": True,
                                 "Sysctls": {"net.ipv4.ip_forward": "1"}})
    assert s["root"]["readonly"] is True
    assert s["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert build(root, readonly_rootfs=True)["root"]["readonly"] is True


def test_relative_cwd_rejected(root: Path) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        build(root, cwd="work")


def test_write_bundle_is_atomic_and_readable(tmp_path: Path, root: Path) -> None:
    s = build(root)
    bundle = tmp_path / "bundle"
    path = spec.write_bundle(str(bundle), s)
    assert json.loads(Path(path).read_text()) == s
    assert os.listdir(bundle) == ["config.json"]  # no temp file left behind
    s["process"]["args"] = ["true"]
    spec.write_bundle(str(bundle), s)
    assert json.loads(Path(path).read_text())["process"]["args"] == ["true"]


def test_capability_masks_roundtrip() -> None:
    assert caps.from_mask(DOCKER_DEFAULT_CAPEFF) == sorted(
        caps.DEFAULT_CAPS, key=caps.CAP_NUMBERS.__getitem__)
    assert caps.normalize("all") == "ALL"


def test_mount_option_parsing() -> None:
    flags, prop, data = rootfs.parse_options(
        ["nosuid", "ro", "rw", "rbind", "rprivate", "mode=755", "size=1k"])
    assert flags == rootfs.MS_NOSUID | rootfs.MS_BIND | rootfs.MS_REC
    assert prop == rootfs.MS_PRIVATE | rootfs.MS_REC
    assert data == "mode=755,size=1k"


def test_find_executable_messages(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "tool"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    noexec = tmp_path / "bin" / "data"
    noexec.write_text("x")
    assert linux.find_executable("tool", f"/nonexistent:{exe.parent}") == str(exe)
    with pytest.raises(Exception, match=r'exec: "foo": executable file not found in \$PATH') \
            as info:
        linux.find_executable("foo", str(exe.parent))
    assert info.value.exit_code == 127
    with pytest.raises(Exception, match="permission denied") as info:
        linux.find_executable(str(noexec), "")
    assert info.value.exit_code == 126
    with pytest.raises(Exception, match="no such file or directory") as info:
        linux.find_executable("/nope/x", "")
    assert info.value.exit_code == 127


def test_resize_tty() -> None:
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    try:
        linux.resize_tty(master, 33, 120)
        rows, cols, _x, _y = struct.unpack(
            "HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        assert (rows, cols) == (33, 120)
    finally:
        os.close(master)
        os.close(slave)


def test_pidfd_open_becomes_readable_on_exit() -> None:
    import select

    pid = os.fork()
    if pid == 0:
        os._exit(7)
    fd = linux.pidfd_open(pid)
    try:
        readable, _, _ = select.select([fd], [], [], 10)
        assert readable == [fd]
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    finally:
        os.close(fd)


def test_default_nofile_never_exceeds_what_can_be_set() -> None:
    import resource

    from engine.core.runtime import spec

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = spec.default_nofile()
    assert n == spec.DEFAULT_NOFILE or n == hard
    assert n <= spec.DEFAULT_NOFILE


def test_console_size_from_host_config(root: Path) -> None:
    """``docker run -t`` sends the client's size as HostConfig.ConsoleSize: the terminal
    has it before the process starts (``stty size`` run at once sees it)."""
    s = spec.build_spec(container_id="c1", rootfs=str(root), cgroups_path="engine/c1",
                        args=["sh"], env=[], tty=True, host_config={"ConsoleSize": [30, 100]})
    assert s["process"]["consoleSize"] == {"height": 30, "width": 100}
    for hc, tty in (({"ConsoleSize": [30, 100]}, False), ({"ConsoleSize": [0, 0]}, True),
                    ({"ConsoleSize": None}, True), ({"ConsoleSize": ["x", 1]}, True), ({}, True)):
        s = spec.build_spec(container_id="c1", rootfs=str(root), cgroups_path="engine/c1",
                            args=["sh"], env=[], tty=tty, host_config=hc)
        assert "consoleSize" not in s["process"], hc
