"""Log drivers through a real daemon, real containers and real peers on loopback."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DOCKER, needs_root
from engine.plugins.log import _msgpack

pytestmark = [pytest.mark.root, needs_root,
              pytest.mark.skipif(not DOCKER, reason="the docker CLI is not installed")]


def run(daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, env=daemon.env,
                          timeout=timeout)


def container_dir(daemon, cid: str) -> Path:
    return next(Path(daemon.data_root).rglob(cid))


class TcpCollector:
    """Accepts connections on 127.0.0.1 and keeps what arrives (or, with ``read``
    False, accepts and never reads: a destination that blocks)."""

    def __init__(self, read: bool = True) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.data = b""
        self.held: list[socket.socket] = []
        self.read = read
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            if not self.read:
                self.held.append(conn)
                continue
            threading.Thread(target=self._recv, args=(conn,), daemon=True).start()

    def _recv(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                self.data += chunk

    def close(self) -> None:
        self.srv.close()
        for c in self.held:
            c.close()


def wait_until(pred, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("driver", ["json-file", "local"])
def test_rotation_under_load_keeps_every_line_once_in_order(fresh_daemon, driver):
    n = 30000
    r = run(fresh_daemon, "run", "-d", "--log-driver", driver, "--log-opt", "max-size=20k",
            "--log-opt", "max-file=3", "busybox", "seq", "1", str(n))
    assert r.returncode == 0, r.stderr
    cid = r.stdout.decode().strip()
    assert run(fresh_daemon, "wait", cid).stdout.strip() == b"0"
    logs = run(fresh_daemon, "logs", cid)
    assert logs.returncode == 0, logs.stderr
    lines = [int(x) for x in logs.stdout.split()]
    # what survived rotation is one contiguous run ending with the last line
    assert lines == list(range(n - len(lines) + 1, n + 1))
    assert len(lines) > 1000
    d = container_dir(fresh_daemon, cid)
    if driver == "json-file":
        files = [p for p in d.iterdir() if p.name.startswith(f"{cid}-json.log")]
    else:
        files = list((d / "local-logs").iterdir())
    assert 1 <= len(files) <= 3
    assert len(files) == 3  # 30000 lines do not fit in one 20k file


def test_syslog_tcp_rfc5424_with_dual_logging(docker):
    col = TcpCollector()
    try:
        r = docker("run", "--rm", "--log-driver", "syslog",
                   "--log-opt", f"syslog-address=tcp://127.0.0.1:{col.port}",
                   "--log-opt", "syslog-format=rfc5424", "--log-opt", "tag={{.Name}}",
                   "--name", "sl-test", "busybox", "sh", "-c", "echo out; echo err >&2")
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: col.data.count(b" - ") >= 2)
    finally:
        col.close()
    msgs = col.data.decode()
    assert "<30>1 " in msgs and "sl-test" in msgs and " - out" in msgs
    assert "<27>1 " in msgs and " - err" in msgs  # daemon.err


def test_syslog_udp_and_logs_read_the_cache(docker):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(10)
    try:
        r = docker("run", "-d", "--log-driver", "syslog", "--log-opt",
                   "syslog-address=udp://127.0.0.1:%d" % srv.getsockname()[1],
                   "busybox", "sh", "-c", "echo one; echo two")
        assert r.returncode == 0, r.stderr
        cid = r.stdout.decode().strip()
        got = [srv.recv(4096).decode(), srv.recv(4096).decode()]
    finally:
        srv.close()
    assert got[0].endswith(f"{cid[:12]}[" + got[0].split("[")[1].split("]")[0] + "]: one")
    assert got[1].endswith(": two")
    docker("wait", cid)
    logs = docker("logs", cid)
    assert logs.returncode == 0 and logs.stdout == b"one\ntwo\n", logs.stderr
    docker("rm", cid)


def test_fluentd_forward_and_logs(docker):
    col = TcpCollector()
    try:
        r = docker("run", "-d", "--log-driver", "fluentd",
                   "--log-opt", f"fluentd-address=127.0.0.1:{col.port}",
                   "--log-opt", "tag=app.{{.ID}}",
                   "busybox", "sh", "-c", "echo hello; echo world >&2")
        assert r.returncode == 0, r.stderr
        cid = r.stdout.decode().strip()
        docker("wait", cid)

        def events():
            out = []
            for msg in _msgpack.unpack_all(col.data)[0]:
                out += [(msg[0], rec) for _, rec in msg[1]] if isinstance(msg[1], list) \
                    else [(msg[0], msg[2])]
            return out
        assert wait_until(lambda: len(events()) >= 2)
    finally:
        col.close()
    got = events()
    assert {(rec["source"], rec["log"]) for _, rec in got} == {("stdout", "hello"),
                                                              ("stderr", "world")}
    assert all(tag == f"app.{cid[:12]}" and rec["container_id"] == cid for tag, rec in got)
    logs = docker("logs", cid)
    assert logs.stdout == b"hello\n" and logs.stderr == b"world\n"
    docker("rm", cid)


def test_non_blocking_mode_does_not_stall_on_a_stuck_destination(docker):
    col = TcpCollector(read=False)
    try:
        t0 = time.monotonic()
        # 32 MB of output to a peer that never reads: blocking mode would hang here
        r = docker("run", "--rm", "--log-driver", "syslog",
                   "--log-opt", f"syslog-address=tcp://127.0.0.1:{col.port}",
                   "--log-opt", "mode=non-blocking", "--log-opt", "max-buffer-size=64k",
                   "--log-opt", "cache-disabled=true",
                   "busybox", "sh", "-c",
                   "i=0; while [ $i -lt 32 ]; do head -c 1048576 /dev/zero | tr '\\0' 'x' "
                   "| fold -w 1000; i=$((i+1)); done > /dev/stdout; echo done",
                   timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        col.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"done\n")
    assert elapsed < 30


def test_logs_refused_when_the_cache_is_disabled(docker):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    try:
        r = docker("run", "-d", "--log-driver", "syslog", "--log-opt",
                   "syslog-address=udp://127.0.0.1:%d" % srv.getsockname()[1],
                   "--log-opt", "cache-disabled=true", "busybox", "echo", "x")
        cid = r.stdout.decode().strip()
        docker("wait", cid)
        logs = docker("logs", cid)
        assert logs.returncode != 0
        assert b"does not support reading" in logs.stderr
        docker("rm", cid)
    finally:
        srv.close()


def test_invalid_log_options_are_refused_at_create(docker):
    r = docker("create", "--log-driver", "syslog", "--log-opt", "syslog-format=bogus",
               "busybox")
    assert r.returncode != 0 and b"invalid syslog format" in r.stderr
    r = docker("create", "--log-driver", "local", "--log-opt", "max-file=0", "busybox")
    assert r.returncode != 0 and b"max-file" in r.stderr
