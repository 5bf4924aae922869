"""The ``syslog`` log driver against real listeners on loopback and unix sockets."""
from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

from engine.plugins.log.syslog import SyslogLogDriver
from engine.plugins.log.syslog_writer import SyslogWriter, create, format_message
from engine.sdk.drivers import DriverContext
from engine.sdk.errors import InvalidArgument

CID = "0123456789ab" + "c" * 52


def ctx(tmp_path, **opts) -> dict:
    return {"container_id": CID, "container_name": "/web", "image": "busybox:latest",
            "log_dir": str(tmp_path), "options": opts}


class StreamCollector:
    """A TCP or unix stream listener that keeps every byte it receives."""

    def __init__(self, family=socket.AF_INET, path: str = "") -> None:
        self.srv = socket.socket(family, socket.SOCK_STREAM)
        self.srv.bind(path or ("127.0.0.1", 0))
        self.srv.listen(4)
        self.address = path or "%s:%d" % self.srv.getsockname()
        self.data = b""
        self.conns = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.conns += 1
            with conn:
                while chunk := conn.recv(65536):
                    self.data += chunk

    def wait_for(self, n: int, framing) -> list[str]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msgs = framing(self.data)
            if len(msgs) >= n:
                return msgs
            time.sleep(0.02)
        return framing(self.data)

    def close(self) -> None:
        self.srv.close()


def octet_counted(data: bytes) -> list[str]:
    out, pos = [], 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        n = int(data[pos:sp])
        if sp + 1 + n > len(data):
            break
        out.append(data[sp + 1:sp + 1 + n].decode())
        pos = sp + 1 + n
    return out


def newline_framed(data: bytes) -> list[str]:
    return [m.decode() for m in data.split(b"\n")[:-1]]


def test_formats():
    ns = 1_700_000_000_123_456_789
    assert format_message("rfc5424", 30, ns, "h", "tag", 7, "hi") == \
        "<30>1 2023-11-14T22:13:20Z h tag 7 tag - hi"
    assert format_message("rfc5424micro", 30, ns, "h", "tag", 7, "hi") == \
        "<30>1 2023-11-14T22:13:20.123456Z h tag 7 tag - hi"
    assert re.fullmatch(r"<27>Nov \d\d \d\d:\d\d:\d\d h tag\[7\]: hi",
                        format_message("rfc3164", 27, ns, "h", "tag", 7, "hi"))
    assert re.fullmatch(r"<27>Nov \d\d \d\d:\d\d:\d\d tag\[7\]: hi",
                        format_message("", 27, ns, "h", "tag", 7, "hi"))


def test_udp_rfc5424_one_datagram_per_line(tmp_path):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    port = srv.getsockname()[1]
    w = create(ctx(tmp_path, **{"syslog-address": f"udp://127.0.0.1:{port}",
                                "syslog-format": "rfc5424", "syslog-facility": "local3",
                                "tag": "{{.Name}}/{{.ID}}"}))
    w.write("stdout", b"hello\nwor", 1_700_000_000_000_000_000)
    w.write("stderr", b"oops\n", 1_700_000_000_000_000_000)
    w.write("stdout", b"ld\n", 1_700_000_000_000_000_000)
    w.close()
    got = [srv.recv(65536).decode() for _ in range(3)]
    srv.close()
    pid = os.getpid()
    host = os.uname().nodename
    tag = "web/0123456789ab"
    assert got == [
        f"<158>1 2023-11-14T22:13:20Z {host} {tag} {pid} {tag} - hello",   # local3.info
        f"<155>1 2023-11-14T22:13:20Z {host} {tag} {pid} {tag} - oops",    # local3.err
        f"<158>1 2023-11-14T22:13:20Z {host} {tag} {pid} {tag} - world",
    ]


def test_tcp_rfc5424micro_is_octet_counted(tmp_path):
    col = StreamCollector()
    try:
        w = create(ctx(tmp_path, **{"syslog-address": f"tcp://{col.address}",
                                    "syslog-format": "rfc5424micro"}))
        for i in range(50):
            w.write("stdout", f"line {i} with spaces\n".encode(), time.time_ns())
        w.close()
        msgs = col.wait_for(50, octet_counted)
    finally:
        col.close()
    assert len(msgs) == 50
    assert all(m.startswith("<30>1 ") for m in msgs)
    assert [m.rsplit(" - ", 1)[1] for m in msgs] == [f"line {i} with spaces" for i in range(50)]
    assert f" {CID[:12]} " in msgs[0]


def test_tcp_rfc3164_is_newline_framed(tmp_path):
    col = StreamCollector()
    try:
        w = create(ctx(tmp_path, **{"syslog-address": f"tcp://{col.address}",
                                    "syslog-format": "rfc3164", "syslog-facility": "user"}))
        w.write("stderr", b"a\nb\n", time.time_ns())
        w.close()
        msgs = col.wait_for(2, newline_framed)
    finally:
        col.close()
    assert [m.split(": ", 1)[1] for m in msgs] == ["a", "b"]
    assert all(m.startswith("<11>") for m in msgs)  # user.err


