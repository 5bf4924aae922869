"""Writer-side building blocks shared by the log drivers: line splitting, Docker's
``tag`` template, option parsing, and the non-blocking buffer (``mode=non-blocking``).

Standard library only: these run in every container's monitor process.
"""
from __future__ import annotations

import collections
import os
import re
import sys
import threading
import time
from typing import Any, Callable

from engine.sdk.logwriter import LogWriter

PARTIAL_MAX = 16 * 1024           # a longer line is written in pieces, as Docker does
DEFAULT_BUFFER = 1024 * 1024      # max-buffer-size when mode=non-blocking
CLOSE_GRACE = 5.0                 # seconds a closing non-blocking writer may flush

# ---------------------------------------------------------------- lines


class LineBuffer:
    """Turns raw chunks into lines, one partial line kept per stream.

    :meth:`feed` returns ``(line, complete)`` pairs: ``line`` ends with ``\\n`` when
    ``complete``; an incomplete piece is a line longer than :data:`PARTIAL_MAX`."""

    def __init__(self, limit: int = PARTIAL_MAX) -> None:
        self.limit = limit
        self.partial: dict[str, bytes] = {}

    def feed(self, stream: str, data: bytes) -> list[tuple[bytes, bool]]:
        buf = self.partial.pop(stream, b"") + data
        out: list[tuple[bytes, bool]] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            while nl + 1 - start > self.limit:
                out.append((buf[start:start + self.limit], False))
                start += self.limit
            out.append((buf[start:nl + 1], True))
            start = nl + 1
        rest = buf[start:]
        while len(rest) >= self.limit:
            out.append((rest[:self.limit], False))
            rest = rest[self.limit:]
        if rest:
            self.partial[stream] = rest
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        """The trailing partial lines, by stream; the buffer is empty afterwards."""
        out = [(s, b) for s, b in self.partial.items() if b]
        self.partial.clear()
        return out


# ---------------------------------------------------------------- options


def parse_bool(value: Any, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean: {value!r}")


_TAG_RE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def render_tag(template: str, ctx: dict[str, Any], default: str = "{{.ID}}") -> str:
    """Docker's ``tag`` log option: ``{{.ID}}`` (12 characters), ``{{.FullID}}``,
    ``{{.Name}}``, ``{{.ImageName}}``, ``{{.ImageID}}``, ``{{.ImageFullID}}``,
    ``{{.DaemonName}}``. Unknown fields are left as written."""
    cid = str(ctx.get("container_id") or "")
    image = str(ctx.get("image") or "")
    image_id = str(ctx.get("image_id") or "").removeprefix("sha256:")
    values = {
        "ID": cid[:12], "FullID": cid, "Name": str(ctx.get("container_name") or "").lstrip("/"),
        "ImageName": image, "ImageID": image_id[:12], "ImageFullID": image_id,
        "DaemonName": "engine",
    }

    def sub(m: re.Match) -> str:
        return values.get(m.group(1), m.group(0))

    return _TAG_RE.sub(sub, template or default)


def check_tag(template: str) -> None:
    """Raise ValueError for a template with unbalanced braces."""
    if template.count("{{") != template.count("}}"):
        raise ValueError(f"invalid tag template: {template!r}")


def buffer_options(options: dict[str, str]) -> tuple[str, int]:
    """``mode`` and ``max-buffer-size`` (bytes), validated."""
    mode = options.get("mode", "blocking") or "blocking"
    if mode not in ("blocking", "non-blocking"):
        raise ValueError(f"logger: unknown mode {mode!r} (blocking or non-blocking)")
    size = DEFAULT_BUFFER
    if options.get("max-buffer-size"):
        from ._common import parse_size

        size = parse_size(options["max-buffer-size"])
        if size <= 0:
            raise ValueError("max-buffer-size must be a positive size")
    return mode, size


# ---------------------------------------------------------------- non-blocking


class NonBlockingWriter(LogWriter):
    """Queues lines for ``inner`` and writes them from a thread of their own.

    The queue holds at most ``max_bytes``; a line that does not fit is dropped and
    counted (:attr:`dropped`), so a slow or stuck destination never stalls the
    container. Lines reach ``inner`` whole, one ``write`` each, in order. ``close``
    flushes for up to ``grace`` seconds; what is still queued then is dropped, and
    ``inner.abort()`` (when it has one) unblocks a writer stuck on its destination.
    """

    def __init__(self, inner: LogWriter, max_bytes: int = DEFAULT_BUFFER, *,
                 grace: float = CLOSE_GRACE, report: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.grace = grace
        self.report = report or _report
        self.lines = LineBuffer()
        self.queue: collections.deque[tuple[str, bytes, int]] = collections.deque()
        self.queued = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.errors = 0
        self.closing = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._drain, name="log-drain", daemon=True)
        self.thread.start()

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        lines = self.lines.feed(stream, data)
        if lines:
            self._enqueue(stream, [line for line, _ in lines], time_ns)

    def _enqueue(self, stream: str, lines: list[bytes], time_ns: int) -> None:
        with self.cond:
            for line in lines:
                if self.queued + len(line) > self.max_bytes:
                    self.dropped += 1
                    self.dropped_bytes += len(line)
                    continue
                self.queue.append((stream, line, time_ns))
                self.queued += len(line)
            self.cond.notify()

    def _drain(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                item = self.queue[0]
            stream, line, ns = item
            try:
                self.inner.write(stream, line, ns)
            except Exception as e:  # keep draining: one bad write must not stop the rest
                self.errors += 1
                if self.errors == 1:
                    self.report(f"log writer error (non-blocking mode): {e!r}")
            with self.cond:
                if not self.queue or self.queue[0] is not item:
                    return  # close() gave up on the queue while this write was stuck
                self.queue.popleft()
                self.queued -= len(line)

    def close(self) -> None:
        now = time.time_ns()
        for stream, rest in self.lines.flush():
            self._enqueue(stream, [rest], now)
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(self.grace)
        if self.thread.is_alive():
            with self.cond:
                self.dropped += len(self.queue)
                self.dropped_bytes += self.queued
                self.queue.clear()
                self.queued = 0
            abort = getattr(self.inner, "abort", None)
            if abort is not None:
                abort()
            self.thread.join(1.0)
        else:
            self.inner.close()
        if self.dropped:
            self.report(f"log: dropped {self.dropped} lines ({self.dropped_bytes} bytes) "
                        "in non-blocking mode: the destination was too slow")


def _report(message: str) -> None:
    sys.stderr.write(f"monitor[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def with_mode(inner: LogWriter, ctx: dict[str, Any]) -> LogWriter:
    """Wrap ``inner`` in a :class:`NonBlockingWriter` when the options ask for it."""
    mode, size = buffer_options(ctx.get("options") or {})
    if mode == "non-blocking":
        return NonBlockingWriter(inner, size)
    return inner
