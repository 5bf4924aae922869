"""Writer half of the ``syslog`` log driver; runs in each container's monitor.

One message per line (its newline trimmed), to ``syslog-address``: UDP datagrams, TCP
or unix stream (RFC 5424 formats use octet counting, RFC 6587; the others end each
message with a newline), or unix datagrams. stdout lines have severity ``info``,
stderr lines ``err``. Standard library only.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from engine.sdk.logwriter import LogWriter

from ._base import LineBuffer, render_tag
from ._localfile import with_cache
from ._netaddr import Connection, parse_address

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21,
    "local6": 22, "local7": 23,
}
FORMATS = ("", "rfc3164", "rfc5424", "rfc5424micro")
SCHEMES = ("udp", "tcp", "unix", "unixgram")
SEVERITY = {"stdout": 6, "stderr": 3}   # info, err
DEFAULT_SOCKETS = ("/dev/log", "/var/run/syslog", "/var/run/log")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def facility_code(value: str) -> int:
    """``daemon`` (the default), a name from :data:`FACILITIES` or a number 0-23."""
    if not value:
        return FACILITIES["daemon"]
    if value.isdigit() and 0 <= int(value) <= 23:
        return int(value)
    if value not in FACILITIES:
        raise ValueError(f"invalid syslog facility: {value!r}")
    return FACILITIES[value]


def default_address() -> str:
    for path in DEFAULT_SOCKETS:
        if os.path.exists(path):
            return f"unix://{path}"
    return "unix:///dev/log"


def format_message(fmt: str, pri: int, time_ns: int, hostname: str, tag: str, pid: int,
                   msg: str) -> str:
    """One syslog message (without framing) in the given format."""
    sec, frac = divmod(time_ns, 1_000_000_000)
    if fmt in ("rfc5424", "rfc5424micro"):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        if fmt == "rfc5424micro":
            stamp += f".{frac // 1000:06d}"
        return f"<{pri}>1 {stamp}Z {hostname} {tag} {pid} {tag} - {msg}"
    t = time.localtime(sec)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    if fmt == "rfc3164":
        return f"<{pri}>{stamp} {hostname} {tag}[{pid}]: {msg}"
    return f"<{pri}>{stamp} {tag}[{pid}]: {msg}"


class SyslogWriter(LogWriter):
    def __init__(self, ctx: dict[str, Any]) -> None:
        opts = ctx.get("options") or {}
        self.addr = parse_address(opts.get("syslog-address") or default_address(),
                                  default_port=514, schemes=SCHEMES, default_scheme="udp")
        self.conn = Connection(self.addr)
        self.facility = facility_code(opts.get("syslog-facility", ""))
        self.format = opts.get("syslog-format", "")
        if self.format not in FORMATS:
            raise ValueError(f"invalid syslog format: {self.format!r}")
        self.tag = render_tag(opts.get("tag", ""), ctx)
        self.hostname = os.uname().nodename
        self.pid = os.getpid()
        self.lines = LineBuffer()
        self.lost = 0

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        for line, _complete in self.lines.feed(stream, data):
            self._send(stream, line, time_ns)

    def _send(self, stream: str, line: bytes, time_ns: int) -> None:
        text = line.rstrip(b"\n").decode("utf-8", "replace")
        pri = self.facility * 8 + SEVERITY.get(stream, 6)
        msg = format_message(self.format, pri, time_ns, self.hostname, self.tag, self.pid,
                             text).encode()
        if not self.conn.send(msg, self._frame):
            self.lost += 1
            if self.lost == 1:
                sys.stderr.write(f"syslog: cannot send to {self.addr}: "
                                 f"{self.conn.last_error}; dropping lines until it is back\n")

    def _frame(self, msg: bytes) -> bytes:
        """Framing on a stream: octet counting for RFC 5424, else a newline."""
        if self.format.startswith("rfc5424"):
            return str(len(msg)).encode() + b" " + msg
        return msg + b"\n"

    def abort(self) -> None:
        self.conn.abort()

    def close(self) -> None:
        now = time.time_ns()
        for stream, rest in self.lines.flush():
            self._send(stream, rest, now)
        self.conn.close()


def create(ctx: dict[str, Any]) -> LogWriter:
    """The monitor's entry point."""
    return with_cache(SyslogWriter(ctx), ctx)