def test_unix_datagram_and_stream(tmp_path):
    dgram_path = str(tmp_path / "dgram.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(dgram_path)
    srv.settimeout(5)
    w = create(ctx(tmp_path, **{"syslog-address": f"unix://{dgram_path}",
                                "cache-disabled": "true"}))
    w.write("stdout", b"via unixgram\n", time.time_ns())
    w.close()
    assert srv.recv(4096).decode().endswith(f"{CID[:12]}[{os.getpid()}]: via unixgram")
    srv.close()

    col = StreamCollector(socket.AF_UNIX, str(tmp_path / "stream.sock"))
    try:
        w = create(ctx(tmp_path, **{"syslog-address": f"unix://{col.address}",
                                    "cache-disabled": "true"}))
        w.write("stdout", b"via stream\n", time.time_ns())
        w.close()
        msgs = col.wait_for(1, newline_framed)
    finally:
        col.close()
    assert msgs[0].endswith(": via stream")


def test_peer_down_loses_lines_without_failing_then_reconnects(tmp_path, monkeypatch):
    import engine.plugins.log._netaddr as netaddr

    monkeypatch.setattr(netaddr, "RETRY_AFTER", 0.0)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    w = SyslogWriter(ctx(tmp_path, **{"syslog-address": f"tcp://127.0.0.1:{port}"}))
    w.write("stdout", b"lost\n", time.time_ns())
    assert w.lost == 1
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    try:
        w.write("stdout", b"kept\n", time.time_ns())
        w.close()
        conn, _ = srv.accept()
        conn.settimeout(5)
        data = conn.recv(4096)
        conn.close()
    finally:
        srv.close()
    assert data.endswith(b": kept\n")


def test_dual_logging_cache_is_readable(tmp_path):
    import asyncio

    from engine.sdk.drivers import LogContext

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    opts = {"syslog-address": "udp://127.0.0.1:%d" % srv.getsockname()[1]}
    w = create(ctx(tmp_path, **opts))
    w.write("stdout", b"cached line\n", 42)
    w.close()
    srv.close()
    drv = SyslogLogDriver(DriverContext(name="syslog", state_dir=str(tmp_path / "s")))
    log = LogContext(container_id=CID, log_dir=str(tmp_path), options=opts)

    async def read(log):
        return [(e.stream, e.data, e.time_ns) async for e in drv.read(log)]

    assert asyncio.run(read(log)) == [("stdout", b"cached line\n", 42)]
    off = LogContext(container_id=CID, log_dir=str(tmp_path),
                     options=dict(opts, **{"cache-disabled": "true"}))
    with pytest.raises(InvalidArgument, match="does not support reading"):
        asyncio.run(read(off))
    asyncio.run(drv.remove(log))
    assert not (tmp_path / "container-cached.log").exists()


@pytest.mark.parametrize("opts, message", [
    ({"syslog-address": "http://x"}, "unsupported address scheme"),
    ({"syslog-address": "tcp+tls://x:1"}, "TLS"),
    ({"syslog-address": "tcp://x:port"}, "invalid port"),
    ({"syslog-facility": "kitchen"}, "invalid syslog facility"),
    ({"syslog-format": "rfc9999"}, "invalid syslog format"),
    ({"tag": "{{.ID"}, "invalid tag"),
    ({"cache-max-file": "0"}, "cache-max-file"),
    ({"max-size": "1m"}, "unknown log opt"),
])
def test_invalid_options(tmp_path, opts, message):
    drv = SyslogLogDriver(DriverContext(name="syslog", state_dir=str(tmp_path)))
    with pytest.raises(InvalidArgument, match=message):
        drv.validate_options(opts)


def test_valid_options(tmp_path):
    drv = SyslogLogDriver(DriverContext(name="syslog", state_dir=str(tmp_path)))
    drv.validate_options({"syslog-address": "tcp://127.0.0.1:601", "syslog-facility": "local7",
                          "syslog-format": "rfc5424micro", "tag": "{{.Name}}",
                          "mode": "non-blocking", "cache-max-size": "1m"})


def test_no_address_needs_a_local_syslog(tmp_path, monkeypatch):
    import engine.plugins.log.syslog as mod

    drv = SyslogLogDriver(DriverContext(name="syslog", state_dir=str(tmp_path)))
    monkeypatch.setattr(mod, "DEFAULT_SOCKETS", (str(tmp_path / "no-log"),))
    with pytest.raises(InvalidArgument, match="set syslog-address"):
        drv.validate_options({})
    (tmp_path / "no-log").touch()
    drv.validate_options({})
