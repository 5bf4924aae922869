"""The monitor fork server without root: requests, failures, restarts and its end
(:class:`engine.core.runtime.client.ForkServer`, ``monitor forkserver``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.runtime import client, monitor


@pytest.fixture
def server() -> Iterator[client.ForkServer]:
    """A fork server of the test's own (not the process-wide one)."""
    srv = client.ForkServer()
    yield srv
    srv.stop()


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while client._running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _request(srv: client.ForkServer, args: list[str], log: Path) -> tuple[int, bytes]:
    """Send one request; return the monitor's process group and its sync report."""
    r, w = os.pipe()
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        group = srv.request(args, w, logfd, timeout=10)
    finally:
        os.close(w)
        os.close(logfd)
    with os.fdopen(r, "rb") as f:
        return group, f.read()


def test_a_forked_monitor_reports_through_the_pipe_it_was_given(
        server: client.ForkServer, tmp_path: Path) -> None:
    # a create whose bundle is missing: the forked monitor reports the failure
    state = tmp_path / "state"
    state.mkdir()
    group, report = _request(server, ["create", "--id", "c", "--bundle",
                                      str(tmp_path / "none"), "--state", str(state)],
                             state / "monitor.log")
    assert group > 0 and group != server.pid
    assert b'"exit_code": 125' in report and b"config.json" in report
    assert "create failed" in (state / "monitor.log").read_text()
    assert client._running(server.pid)  # one server serves many monitors


def test_bad_arguments_end_in_the_log_without_a_report(server: client.ForkServer,
                                                        tmp_path: Path) -> None:
    group, report = _request(server, ["bogus"], tmp_path / "monitor.log")
    assert group > 0 and report == b""
    assert "usage" in (tmp_path / "monitor.log").read_text()


def test_spawn_monitor_goes_through_the_fork_server(tmp_path: Path) -> None:
    with pytest.raises(client.MonitorUnavailable, match="without a report"):
        client.spawn_monitor(["bogus"], str(tmp_path))
    srv = client.fork_server()
    assert srv.pid and client._running(srv.pid)
    with open(f"/proc/{srv.pid}/cmdline", "rb") as f:
        assert b"\0forkserver\0--control-fd\0" in f.read()


def test_a_new_environment_gets_a_new_server(server: client.ForkServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _request(server, ["bogus"], tmp_path / "log")
    first = server.pid
    _request(server, ["bogus"], tmp_path / "log")
    assert server.pid == first
    monkeypatch.setenv("ENGINE_TEST_FORKSERVER", "1")  # monitors inherit it
    _request(server, ["bogus"], tmp_path / "log")
    assert server.pid != first and _wait_gone(first)
    second = server.pid
    server.stop()
    assert server.pid == 0 and _wait_gone(second)


def test_a_dead_server_is_replaced(server: client.ForkServer, tmp_path: Path) -> None:
    _request(server, ["bogus"], tmp_path / "log")
    first = server.pid
    os.kill(first, signal.SIGKILL)
    assert _wait_gone(first)
    _request(server, ["bogus"], tmp_path / "log")
    assert server.pid not in (0, first)


def test_a_server_that_never_answers_is_killed(tmp_path: Path) -> None:
    # a stand-in for python that keeps the control socket open and never reads it
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {tmp_path}/child\nwait\n")
    fake.chmod(0o755)
    srv = client.ForkServer(str(fake))
    r, w = os.pipe()
    try:
        with pytest.raises(client.MonitorUnavailable, match="in time"):
            srv.request(["bogus"], w, w, timeout=0.5)
    finally:
        os.close(r)
        os.close(w)
        srv.stop()
    assert srv.pid == 0
    assert _wait_gone(int((tmp_path / "child").read_text()))


OWNER = """
import os, sys, time
from engine.core.runtime import client
srv = client.ForkServer()
r, w = os.pipe()
srv.request(["bogus"], w, w)
print(srv.pid, flush=True)
time.sleep(60)
"""


def test_the_server_exits_when_its_owner_is_killed() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE)
    try:
        pid = int(owner.stdout.readline())  # type: ignore[union-attr]
        assert client._running(pid)
        owner.kill()  # SIGKILL: no clean-up ran, only the kernel closed its fds
        owner.wait()
        assert _wait_gone(pid), "the fork server outlived its owner"
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()  # type: ignore[union-attr]


def test_forkserver_usage() -> None:
    assert monitor.main(["forkserver"]) == 2
    assert monitor.main(["forkserver", "--control-fd", "x"]) == 2


def test_a_forked_owner_starts_a_server_of_its_own(server: client.ForkServer,
                                                    tmp_path: Path) -> None:
    _request(server, ["bogus"], tmp_path / "log")
    parent_server = server.pid
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - reports through the pipe
        code = 1
        try:
            os.close(r)
            _request(server, ["bogus"], tmp_path / "log")
            os.write(w, str(server.pid).encode())
            server.stop()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child_server = int(f.read() or 0)
    _pid, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_server not in (0, parent_server)
    assert server.pid == parent_server and client._running(parent_server)
    _request(server, ["bogus"], tmp_path / "log")  # ours still answers us
    assert server.pid == parent_server


def test_ensure_started_starts_once(server: client.ForkServer, tmp_path: Path) -> None:
    assert server.pid == 0  # nothing runs until asked
    pid = server.ensure_started()
    assert pid > 0 and client._running(pid)
    assert server.ensure_started() == pid
    _request(server, ["bogus"], tmp_path / "log")
    assert server.pid == pid  # the request used the server already started


def test_a_request_without_its_fds_is_refused(server: client.ForkServer) -> None:
    server.ensure_started()
    sock = server._sock
    assert sock is not None
    sock.sendmsg([b"create\0--id\0x"])  # no SCM_RIGHTS
    assert int(sock.recv(64)) < 0
    assert client._running(server.pid)  # and it goes on serving
