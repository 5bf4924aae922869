"""The monitor's protocol without root: helpers, command line, and the socket protocol
driven through :class:`engine.core.runtime.client.Monitor` against a monitor whose
backend runs a plain host process (no namespaces)."""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from engine.core.runtime import client, monitor
from engine.core.runtime.monitor import Backend, Monitor, Stdio

SH = "/bin/sh"
DRAIN_WAIT = monitor.DRAIN_IDLE + 0.2


# --------------------------------------------------------------------- helpers


def test_frame_header_and_split() -> None:
    assert monitor.frame(1, b"hi") == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
    big = bytes(range(256)) * 300  # 76800 bytes: three frames of at most 32 KiB
    framed = monitor.frame(2, big)
    payloads, off = [], 0
    while off < len(framed):
        stream, size = struct.unpack(">BxxxI", framed[off:off + 8])
        assert stream == 2 and 0 < size <= 32 * 1024
        payloads.append(framed[off + 8:off + 8 + size])
        off += 8 + size
    assert len(payloads) == 3 and b"".join(payloads) == big


def test_rfc3339_nano() -> None:
    assert monitor.rfc3339_nano(0) == "1970-01-01T00:00:00.000000000Z"
    assert monitor.rfc3339_nano(1_700_000_000_123_456_789) == \
        "2023-11-14T22:13:20.123456789Z"


def test_exit_code_of_wait_status() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    assert monitor.exit_code_of(os.waitpid(pid, 0)[1]) == 3
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    assert monitor.exit_code_of(os.waitpid(pid, 0)[1]) == 137


@pytest.mark.parametrize("message,code", [
    ('exec: "nope": executable file not found in $PATH', 127),
    ("open /x: no such file or directory", 127),
    ("exec /etc/passwd: permission denied", 126),
    ("cgroup: device busy", 125),
])
def test_classify_error(message: str, code: int) -> None:
    assert monitor.classify_error(message) == code


def test_atomic_write_json(tmp_path: Path) -> None:
    path = tmp_path / "exit.json"
    monitor.atomic_write_json(str(path), {"exit_code": 1})
    monitor.atomic_write_json(str(path), {"exit_code": 2})
    assert json.loads(path.read_text()) == {"exit_code": 2}
    assert os.listdir(tmp_path) == ["exit.json"]


def test_parse_create() -> None:
    opts = monitor.parse_args([
        "create", "--id", "c1", "--bundle", "/b", "--state", "/s", "--runtime=runc",
        "--log-writer", "m:f", "--log-context", '{"container_id": "c1"}',
        "--stdin-open", "--stdin-once", "--sync-fd", "5"])
    assert (opts.command, opts.id, opts.bundle, opts.state, opts.runtime) == \
        ("create", "c1", "/b", "/s", "runc")
    assert opts.log_writer == "m:f" and opts.log_context == {"container_id": "c1"}
    assert opts.stdin_open and opts.stdin_once and opts.sync_fd == 5


def test_parse_exec() -> None:
    opts = monitor.parse_args([
        "exec", "--id", "e1", "--state", "/s", "--target-pid", "42", "--process",
        "/p.json", "--cgroups-path", "/cg", "--sync-fd", "3"])
    assert (opts.command, opts.target_pid, opts.process, opts.cgroups_path) == \
        ("exec", 42, "/p.json", "/cg")
    assert not opts.stdin_open


