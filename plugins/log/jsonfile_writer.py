"""Writer half of the ``json-file`` log driver; runs in each container's monitor.

Standard library only. Lines are ``{"log":"text\\n","stream":"stdout","time":"..."}``.
"""
from __future__ import annotations

import time
from json.encoder import encode_basestring

from engine.sdk.logwriter import LogWriter

from ._base import with_mode
from ._common import format_time, log_file, parse_size, rotate_files

PARTIAL_MAX = 16 * 1024  # Docker splits lines longer than this


class JsonFileWriter(LogWriter):
    """Appends a container's output to ``<log_dir>/<id>-json.log``."""

    def __init__(self, ctx: dict) -> None:
        opts = ctx.get("options") or {}
        self.path = log_file(ctx["log_dir"], ctx["container_id"])
        self.max_size = parse_size(opts.get("max-size", "-1"))
        self.max_file = int(opts.get("max-file", "1") or 1)
        self.compress = opts.get("compress", "false").lower() in ("1", "true", "yes")
        self.f = open(self.path, "ab")
        self.size = self.f.tell()
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        buf = self.partial.get(stream, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        while len(rest) >= PARTIAL_MAX:  # a very long line goes out in pieces
            lines.append(None)  # marker: the next piece has no newline
            lines.append(rest[:PARTIAL_MAX])
            rest = rest[PARTIAL_MAX:]
        self.partial[stream] = rest
        if lines:
            self._emit(stream, lines, time_ns)

    def _emit(self, stream: str, lines: list, time_ns: int) -> None:
        tail = b',"stream":"' + stream.encode() + b'","time":"' + format_time(time_ns).encode() + b'"}\n'
        out = []
        newline = True
        for line in lines:
            if line is None:
                newline = False
                continue
            text = line.decode("utf-8", "replace") + ("\n" if newline else "")
            newline = True
            out.append(b'{"log":' + encode_basestring(text).encode() + tail)
        blob = b"".join(out)
        if self.max_size > 0 and self.size + len(blob) > self.max_size and self.size > 0:
            self._rotate()
        self.f.write(blob)
        self.f.flush()
        self.size += len(blob)

    def _rotate(self) -> None:
        self.f.close()
        rotate_files(self.path, self.max_file, self.compress)
        self.f = open(self.path, "ab")
        self.size = 0

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._emit(stream, [None, rest], time.time_ns())
        self.partial = {"stdout": b"", "stderr": b""}
        self.f.close()


def create(ctx: dict) -> LogWriter:
    """The monitor's entry point: a :class:`JsonFileWriter`, in a non-blocking buffer
    when ``mode=non-blocking``."""
    return with_mode(JsonFileWriter(ctx), ctx)
