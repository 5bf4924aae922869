"""Fast container starts on the real kernel: monitors forked by the fork server, the
daemon's fork server, and the cgroup move done by the monitor instead of the child."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from conftest import Daemon, import_busybox, needs_root, new_daemon_dir
from engine.core.runtime import cgroups, client, linux
from engine.core.runtime.spec import build_spec, write_bundle

pytestmark = [pytest.mark.root, needs_root]

CGROUP_PARENT = "engine-test-forkserver"


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while client._running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def cgroup_parent():
    # made first: cgroups.create races on a parent that concurrent creates all make
    # (the loser may copy an empty cpuset from it)
    cgroups.create(f"/{CGROUP_PARENT}")
    yield f"/{CGROUP_PARENT}"
    for ctrl in os.listdir("/sys/fs/cgroup"):
        try:
            os.rmdir(f"/sys/fs/cgroup/{ctrl}/{CGROUP_PARENT}")
        except OSError:
            pass


def test_a_forked_monitor_is_detached_and_found_again(
        tmp_path: Path, busybox_rootfs: Path, cgroup_parent: str) -> None:
    cid = uuid.uuid4().hex
    bundle = tmp_path / "bundle"
    state = tmp_path / "state"
    cg = f"{cgroup_parent}/{cid}"
    write_bundle(str(bundle), build_spec(
        container_id=cid, args=["sleep", "30"], env=["PATH=/bin"], hostname=cid[:12],
        rootfs=str(busybox_rootfs), readonly_rootfs=True, cgroups_path=cg))

    async def go():
        report = await client.create(container_id=cid, bundle=str(bundle),
                                     state_dir=str(state))
        mon = client.Monitor(str(state))
        await mon.start()
        return report, mon

    report, mon = asyncio.run(go())
    try:
        server = client.fork_server().pid
        mpid = report["monitor_pid"]
        assert server and mpid != server
        fields = _stat(mpid)  # state, ppid, pgrp, session
        assert int(fields[1]) not in (server, os.getpid())  # not a child of either
        assert int(fields[3]) not in (_stat(server)[3], os.getsid(0))  # own session
        # the monitor has the server's command line: alive() knows it by its cwd
        with open(f"/proc/{mpid}/cmdline", "rb") as f:
            assert b"--state" not in f.read()
        assert mon.alive()
        assert not client.Monitor(str(tmp_path)).alive()
        # the init is in the container's cgroup (moved there by the monitor)
        assert report["pid"] in cgroups.pids(cg)
    finally:
        async def end():
            await mon.kill(signal.SIGKILL)
            return await mon.wait()
        assert asyncio.run(end())["exit_code"] == 137
    assert not Path("/sys/fs/cgroup/pids", cg.lstrip("/")).exists()


def test_a_failed_cgroup_move_fails_the_start(busybox_rootfs: Path,
                                              cgroup_parent: str) -> None:
    cid = uuid.uuid4().hex
    spec = build_spec(container_id=cid, args=["true"], env=["PATH=/bin"],
                      rootfs=str(busybox_rootfs), readonly_rootfs=True,
                      cgroups_path=f"{cgroup_parent}/{cid}")
    # no pid namespace: spawn_container would move this test process into a new one
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                   if ns["type"] != "pid"]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        spawned = linux.spawn_container(spec, stdin=null, stdout=null, stderr=null)
        try:
            os.rmdir(f"/sys/fs/cgroup/pids{cgroup_parent}/{cid}")  # the child is not in it
            with pytest.raises(linux.SpawnError, match="cannot join the cgroup"):
                spawned.start()
        finally:
            spawned.close()
            _pid, status = os.waitpid(spawned.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 125  # it never exec'd
    finally:
        os.close(null)
        cgroups.destroy(f"{cgroup_parent}/{cid}")


def test_the_daemons_fork_server(busybox_tar: Path) -> None:
    d = Daemon(new_daemon_dir()).start()
    servers: list[int] = []
    try:
        import_busybox(d, busybox_tar)
        status, body = d.request("POST", "/containers/create", {
            "Image": "busybox", "Cmd": ["sleep", "30"],
            "HostConfig": {"NetworkMode": "none"}})
        assert status == 201, body
        cid = json.loads(body)["Id"]
        assert d.request("POST", f"/containers/{cid}/start")[0] == 204
        assert d.proc is not None
        servers += _fork_servers_of(d.proc.pid)
        assert len(servers) == 1  # a child of the daemon
        status, body = d.request("GET", "/containers/json?all=1")
        assert [c["Id"] for c in json.loads(body)] == [cid]  # not a container

        d.stop(signal.SIGKILL)  # no clean-up: the server sees EOF and exits
        assert _wait_gone(servers[0])
        d.start()  # live restore of a monitor forked by the old daemon's server
        status, body = d.request("GET", f"/containers/{cid}/json")
        assert json.loads(body)["State"]["Running"] is True
        assert d.request("POST", f"/containers/{cid}/kill")[0] == 204
    finally:
        d.cleanup()
    assert all(_wait_gone(pid) for pid in servers)


def _fork_servers_of(parent: int) -> list[int]:
    """The monitor fork servers whose parent is ``parent``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if b"\0forkserver\0--control-fd\0" not in f.read():
                    continue
            if int(_stat(int(name))[1]) == parent:
                found.append(int(name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_concurrent_creates_get_a_monitor_each(tmp_path: Path, busybox_rootfs: Path,
                                               cgroup_parent: str) -> None:
    states: list[Path] = []

    async def one(n: int) -> tuple[int, bytes, dict]:
        cid = uuid.uuid4().hex
        bundle, state = tmp_path / cid / "bundle", tmp_path / cid / "state"
        states.append(state)
        write_bundle(str(bundle), build_spec(
            container_id=cid, args=["echo", str(n)], env=["PATH=/bin"],
            rootfs=str(busybox_rootfs), readonly_rootfs=True,
            cgroups_path=f"{cgroup_parent}/{cid}"))
        report = await client.create(container_id=cid, bundle=str(bundle),
                                     state_dir=str(state))
        mon = client.Monitor(str(state))
        reader, _writer, _tty = await mon.attach(False, True, True)
        await mon.start()
        data = await reader.read()
        return report["monitor_pid"], data[8:], await mon.wait()  # one stdcopy frame

    async def go():
        return await asyncio.gather(*(one(n) for n in range(6)))

    try:
        results = asyncio.run(asyncio.wait_for(go(), 60))
    finally:  # whatever failed: no process is left behind
        for state in states:
            mon = client.Monitor(str(state))
            for pid in (mon.pid(), mon.monitor_pid()):
                if pid and mon.alive():
                    os.kill(pid, signal.SIGKILL)
    assert [(data, res["exit_code"]) for _pid, data, res in results] == \
        [(f"{n}\n".encode(), 0) for n in range(6)]
    assert len({pid for pid, _data, _res in results}) == 6
