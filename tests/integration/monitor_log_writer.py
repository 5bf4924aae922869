"""A log writer for the monitor tests: one JSON line per chunk in ``log_dir``.

The monitor imports it by ``monitor_log_writer:factory`` (the tests put this directory
on PYTHONPATH) and calls ``factory`` with the log context as a dict.
"""
from __future__ import annotations

import json
import os
from typing import Any


class JsonLinesWriter:
    def __init__(self, ctx: dict[str, Any]) -> None:
        self.f = open(os.path.join(ctx["log_dir"], "log.jsonl"), "a")
        self.f.write(json.dumps({"open": ctx["container_id"]}) + "\n")

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        self.f.write(json.dumps({"stream": stream, "data": data.decode(),
                                 "time_ns": time_ns}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.write(json.dumps({"closed": True}) + "\n")
        self.f.close()


def factory(ctx: dict[str, Any]) -> JsonLinesWriter:
    return JsonLinesWriter(ctx)
