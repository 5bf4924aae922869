"""Writer half of the ``fluentd`` log driver; runs in each container's monitor.

Fluentd's forward protocol over TCP (or a unix socket): each chunk of output becomes
one MessagePack message, ``[tag, time, record]`` for one line or
``[tag, [[time, record], ...]]`` (forward mode) for several. A record is
``{"container_id", "container_name", "source": "stdout"|"stderr", "log"}`` plus
``partial_message: "true"`` on a piece of a line longer than 16 KiB. Standard library
only.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from engine.sdk.logwriter import LogWriter

from . import _msgpack
from ._base import DEFAULT_BUFFER, LineBuffer, NonBlockingWriter, parse_bool, render_tag
from ._localfile import with_cache
from ._netaddr import Connection, parse_address

DEFAULT_ADDRESS = "localhost:24224"
SCHEMES = ("tcp", "unix")


def parse_fluentd_address(value: str) -> Any:
    return parse_address(value or DEFAULT_ADDRESS, default_port=24224, schemes=SCHEMES)


class FluentdWriter(LogWriter):
    def __init__(self, ctx: dict[str, Any]) -> None:
        opts = ctx.get("options") or {}
        self.addr = parse_fluentd_address(opts.get("fluentd-address", ""))
        self.conn = Connection(self.addr)
        self.tag = render_tag(opts.get("tag", ""), ctx)
        self.subsecond = parse_bool(opts.get("fluentd-sub-second-precision"), False)
        self.base = {"container_id": str(ctx.get("container_id") or ""),
                     "container_name": str(ctx.get("container_name") or "")}
        self.lines = LineBuffer()
        self.lost = 0

    def _time(self, time_ns: int) -> Any:
        return _msgpack.event_time(time_ns) if self.subsecond else time_ns // 1_000_000_000

    def _record(self, stream: str, line: bytes, complete: bool) -> dict[str, Any]:
        rec = dict(self.base)
        rec["source"] = stream
        rec["log"] = line.rstrip(b"\n").decode("utf-8", "replace") if complete \
            else line.decode("utf-8", "replace")
        if not complete:
            rec["partial_message"] = "true"
        return rec

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        lines = self.lines.feed(stream, data)
        if lines:
            self._send([(self._record(stream, line, complete), time_ns)
                        for line, complete in lines])

    def _send(self, events: list[tuple[dict[str, Any], int]]) -> None:
        if len(events) == 1:
            rec, ns = events[0]
            msg = _msgpack.packb([self.tag, self._time(ns), rec])
        else:
            msg = _msgpack.packb([self.tag, [[self._time(ns), rec] for rec, ns in events]])
        if not self.conn.send(msg):
            self.lost += len(events)
            if self.lost == len(events):
                sys.stderr.write(f"fluentd: cannot send to {self.addr}: "
                                 f"{self.conn.last_error}; dropping lines until it is back\n")

    def abort(self) -> None:
        self.conn.abort()

    def close(self) -> None:
        now = time.time_ns()
        rest = [(self._record(s, b, False), now) for s, b in self.lines.flush()]
        if rest:
            self._send(rest)
        self.conn.close()


def create(ctx: dict[str, Any]) -> LogWriter:
    """The monitor's entry point. ``fluentd-async=true`` is ``mode=non-blocking``, with
    ``fluentd-buffer-limit`` (bytes) as its buffer size."""
    opts = ctx.get("options") or {}
    primary: LogWriter = FluentdWriter(ctx)
    if parse_bool(opts.get("fluentd-async"), False) and opts.get("mode") != "non-blocking":
        limit = int(opts.get("fluentd-buffer-limit") or DEFAULT_BUFFER)
        primary = NonBlockingWriter(primary, limit)
        opts = {k: v for k, v in opts.items() if k not in ("mode", "max-buffer-size")}
        ctx = dict(ctx, options=opts)
    return with_cache(primary, ctx)
