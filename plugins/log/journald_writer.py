"""Writer half of the ``journald`` log driver; runs in each container's monitor.

systemd-journald's native protocol: one datagram per line on
``/run/systemd/journal/socket``, made of ``FIELD=value\\n`` entries; a value holding a
newline is written as ``FIELD\\n``, its length as 64-bit little endian, the bytes and
``\\n``. An entry too large for a datagram goes in a sealed memfd passed with
``SCM_RIGHTS``. Standard library only.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

from engine.sdk.logwriter import LogWriter

from ._base import LineBuffer, render_tag
from ._localfile import with_cache

SOCKET = "/run/systemd/journal/socket"
PRIORITY = {"stdout": b"6", "stderr": b"3"}   # info, err


def field(name: str, value: bytes) -> bytes:
    """One field of a native-protocol entry."""
    if b"\n" in value:
        return name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name.encode() + b"=" + value + b"\n"


class JournaldWriter(LogWriter):
    def __init__(self, ctx: dict[str, Any], socket_path: str = SOCKET) -> None:
        opts = ctx.get("options") or {}
        cid = str(ctx.get("container_id") or "")
        tag = render_tag(opts.get("tag", ""), ctx)
        self.path = socket_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.common = b"".join([
            field("CONTAINER_ID", cid[:12].encode()),
            field("CONTAINER_ID_FULL", cid.encode()),
            field("CONTAINER_NAME", str(ctx.get("container_name") or "").lstrip("/").encode()),
            field("CONTAINER_TAG", tag.encode()),
            field("IMAGE_NAME", str(ctx.get("image") or "").encode()),
            field("SYSLOG_IDENTIFIER", tag.encode()),
        ])
        self.lines = LineBuffer()
        self.lost = 0

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        for line, complete in self.lines.feed(stream, data):
            self._send(stream, line, complete)

    def _send(self, stream: str, line: bytes, complete: bool) -> None:
        entry = (field("MESSAGE", line.rstrip(b"\n") if complete else line)
                 + field("PRIORITY", PRIORITY.get(stream, b"6")) + self.common)
        if not complete:
            entry += field("CONTAINER_PARTIAL_MESSAGE", b"true")
        try:
            self.sock.sendto(entry, self.path)
        except OSError as e:
            if e.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                self._send_memfd(entry)
            else:
                self.lost += 1

    def _send_memfd(self, entry: bytes) -> None:
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, entry)
            import fcntl

            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    struct.pack("i", fd))], 0, self.path)
        except OSError:
            self.lost += 1
        finally:
            os.close(fd)

    def close(self) -> None:
        for stream, rest in self.lines.flush():
            self._send(stream, rest, False)
        self.sock.close()


def create(ctx: dict[str, Any]) -> LogWriter:
    """The monitor's entry point."""
    return with_cache(JournaldWriter(ctx), ctx)


