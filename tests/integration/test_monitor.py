"""The monitor on the real kernel: busybox containers under the builtin runtime and
under runc, driven through :mod:`engine.core.runtime.client` like the daemon does."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import needs_root
from engine.core.runtime import cgroups, client
from engine.core.runtime.runc import Runc, default_root
from engine.core.runtime.spec import build_spec, write_bundle

pytestmark = [pytest.mark.root, needs_root]

CGROUP_PARENT = "engine-test-monitor"
HERE = Path(__file__).parent


def frames(data: bytes) -> dict[int, bytes]:
    """Demultiplex stdcopy frames into {1: stdout, 2: stderr}."""
    out = {1: b"", 2: b""}
    while data:
        stream, size = struct.unpack(">BxxxI", data[:8])
        out[stream] += data[8:8 + size]
        data = data[8 + size:]
    return out


def _alive(pid: int) -> bool:
    """A live process (not a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Containers:
    """Makes containers for one test (bundle, state dir, cgroup) and removes them all:
    kills what still runs by pid, deletes runc state, destroys cgroups."""

    def __init__(self, base: Path, rootfs: Path, runtime: str) -> None:
        self.base = base
        self.rootfs_src = rootfs
        self.runtime = runtime
        self.made: list[tuple[str, Path, str]] = []  # (id, state dir, cgroups path)

    def bundle(self, cid: str, args: list[str], *, tty: bool = False,
               console_size: tuple[int, int] | None = None) -> Path:
        bundle = self.base / "bundles" / cid
        rootfs = bundle / "rootfs"
        shutil.copytree(self.rootfs_src, rootfs, symlinks=True)
        spec = build_spec(container_id=cid, args=args, env=["PATH=/bin"], tty=tty,
                          hostname=cid[:12], rootfs=str(rootfs),
                          cgroups_path=f"/{CGROUP_PARENT}/{cid}")
        if console_size:
            spec["process"]["consoleSize"] = {"height": console_size[0],
                                              "width": console_size[1]}
        # runc must not raise a hard limit above ours (no CAP_SYS_RESOURCE here)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        for limit in spec["process"].get("rlimits", []):
            if limit["type"] == "RLIMIT_NOFILE":
                limit["hard"] = min(limit["hard"], hard)
                limit["soft"] = min(limit["soft"], hard)
        write_bundle(str(bundle), spec)
        return bundle

    def state_dir(self, cid: str) -> Path:
        return self.base / "state" / cid

    async def create(self, args: list[str], *, tty: bool = False,
                     console_size: tuple[int, int] | None = None,
                     **kwargs: Any) -> tuple[str, client.Monitor, dict[str, Any]]:
        cid = uuid.uuid4().hex
        bundle = self.bundle(cid, args, tty=tty, console_size=console_size)
        state = self.state_dir(cid)
        self.made.append((cid, state, f"/{CGROUP_PARENT}/{cid}"))
        report = await client.create(container_id=cid, bundle=str(bundle),
                                     state_dir=str(state), runtime=self.runtime,
                                     **kwargs)
        return cid, client.Monitor(str(state)), report

    async def exec(self, cid: str, target_pid: int, args: list[str], *,
                   tty: bool = False, console_size: tuple[int, int] | None = None,
                   **kwargs: Any) -> client.Monitor:
        state = self.state_dir(cid) / "exec" / uuid.uuid4().hex[:12]
        process: dict[str, Any] = {"terminal": tty, "user": {"uid": 0, "gid": 0},
                                   "args": args, "env": ["PATH=/bin", "TERM=xterm"],
                                   "cwd": "/"}
        if console_size:
            process["consoleSize"] = {"height": console_size[0], "width": console_size[1]}
        await client.create_exec(
            exec_id=state.name, state_dir=str(state), target_pid=target_pid,
            process=process, cgroups_path=f"/{CGROUP_PARENT}/{cid}",
            runtime=self.runtime, container_id=cid,
            runc_root=default_root(str(self.state_dir(cid))), **kwargs)
        return client.Monitor(str(state))

    def cleanup(self) -> None:
        for cid, state, cg in self.made:
            mon = client.Monitor(str(state))
            monitors = [mon] + [client.Monitor(str(p))
                                for p in (state / "exec").glob("*")]
            for m in monitors:
                if m.alive() and m.pid() and _alive(m.pid()):
                    os.kill(m.pid(), signal.SIGKILL)
            deadline = time.monotonic() + 5
            for m in monitors:
                while m.monitor_pid() and _alive(m.monitor_pid()) and \
                        time.monotonic() < deadline:
                    time.sleep(0.02)
                if m.alive():
                    os.kill(m.monitor_pid(), signal.SIGKILL)
            if self.runtime == "runc":
                Runc(default_root(str(state))).delete(cid, force=True)
            cgroups.destroy(cg)
        for ctrl in os.listdir("/sys/fs/cgroup"):
            try:
                os.rmdir(f"/sys/fs/cgroup/{ctrl}/{CGROUP_PARENT}")
            except OSError:
                pass


@pytest.fixture(params=["builtin", "runc"])
def containers(request, tmp_path: Path, busybox_rootfs: Path):
    if request.param == "runc" and not shutil.which("runc"):
        pytest.skip("runc is not installed")
    made = Containers(tmp_path, busybox_rootfs, request.param)
    yield made
    made.cleanup()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def memory_cgroup(cg: str) -> Path:
    return Path("/sys/fs/cgroup/memory") / cg.lstrip("/")


def test_output_and_exit_code(containers: Containers) -> None:
    async def go():
        cid, mon, report = await containers.create(
            ["sh", "-c", "echo hello; echo err >&2; exit 3"])
        assert report["pid"] > 0 and report["monitor_pid"] > 0
        assert mon.alive() and mon.pid() == report["pid"]
        assert (await mon.state())["status"] == "created"
        reader, _writer, tty = await mon.attach(False, True, True)
        waiter = asyncio.ensure_future(mon.wait())
        assert await mon.start() == report["pid"]
        data = await reader.read()
        return cid, mon, data, await waiter

    cid, mon, data, result = run(go())
    assert tuple(frames(data).values()) == (b"hello\n", b"err\n")
    assert result["exit_code"] == 3 and result["oom_killed"] is False
    assert result["started_at"] < result["finished_at"]
    assert mon.read_exit()["exit_code"] == 3
    assert not mon.alive()
    assert not memory_cgroup(f"/{CGROUP_PARENT}/{cid}").exists()


def test_tty_and_resize(containers: Containers) -> None:
    async def go():
        _cid, mon, _ = await containers.create(
            ["sh", "-c", "stty size; tty; echo bye >&2"], tty=True)
        reader, _writer, tty = await mon.attach(False, True, True)
        assert tty
        await mon.resize(40, 100)
        await mon.start()
        return await reader.read(), await mon.wait()

    data, result = run(go())
    size, tty_name, bye = data.decode().split("\r\n")[:3]
    assert (size, bye) == ("40 100", "bye")  # stderr too goes to the terminal
    assert tty_name == "/dev/pts/0"  # the container's own devpts, as with Docker
    assert result["exit_code"] == 0


def test_tty_sized_from_the_spec(containers: Containers) -> None:
    async def go():
        _cid, mon, _ = await containers.create(["stty", "size"], tty=True,
                                               console_size=(25, 81))
        reader, _writer, _tty = await mon.attach(False, True, True)
        await mon.start()  # no resize request: process.consoleSize is enough
        return await reader.read(), await mon.wait()

    data, result = run(go())
    assert (data, result["exit_code"]) == (b"25 81\r\n", 0)


def test_stdin_once(containers: Containers) -> None:
    async def go():
        _cid, mon, _ = await containers.create(["cat"], stdin_open=True,
                                               stdin_once=True)
        reader, writer, _tty = await mon.attach(True, True, True)
        await mon.start()
        writer.write(b"ping\n" * 1000)
        await writer.drain()
        writer.write_eof()
        return await reader.read(), await mon.wait()

    data, result = run(go())
    assert frames(data)[1] == b"ping\n" * 1000
    assert result["exit_code"] == 0


def test_kill(containers: Containers) -> None:
    async def go():
        _cid, mon, _ = await containers.create(["sleep", "30"])
        await mon.start()
        assert (await mon.state())["running"]
        await mon.kill(signal.SIGKILL)
        return await mon.wait()

    assert run(go())["exit_code"] == 137


def test_start_failure(containers: Containers) -> None:
    async def go():
        try:
            _cid, mon, _ = await containers.create(["no-such-command"])
        except client.MonitorError as exc:  # runc looks the command up at create
            return exc, None
        with pytest.raises(client.MonitorError) as info:
            await mon.start()
        return info.value, await mon.wait()

    error, result = run(go())
    assert error.exit_code == 127 and "no-such-command" in error.message
    assert containers.runtime == "runc" or result["exit_code"] == 127


def test_exec(containers: Containers) -> None:
    async def go():
        cid, mon, report = await containers.create(["sleep", "30"])
        await mon.start()
        ex = await containers.exec(cid, report["pid"],
                                   ["sh", "-c", "echo in-exec; cat /proc/1/cmdline; "
                                                "echo; hostname; exit 5"])
        reader, _w, _tty = await ex.attach(False, True, True)
        await ex.start()
        out = frames(await reader.read())[1]
        first = await ex.wait()
        # a process that is not the container's init dies of SIGTERM: 128 + 15
        ex2 = await containers.exec(cid, report["pid"], ["sleep", "30"])
        await ex2.start()
        await ex2.kill(signal.SIGTERM)
        second = await ex2.wait()
        container_state = await mon.state()
        await mon.kill(signal.SIGKILL)
        await mon.wait()
        return cid, out, first, second, container_state

    cid, out, first, second, container_state = run(go())
    assert out == f"in-exec\nsleep\x0030\x00\n{cid[:12]}\n".encode()
    assert first["exit_code"] == 5 and second["exit_code"] == 143
    assert container_state["running"]  # the execs left the container alone


def test_exec_tty_stdin_and_failure(containers: Containers) -> None:
    async def go():
        cid, mon, report = await containers.create(["sleep", "30"])
        await mon.start()
        tty_exec = await containers.exec(cid, report["pid"], ["sh", "-c", "stty size; tty"],
                                         tty=True)
        reader, _w, tty = await tty_exec.attach(False, True, True)
        assert tty
        await tty_exec.resize(20, 30)  # before start: runc makes the pty only then
        await tty_exec.start()
        tty_out = await reader.read()
        sized = await containers.exec(cid, report["pid"], ["stty", "size"], tty=True,
                                      console_size=(12, 34))
        reader, _w, _tty = await sized.attach(False, True, True)
        await sized.start()
        tty_out += await reader.read()
        await sized.wait()
        stdin_exec = await containers.exec(cid, report["pid"],
                                           ["sh", "-c", "read x; echo got $x"],
                                           stdin_open=True, stdin_once=True)
        reader, writer, _tty = await stdin_exec.attach(True, True, True)
        await stdin_exec.start()
        writer.write(b"abc\n")
        writer.write_eof()
        stdin_out = frames(await reader.read())[1]
        bad = await containers.exec(cid, report["pid"], ["no-such-command"])
        with pytest.raises(client.MonitorError) as info:
            await bad.start()
        results = [await m.wait() for m in (tty_exec, stdin_exec, bad)]
        await mon.kill(signal.SIGKILL)
        await mon.wait()
        return tty_out, stdin_out, info.value, results

    tty_out, stdin_out, error, results = run(go())
    # the exec's terminal is a pty of the container's devpts (which has no other)
    assert tty_out == b"20 30\r\n/dev/pts/0\r\n12 34\r\n" and stdin_out == b"got abc\n"
    assert error.exit_code == 127 and "no-such-command" in error.message
    assert [r["exit_code"] for r in results] == [0, 0, 127]


def test_log_writer(containers: Containers, monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    async def go():
        _cid, mon, _ = await containers.create(
            ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2"],
            log_writer="monitor_log_writer:factory",
            log_context={"container_id": "c1", "log_dir": str(log_dir)})
        await mon.start()  # nobody attached: the writer alone gets the output
        return await mon.wait()

    assert run(go())["exit_code"] == 0
    entries = [json.loads(line) for line in
               (log_dir / "log.jsonl").read_text().splitlines()]
    assert entries[0] == {"open": "c1"} and entries[-1] == {"closed": True}
    text = {"stdout": "", "stderr": ""}
    for e in entries[1:-1]:
        text[e["stream"]] += e["data"]
        assert e["time_ns"] > 0
    assert text == {"stdout": "line1\nline2\nline3\nline4\nline5\n", "stderr": "oops\n"}


SPAWNER = """
import asyncio, json, sys, time
from engine.core.runtime import client
async def main():
    report = await client.create(container_id=sys.argv[1], bundle=sys.argv[2],
                                 state_dir=sys.argv[3], runtime=sys.argv[4])
    await client.Monitor(sys.argv[3]).start()
    print(json.dumps(report), flush=True)
    time.sleep(60)
asyncio.run(main())
"""


def test_monitor_outlives_its_spawner(containers: Containers) -> None:
    cid = uuid.uuid4().hex
    bundle = containers.bundle(cid, ["sleep", "30"])
    state = containers.state_dir(cid)
    containers.made.append((cid, state, f"/{CGROUP_PARENT}/{cid}"))
    spawner = subprocess.Popen(
        [sys.executable, "-c", SPAWNER, cid, str(bundle), str(state), containers.runtime],
        stdout=subprocess.PIPE)
    try:
        report = json.loads(spawner.stdout.readline())
    finally:
        spawner.kill()
        spawner.wait()
        spawner.stdout.close()
    mon = client.Monitor(str(state))
    assert mon.alive()
    with open(f"/proc/{report['monitor_pid']}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid != spawner.pid

    async def go():
        state_reply = await mon.state()
        await mon.kill(signal.SIGKILL)
        return state_reply, await mon.wait()

    state_reply, result = run(go())
    assert state_reply["running"] and state_reply["pid"] == report["pid"]
    assert result["exit_code"] == 137
