"""Writer half of the ``counter`` log driver; runs in each container's monitor.

Standard library only (and ``engine.sdk.logwriter``). Each complete line is appended to
``<log_dir>/<id>-counter.log`` as one JSON object ``{"n": 1, "s": "stdout", "t": ns,
"l": "text\\n"}``; on close, ``<id>-counter.json`` gets the number of lines per stream.
"""
from __future__ import annotations

import json
import os
import time

from engine.sdk.logwriter import LogWriter


def log_path(log_dir: str, container_id: str) -> str:
    return os.path.join(log_dir, f"{container_id}-counter.log")


def count_path(log_dir: str, container_id: str) -> str:
    return os.path.join(log_dir, f"{container_id}-counter.json")


class CounterWriter(LogWriter):
    """Numbers lines across both streams, in the order they arrive."""

    def __init__(self, ctx: dict) -> None:
        self.log_dir = ctx["log_dir"]
        self.container_id = ctx["container_id"]
        self.f = open(log_path(self.log_dir, self.container_id), "ab")
        self.counts = {"stdout": 0, "stderr": 0}
        self.partial = {"stdout": b"", "stderr": b""}
        self.n = 0

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        lines = (self.partial.get(stream, b"") + data).split(b"\n")
        self.partial[stream] = lines.pop()
        self._emit(stream, [line + b"\n" for line in lines], time_ns)

    def _emit(self, stream: str, lines: list[bytes], time_ns: int) -> None:
        out = []
        for line in lines:
            self.n += 1
            self.counts[stream] = self.counts.get(stream, 0) + 1
            out.append(json.dumps({"n": self.n, "s": stream, "t": time_ns,
                                   "l": line.decode("utf-8", "replace")}) + "\n")
        if out:
            self.f.write("".join(out).encode())
            self.f.flush()

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._emit(stream, [rest], time.time_ns())
        self.partial = {"stdout": b"", "stderr": b""}
        self.f.close()
        tmp = count_path(self.log_dir, self.container_id) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counts, f)
        os.replace(tmp, count_path(self.log_dir, self.container_id))
