"""``run -it`` on a real pseudo-terminal: raw mode, initial size, SIGWINCH resizes,
stdin forwarding and the terminal restored at the end."""
from __future__ import annotations

import fcntl
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest
from cli_fakedaemon import CID, Reply, start_daemon, stop_daemon


@pytest.fixture
def daemon():
    d = start_daemon()
    yield d
    stop_daemon(d)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_run_interactive_tty(daemon):
    def shell(sock: socket.socket, req) -> None:
        # a pretend shell: echo what it is sent, until it reads a "q"
        data = b""
        while b"q" not in data:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
            sock.sendall(chunk.upper())
        sock.shutdown(socket.SHUT_RDWR)

    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=shell))
    daemon.route("POST", r"/containers/[^/]+/resize", Reply(200))
    daemon.route("POST", r"/containers/[^/]+/wait", Reply(200, {"StatusCode": 5}))

    master, slave = pty.openpty()
    set_size(slave, 40, 100)
    before = termios.tcgetattr(slave)
    env = {**os.environ, "ENGINE_HOST": daemon.host}
    proc = subprocess.Popen([sys.executable, "-m", "engine.sdk.cli", "run", "-it", "busybox"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
    try:
        wait_for(lambda: daemon.find("POST", r"/containers/.*/resize"))
        first = daemon.one("POST", r"/containers/.*/resize")
        assert (first.q("h"), first.q("w")) == ("40", "100")
        # the local terminal is raw while attached: no echo, no line buffering
        assert not termios.tcgetattr(slave)[3] & termios.ECHO

        set_size(slave, 50, 132)
        proc.send_signal(signal.SIGWINCH)
        wait_for(lambda: len(daemon.find("POST", r"/containers/.*/resize")) == 2)
        second = daemon.find("POST", r"/containers/.*/resize")[-1]
        assert (second.q("h"), second.q("w")) == ("50", "132")

        os.write(master, b"abc")
        os.write(master, b"q")
        out = b""
        deadline = time.monotonic() + 10
        while b"Q" not in out and time.monotonic() < deadline:
            out += os.read(master, 1024)
        assert proc.wait(timeout=10) == 5, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert b"ABCQ" in out
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)

    body = daemon.one("POST", "/containers/create").json()
    assert body["Tty"] and body["OpenStdin"] and body["AttachStdin"]
    assert body["HostConfig"]["ConsoleSize"] == [40, 100]
    attach = daemon.one("POST", f"/containers/{CID}/attach")
    assert attach.q("stdin") == "1"


def test_tty_with_stdin_not_a_terminal_is_refused(daemon):
    env = {**os.environ, "ENGINE_HOST": daemon.host}
    proc = subprocess.run([sys.executable, "-m", "engine.sdk.cli", "run", "-it", "busybox"],
                          stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=30)
    assert proc.returncode == 1
    assert b"the input device is not a TTY" in proc.stderr
    assert not daemon.find("POST", "/containers/create")


def test_signal_proxy_forwards_sigterm(daemon):
    def hold(sock: socket.socket, req) -> None:
        sock.recv(1)  # until the client goes away
        sock.close()

    got_kill = []

    def kill(req, m):
        got_kill.append(req.q("signal"))
        return Reply(204)

    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=hold))
    daemon.route("POST", r"/containers/[^/]+/kill", kill)
    env = {**os.environ, "ENGINE_HOST": daemon.host}
    proc = subprocess.Popen([sys.executable, "-m", "engine.sdk.cli", "run", "busybox"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        wait_for(lambda: daemon.find("POST", r"/containers/.*/start"))
        time.sleep(0.2)  # the signal handlers are installed right after start
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: got_kill)
        assert got_kill == ["SIGTERM"]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_detach_keys_end_the_session_without_waiting(daemon):
    def shell(sock: socket.socket, req) -> None:
        sock.recv(1024)  # holds the stream open until the client leaves
        sock.close()

    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=shell))
    daemon.route("POST", r"/containers/[^/]+/resize", Reply(200))
    master, slave = pty.openpty()
    env = {**os.environ, "ENGINE_HOST": daemon.host}
    proc = subprocess.Popen([sys.executable, "-m", "engine.sdk.cli", "run", "-it",
                             "--detach-keys", "ctrl-x,y", "busybox"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
    try:
        wait_for(lambda: daemon.find("POST", r"/containers/.*/start"))
        # the keys only reach the CLI once it has put the terminal in raw mode (a
        # cooked terminal holds them until a newline)
        wait_for(lambda: not termios.tcgetattr(slave)[3] & termios.ICANON)
        os.write(master, b"\x18y")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(master)
        os.close(slave)


def test_escape_detector_releases_broken_sequences():
    from engine.sdk.cli.attach import EscapeDetector, parse_detach_keys

    keys = parse_detach_keys("ctrl-p,ctrl-q")
    assert keys == b"\x10\x11"
    det = EscapeDetector(keys)
    assert det.feed(b"ab\x10") == (b"ab", False)
    assert det.feed(b"c") == (b"\x10c", False)
    assert det.feed(b"\x10\x10\x11rest") == (b"\x10", True)
    assert parse_detach_keys("ctrl-@,ctrl-[,a") == b"\x00\x1ba"


def test_frame_parser_joins_runs_of_one_stream_across_arbitrary_pieces():
    from engine.sdk.cli.attach import FrameParser

    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    wire = (frame(1, b"a\n") + frame(1, b"bb\n") + frame(2, b"err\n") + frame(1, b"")
            + frame(1, b"c\n") + frame(2, b"x" * 70000))
    for step in (1, 3, 7, 8, 9, 4096, len(wire)):
        p = FrameParser()
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(wire), step):
            got.extend(p.feed(wire[i:i + step]))
        assert not p.buf, step  # everything consumed
        # the same bytes per stream, in the same order
        merged: list[tuple[int, bytes]] = []
        for stream, data in got:
            if merged and merged[-1][0] == stream:
                merged[-1] = (stream, merged[-1][1] + data)
            else:
                merged.append((stream, data))
        assert merged == [(1, b"a\nbb\n"), (2, b"err\n"), (1, b"c\n"), (2, b"x" * 70000)], step
    whole = FrameParser().feed(wire)
    assert whole == [(1, b"a\nbb\n"), (2, b"err\n"), (1, b"c\n"), (2, b"x" * 70000)]
