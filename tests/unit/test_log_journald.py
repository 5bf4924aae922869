"""The ``journald`` driver's native protocol, against a datagram socket of the test's
own (and the real journal when this machine runs one)."""
from __future__ import annotations

import array
import os
import socket
import struct

import pytest

from engine.plugins.log.journald_writer import SOCKET, JournaldWriter, create, field

CID = "a1b2c3d4e5f6" + "0" * 52


def parse(entry: bytes) -> dict[str, bytes]:
    """Decode one native-protocol entry."""
    out, pos = {}, 0
    while pos < len(entry):
        nl = entry.index(b"\n", pos)
        line = entry[pos:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            out[k.decode()] = v
            pos = nl + 1
        else:
            (n,) = struct.unpack_from("<Q", entry, nl + 1)
            start = nl + 9
            out[line.decode()] = entry[start:start + n]
            assert entry[start + n:start + n + 1] == b"\n"
            pos = start + n + 1
    return out


def test_field_encoding():
    assert field("A", b"x=y") == b"A=x=y\n"
    assert field("M", b"two\nlines") == b"M\n" + struct.pack("<Q", 9) + b"two\nlines\n"


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "journal.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    yield path, srv
    srv.close()


def test_entries_carry_the_container_fields(tmp_path, journal):
    path, srv = journal
    ctx = {"container_id": CID, "container_name": "/db", "image": "busybox:latest",
           "log_dir": str(tmp_path), "options": {"tag": "{{.ImageName}}"}}
    w = JournaldWriter(ctx, socket_path=path)
    w.write("stdout", b"hello\n", 1)
    w.write("stderr", b"bad", 2)
    w.close()
    first, second = parse(srv.recv(65536)), parse(srv.recv(65536))
    assert first == {
        "MESSAGE": b"hello", "PRIORITY": b"6", "CONTAINER_ID": CID[:12].encode(),
        "CONTAINER_ID_FULL": CID.encode(), "CONTAINER_NAME": b"db",
        "CONTAINER_TAG": b"busybox:latest", "IMAGE_NAME": b"busybox:latest",
        "SYSLOG_IDENTIFIER": b"busybox:latest"}
    assert second["MESSAGE"] == b"bad" and second["PRIORITY"] == b"3"
    assert second["CONTAINER_PARTIAL_MESSAGE"] == b"true"


def test_an_entry_too_big_for_a_datagram_goes_in_a_memfd(tmp_path, journal):
    path, srv = journal
    w = JournaldWriter({"container_id": CID, "log_dir": str(tmp_path), "options": {}},
                       socket_path=path)
    w.lines.limit = 1 << 22  # one 1 MiB line, not split
    sndbuf = w.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    w.write("stdout", b"m" * max(1 << 20, 2 * sndbuf) + b"\n", 1)
    fds = array.array("i")
    msg, anc, _flags, _addr = srv.recvmsg(65536, socket.CMSG_LEN(fds.itemsize))
    w.close()
    assert msg == b""
    level, kind, data = anc[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = struct.unpack("i", data[:4])[0]
    try:
        size = os.fstat(fd).st_size
        entry = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    assert parse(entry)["MESSAGE"] == b"m" * max(1 << 20, 2 * sndbuf)


@pytest.mark.skipif(not os.path.exists(SOCKET), reason="systemd-journald is not running")
def test_the_real_journal_accepts_entries(tmp_path):
    w = create({"container_id": CID, "log_dir": str(tmp_path), "options": {}})
    w.write("stdout", b"engine journald test\n", 1)
    w.close()
    assert w.primary.lost == 0
