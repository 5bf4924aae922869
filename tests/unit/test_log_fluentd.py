"""The msgpack codec and the ``fluentd`` driver against a real forward-protocol peer."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from engine.plugins.log import _msgpack as mp
from engine.plugins.log.fluentd import FluentdLogDriver
from engine.plugins.log.fluentd_writer import create
from engine.sdk.drivers import DriverContext
from engine.sdk.errors import InvalidArgument

CID = "f" * 64


@pytest.mark.parametrize("value", [
    None, True, False, 0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63,
    0.5, -1e300, "", "é" * 10, "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 70000,
    b"", b"\x00" * 300, b"b" * 70000, [], [1, [2, [3]]], list(range(16)), list(range(70000)),
    {}, {"a": 1, "b": [True, None]}, {str(i): i for i in range(20)},
    mp.ExtType(0, b"12345678"), mp.ExtType(5, b"abc"), mp.ExtType(-1, b"z" * 300),
])
def test_round_trip(value):
    assert mp.unpackb(mp.packb(value)) == value


def test_known_encodings():
    assert mp.packb({"a": [1, -1, None]}) == b"\x81\xa1a\x93\x01\xff\xc0"
    assert mp.packb(mp.event_time(1_700_000_000_000_000_123)) == \
        b"\xd7\x00" + struct.pack(">II", 1_700_000_000, 123)
    with pytest.raises(TypeError):
        mp.packb(object())
    with pytest.raises(OverflowError):
        mp.packb(2**64)


def test_unpack_all_keeps_a_partial_tail():
    blob = mp.packb([1, 2]) + mp.packb("abc")
    objs, used = mp.unpack_all(blob + mp.packb("partial")[:3])
    assert objs == [[1, 2], "abc"] and used == len(blob)


class ForwardPeer:
    """A TCP listener that decodes Fluentd forward-protocol messages into events."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.address = "127.0.0.1:%d" % self.srv.getsockname()[1]
        self.messages: list = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            buf = b""
            with conn:
                while chunk := conn.recv(65536):
                    buf += chunk
                    objs, used = mp.unpack_all(buf)
                    buf = buf[used:]
                    self.messages.extend(objs)

    def events(self, n: int) -> list[tuple[str, object, dict]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            out = []
            for msg in list(self.messages):
                if isinstance(msg[1], list):  # forward mode
                    out += [(msg[0], t, rec) for t, rec in msg[1]]
                else:                          # message mode
                    out.append((msg[0], msg[1], msg[2]))
            if len(out) >= n:
                return out
            time.sleep(0.02)
        return out

    def close(self) -> None:
        self.srv.close()


def test_events_reach_a_forward_peer():
    peer = ForwardPeer()
    try:
        w = create({"container_id": CID, "container_name": "/api", "log_dir": "/nonexistent",
                    "options": {"fluentd-address": f"tcp://{peer.address}",
                                "tag": "docker.{{.Name}}", "cache-disabled": "true"}})
        w.write("stdout", b"one\ntwo\nthr", 1_700_000_000_500_000_000)
        w.write("stderr", b"err\n", 1_700_000_001_000_000_000)
        w.write("stdout", b"ee\n", 1_700_000_002_000_000_000)
        w.close()
        events = peer.events(4)
    finally:
        peer.close()
    assert [(t, ts, r["source"], r["log"]) for t, ts, r in events] == [
        ("docker.api", 1_700_000_000, "stdout", "one"),
        ("docker.api", 1_700_000_000, "stdout", "two"),
        ("docker.api", 1_700_000_001, "stderr", "err"),
        ("docker.api", 1_700_000_002, "stdout", "three"),
    ]
    assert events[0][2]["container_id"] == CID
    assert events[0][2]["container_name"] == "/api"


def test_sub_second_precision_and_partial_lines(tmp_path):
    peer = ForwardPeer()
    try:
        w = create({"container_id": CID, "log_dir": str(tmp_path),
                    "options": {"fluentd-address": peer.address,
                                "fluentd-sub-second-precision": "true"}})
        w.write("stdout", b"y" * 20000 + b"\n", 1_700_000_000_000_000_042)
        w.write("stdout", b"no newline", 1_700_000_000_000_000_043)
        w.close()
        events = peer.events(3)
    finally:
        peer.close()
    assert events[0][1] == mp.ExtType(0, struct.pack(">II", 1_700_000_000, 42))
    assert [len(r["log"]) for _, _, r in events] == [16384, 20000 - 16384, 10]
    assert [r.get("partial_message") for _, _, r in events] == ["true", None, "true"]
    assert events[0][0] == CID[:12]  # default tag {{.ID}}
    # dual logging: the local cache has the same lines
    assert (tmp_path / "container-cached.log").stat().st_size > 20000


def test_async_buffers_when_the_peer_does_not_read():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts (in the backlog) but never reads
    try:
        w = create({"container_id": CID, "log_dir": "/nonexistent",
                    "options": {"fluentd-address": "127.0.0.1:%d" % srv.getsockname()[1],
                                "fluentd-async": "true", "fluentd-buffer-limit": "65536",
                                "cache-disabled": "true"}})
        w.grace = 0.2
        t0 = time.monotonic()
        line = b"z" * 1000 + b"\n"
        for _ in range(20_000):  # 20 MB: far beyond the socket buffers
            w.write("stdout", line, time.time_ns())
        assert time.monotonic() - t0 < 10
        w.close()
        assert w.dropped > 0
    finally:
        srv.close()


@pytest.mark.parametrize("opts, message", [
    ({"fluentd-address": "udp://x:1"}, "unsupported address scheme"),
    ({"fluentd-async": "perhaps"}, "invalid boolean"),
    ({"fluentd-buffer-limit": "0"}, "positive"),
    ({"syslog-format": "rfc5424"}, "unknown log opt"),
])
def test_invalid_options(tmp_path, opts, message):
    drv = FluentdLogDriver(DriverContext(name="fluentd", state_dir=str(tmp_path)))
    with pytest.raises(InvalidArgument, match=message):
        drv.validate_options(opts)