@pytest.mark.parametrize("argv", [
    [],
    ["run", "--id", "x"],
    ["create", "--id", "c", "--state", "/s", "--sync-fd", "3"],           # no bundle
    ["create", "--id", "c", "--bundle", "/b", "--state", "/s"],             # no sync fd
    ["create", "--id", "c", "--bundle", "/b", "--state", "/s", "--sync-fd", "3",
     "--runtime", "crun-ng"],
    ["create", "--id", "c", "--bundle", "/b", "--state", "/s", "--sync-fd", "3",
     "--bogus"],
    ["create", "--id", "c", "--bundle", "/b", "--state", "/s", "--sync-fd", "3",
     "--log-writer", "nocolon"],
    ["exec", "--id", "e", "--state", "/s", "--process", "/p", "--sync-fd", "3"],
    ["exec", "--id", "e", "--state", "/s", "--process", "/p", "--sync-fd", "3",
     "--runtime", "runc"],                                                  # no container id
])
def test_parse_rejects(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        monitor.parse_args(argv)


def test_monitor_imports_stay_light() -> None:
    # the way the client runs it: python -S and its bootstrap
    code = client._BOOTSTRAP.replace(
        "from engine.core.runtime.monitor import main\nsys.exit(main())\n",
        "import engine.core.runtime.monitor\nprint(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-S", "-c", code, client._bootstrap_config()],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "engine.core.runtime.monitor" in out
    heavy = {"asyncio", "msgspec", "pluggy", "aiohttp", "subprocess", "argparse",
             "typing", "threading", "site", "engine.core.runtime.linux", "engine.sdk"}
    assert heavy.isdisjoint(out), heavy & set(out)


def test_bad_command_line_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(client.monitor_argv(["nope"]), capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_spawn_monitor_reports_a_monitor_that_dies(tmp_path: Path) -> None:
    with pytest.raises(client.MonitorUnavailable, match="without a report"):
        client.spawn_monitor(["bogus"], str(tmp_path))
    assert "usage" in (tmp_path / "monitor.log").read_text()


def test_spawn_monitor_ends_a_monitor_that_never_reports(tmp_path: Path) -> None:
    # a stand-in for python: detaches a child that holds the sync pipe and never writes
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {tmp_path}/child\n")
    fake.chmod(0o755)
    with pytest.raises(client.MonitorUnavailable, match="in time"):
        client.spawn_monitor(["create"], str(tmp_path / "s"), python=str(fake),
                             timeout=0.5)
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 5
    while client._running(child):  # a zombie counts as gone
        assert time.monotonic() < deadline, "the stuck monitor was not killed"
        time.sleep(0.02)


def test_spawn_monitor_reports_a_create_failure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(client.MonitorError) as info:
        client.spawn_monitor(["create", "--id", "c", "--bundle", str(tmp_path / "none"),
                              "--state", str(state)], str(state))
    assert info.value.exit_code == 125 and "config.json" in info.value.message
    assert "failed" in (state / "monitor.log").read_text()


# --------------------------------------------------------------------- protocol


class HostProcess(Backend):
    """A backend that runs ``argv`` on the host, released by ``start``."""

    def __init__(self, argv: list[str], terminal: bool = False,
                 fail_start: str = "", exit_early: bool = False) -> None:
        self.argv = argv
        self.terminal = terminal
        self.fail_start = fail_start
        self.exit_early = exit_early
        self.pid = 0
        self.start_w = -1
        self.cleaned = False

    def prepare(self, stdio: Stdio) -> int:
        start_r, self.start_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs
            try:
                os.close(self.start_w)
                os.setsid()
                if stdio.tty_slave is not None:
                    fcntl.ioctl(stdio.tty_slave, termios.TIOCSCTTY, 0)
                for n, fd in enumerate(stdio.child):
                    os.dup2(fd, n)
                if self.exit_early:  # a setup failure before the release
                    os._exit(127)
                if os.read(start_r, 1) == b"\0":
                    os.execv(self.argv[0], self.argv)
            finally:
                os._exit(127)
        os.close(start_r)
        self.pid = pid
        return pid

    def start(self, stdio: Stdio, winsize: tuple[int, int] | None = None) -> int:
        if self.fail_start:
            os.close(self.start_w)  # the child exits 127 without exec'ing
            raise monitor.StartError(self.fail_start, 127)
        try:
            os.write(self.start_w, b"\0")
        except BrokenPipeError:
            raise monitor.StartError("setup failed", 127) from None
        finally:
            os.close(self.start_w)
        return self.pid


def run_monitor(state: Path, backend: Backend, **kwargs) -> int:
    """Fork a monitor serving ``state``; return its pid once it is ready."""
    state.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the monitor process
        code = 1
        try:
            os.close(r)
            os.chdir(state)
            stdin_open = kwargs.pop("stdin_open", False)
            stdio = Stdio(terminal=backend.terminal, stdin_open=stdin_open)
            mon = Monitor(state_dir=str(state), backend=backend, stdio=stdio, **kwargs)
            mon.install_signals()
            mon.prepare()
            os.write(w, b"ready\n")
            os.close(w)
            mon.serve()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.readline() == b"ready\n"
    return pid


@pytest.fixture
def monitors():
    """Monitor pids started by a test; killed (with their children) and reaped after."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def read_frames(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {1: b"", 2: b""}
    while data:
        stream, size = struct.unpack(">BxxxI", data[:8])
        out[stream] += data[8:8 + size]
        data = data[8 + size:]
    return out


def test_attach_start_wait(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(
        [SH, "-c", "echo hello; echo err >&2; exit 3"])))
    mon = client.Monitor(str(state))

    async def go() -> tuple[dict, dict, bytes, dict]:
        before = await mon.state()
        reader, writer, tty = await mon.attach(False, True, True)
        assert tty is False
        waiter = asyncio.ensure_future(mon.wait())
        assert await mon.start() == mon.pid() > 0
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return before, await asyncio.wait_for(waiter, 10), data, mon.read_exit() or {}

    before, result, data, record = asyncio.run(go())
    assert before["status"] == "created" and before["running"] is False
    assert read_frames(data) == {1: b"hello\n", 2: b"err\n"}
    assert result["exit_code"] == 3 and result["oom_killed"] is False
    assert result["finished_at"].endswith("Z") and result["started_at"] <= \
        result["finished_at"]
    assert record["exit_code"] == 3
    assert not (state / "monitor.sock").exists()
    assert result["pid"] == mon.pid()


def test_large_output_and_two_clients(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    # 196000 bytes on stdout: several reads and frames of at most 32 KiB
    monitors.append(run_monitor(state, HostProcess(
        [SH, "-c", "i=0; while [ $i -lt 2000 ]; do "
                   "echo 0123456789012345678901234567890123456789012345678901234567890"
                   "123456789012345678901234567890123456; i=$((i+1)); done"])))
    mon = client.Monitor(str(state))

    async def go() -> list[bytes]:
        a = await mon.attach(False, True, True)
        b = await mon.attach(False, True, False)
        await mon.start()
        return await asyncio.wait_for(asyncio.gather(a[0].read(), b[0].read()), 20)

    for data in asyncio.run(go()):
        frames = read_frames(data)
        assert len(frames[1]) == 196000 and frames[2] == b""


def test_output_before_attach_is_not_replayed(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(
        [SH, "-c", "echo early; sleep 0.6; echo late"])))
    mon = client.Monitor(str(state))

    async def go() -> bytes:
        await mon.start()
        await asyncio.sleep(0.3)
        reader, _writer, _tty = await mon.attach(False, True, True)
        return await asyncio.wait_for(reader.read(), 10)

    assert read_frames(asyncio.run(go())) == {1: b"late\n", 2: b""}


def test_stdin_once_closes_stdin(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(["/bin/cat"]), stdin_open=True,
                                stdin_once=True))
    mon = client.Monitor(str(state))

    async def go() -> tuple[bytes, dict]:
        reader, writer, _tty = await mon.attach(True, True, True)
        await mon.start()
        writer.write(b"line one\nline two\n")
        await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        return data, await asyncio.wait_for(mon.wait(), 10)

    data, result = asyncio.run(go())
    assert read_frames(data)[1] == b"line one\nline two\n"
    assert result["exit_code"] == 0


def test_tty_resize_and_raw_stream(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(
        [SH, "-c", "stty size; echo out; echo err >&2"], terminal=True)))
    mon = client.Monitor(str(state))

    async def go() -> bytes:
        reader, _writer, tty = await mon.attach(False, True, True)
        assert tty is True
        await mon.resize(37, 101)
        await mon.start()
        return await asyncio.wait_for(reader.read(), 10)

    data = asyncio.run(go())
    assert data.replace(b"\r\n", b"\n") == b"37 101\nout\nerr\n"


def test_kill_and_state(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(["/bin/sleep", "30"])))
    mon = client.Monitor(str(state))
    assert mon.alive() is False  # not spawned through the client: no such cmdline

    async def go() -> tuple[dict, dict, dict]:
        await mon.start()
        running = await mon.state()
        await mon.kill(signal.SIGTERM)
        result = await asyncio.wait_for(mon.wait(), 10)
        return running, result, await mon.state()

    running, result, after = asyncio.run(go())
    assert running["running"] is True and running["pid"] == mon.pid()
    assert result["exit_code"] == 143
    assert after == {"pid": mon.pid(), "running": False, "status": "exited",
                     "started_at": result["started_at"], "exit_code": 143}


def test_start_failure(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(
        ["/nonexistent"], fail_start='exec: "nonexistent": executable file not found')))
    mon = client.Monitor(str(state))

    async def go() -> dict:
        with pytest.raises(client.MonitorError) as info:
            await mon.start()
        assert info.value.exit_code == 127 and "not found" in info.value.message
        return await asyncio.wait_for(mon.wait(), 10)

    assert asyncio.run(go())["exit_code"] == 127


@pytest.mark.parametrize("then", ["start", "kill"])
def test_process_dead_before_start_waits_for_the_daemon(
        tmp_path: Path, monitors: list[int], then: str) -> None:
    state = tmp_path / "c"
    monitors.append(run_monitor(state, HostProcess(["/bin/true"], exit_early=True)))
    mon = client.Monitor(str(state))

    async def go() -> tuple[dict, dict]:
        deadline = time.monotonic() + 10
        while (before := await mon.state())["exit_code"] is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(DRAIN_WAIT)  # the monitor must still be there
        if then == "start":
            with pytest.raises(client.MonitorError) as info:
                await mon.start()
            assert info.value.exit_code == 127 and info.value.message == "setup failed"
        else:
            await mon.kill()
        return before, await asyncio.wait_for(mon.wait(), 10)

    before, result = asyncio.run(go())
    assert before["status"] == "exited" and before["exit_code"] == 127
    assert result["exit_code"] == 127


def test_bad_requests_and_long_state_path(tmp_path: Path, monitors: list[int]) -> None:
    # longer than sun_path: the monitor binds relative to its cwd and the client
    # connects through /proc/self/fd
    state = tmp_path / ("s" * 120)
    monitors.append(run_monitor(state, HostProcess(["/bin/sleep", "30"])))
    mon = client.Monitor(str(state))

    async def raw(line: bytes) -> dict:
        reader, writer = await client._open_unix(mon.socket_path)
        writer.write(line)
        reply = json.loads(await reader.readline())
        writer.close()
        return reply

    async def go() -> list[dict]:
        replies = [await raw(b"not json\n"), await raw(b'{"op": "dance"}\n'),
                   await raw(b"[1]\n")]
        await mon.start()
        with pytest.raises(client.MonitorError, match="already started"):
            await mon.start()
        await mon.kill(signal.SIGKILL)
        replies.append(await asyncio.wait_for(mon.wait(), 10))
        return replies

    bad_json, unknown, not_object, result = asyncio.run(go())
    assert bad_json["ok"] is False and "bad request" in bad_json["message"]
    assert unknown == {"ok": False, "message": "unknown op 'dance'"}
    assert not_object["ok"] is False
    assert result["exit_code"] == 137


def test_wait_after_the_monitor_is_gone(tmp_path: Path, monitors: list[int]) -> None:
    state = tmp_path / "c"
    pid = run_monitor(state, HostProcess(["/bin/true"]))
    monitors.append(pid)
    mon = client.Monitor(str(state))
    asyncio.run(mon.start())
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    monitors.remove(pid)
    result = asyncio.run(mon.wait())
    assert result["exit_code"] == 0
    with pytest.raises(client.MonitorUnavailable):
        asyncio.run(mon.kill())


def test_log_writer_gets_everything_and_a_bad_one_is_disabled(
        tmp_path: Path, monitors: list[int]) -> None:
    sink = tmp_path / "log"
    writer_mod = tmp_path / "wmod"
    writer_mod.mkdir()
    (writer_mod / "fake_writer.py").write_text(
        "import json\n"
        "class W:\n"
        "    def __init__(self, ctx):\n"
        "        self.f = open(ctx['log_dir'] + '/out', 'a')\n"
        "    def write(self, stream, data, ns):\n"
        "        self.f.write(json.dumps([stream, data.decode()]) + '\\n')\n"
        "    def close(self):\n"
        "        self.f.write('closed\\n'); self.f.close()\n"
        "class Bad:\n"
        "    def __init__(self, ctx):\n"
        "        pass\n"
        "    def write(self, stream, data, ns):\n"
        "        raise RuntimeError('disk full')\n")
    sys.path.insert(0, str(writer_mod))
    try:
        sink.mkdir()
        for name, spec in (("good", "fake_writer:W"), ("bad", "fake_writer:Bad")):
            state = tmp_path / name
            monitors.append(run_monitor(
                state, HostProcess([SH, "-c", "echo one; echo two >&2; echo three"]),
                log_writer=spec, log_context={"container_id": name,
                                              "log_dir": str(sink)}))
            mon = client.Monitor(str(state))

            async def go(mon: client.Monitor) -> dict:
                await mon.start()
                return await asyncio.wait_for(mon.wait(), 10)

            assert asyncio.run(go(mon))["exit_code"] == 0
    finally:
        sys.path.remove(str(writer_mod))
    lines = (sink / "out").read_text().splitlines()
    assert lines[-1] == "closed"
    got = {"stdout": "", "stderr": ""}
    for line in lines[:-1]:
        stream, text = json.loads(line)
        got[stream] += text
    assert got == {"stdout": "one\nthree\n", "stderr": "two\n"}


# --------------------------------------------------------------------- runc adapter


def _fake_runtime(tmp_path: Path, message: str, name: str = "fake-runc") -> Path:
    """A runtime binary that logs ``message`` (if any) as a JSON error and fails."""
    fake = tmp_path / name
    log_line = (f"printf '%s\\n' '{{\"level\":\"error\",\"msg\":\"{message}\"}}' "
                f">> \"$log\"\n" if message else "")
    fake.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" >> {tmp_path}/argv\n"
        "while [ $# -gt 0 ]; do\n"
        "  if [ \"$1\" = --log ]; then log=$2; fi\n"
        "  shift\n"
        "done\n"
        + log_line +
        "echo 'noise on stderr' >&2\n"
        "exit 1\n")
    fake.chmod(0o755)
    return fake


def test_runc_error_comes_from_its_log(tmp_path: Path) -> None:
    from engine.core.runtime.runc import Runc, RuncError
    runc = Runc(str(tmp_path / "root"), binary=str(_fake_runtime(tmp_path, "boom")),
                log_file=str(tmp_path / "runc.log"))
    with pytest.raises(RuncError, match="^boom$"):
        runc.start("c1")
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:2] == ["--root", str(tmp_path / "root")] and argv[-2:] == ["start", "c1"]
    # a later failure that logs nothing: its stderr, not the earlier "boom"
    quiet = Runc(str(tmp_path / "root"), binary=str(_fake_runtime(tmp_path, "", "quiet")),
                 log_file=str(tmp_path / "runc.log"))
    with pytest.raises(RuncError, match="^noise on stderr$"):
        quiet.kill("c1", 15)


def test_runc_delete_of_an_unknown_container_is_fine(tmp_path: Path) -> None:
    from engine.core.runtime.runc import Runc
    fake = _fake_runtime(tmp_path, "container does not exist")
    Runc(str(tmp_path / "root"), binary=str(fake),
         log_file=str(tmp_path / "runc.log")).delete("gone", force=True)


def test_runc_console_socket_path_stays_short(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.core.runtime import runc
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    monkeypatch.chdir(deep)
    assert runc._reachable("console.sock") == f"/proc/{os.getpid()}/cwd/console.sock"
    assert runc._reachable("/run/x/console.sock") == "/run/x/console.sock"
    assert runc.default_root("/run/engine/containers/abc") == "/run/engine/containers/.runc"
