"""The ``counter`` log driver: every line numbered, lines counted per stream.

The writer half (:mod:`engine_log_counter.writer`) runs in each container's monitor
and imports only the standard library; this half reads the lines back for
``docker logs`` (tail, since, until, follow).
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import AsyncIterator, Callable

from engine.sdk import hookimpl
from engine.sdk.drivers import LogContext, LogDriver, LogEntry
from engine.sdk.errors import InvalidArgument

from .writer import count_path, log_path

OPTIONS = {"tag"}


def _decode(blob: bytes) -> list[LogEntry]:
    out = []
    for raw in blob.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a torn line of a writer that crashed
        out.append(LogEntry(rec["s"], rec["l"].encode(), rec["t"]))
    return out


class CounterLogDriver(LogDriver):
    name = "counter"
    writer = "engine_log_counter.writer:CounterWriter"
    can_read = True

    def validate_options(self, options: dict[str, str]) -> None:
        for key in options:
            if key not in OPTIONS:
                raise InvalidArgument(f"unknown log opt '{key}' for counter log driver")

    async def read(self, log: LogContext, *, since_ns: int = 0, until_ns: int = 0,
                   tail: int = -1, follow: bool = False,
                   stopped: Callable[[], bool] | None = None) -> AsyncIterator[LogEntry]:
        path = log_path(log.log_dir, log.container_id)

        def wanted(e: LogEntry) -> bool:
            if since_ns and e.time_ns < since_ns:
                return False
            return not (until_ns and e.time_ns > until_ns)

        def read_from(pos: int) -> tuple[list[LogEntry], int]:
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    blob = f.read()
            except FileNotFoundError:
                return [], pos
            cut = blob.rfind(b"\n") + 1  # a follower resumes after the last whole line
            return [e for e in _decode(blob[:cut]) if wanted(e)], pos + cut

        loop = asyncio.get_running_loop()
        entries, pos = await loop.run_in_executor(None, read_from, 0)
        if tail >= 0:
            entries = entries[len(entries) - tail:] if tail else []
        for e in entries:
            yield e
        while follow:
            done = stopped() if stopped else False
            entries, pos = await loop.run_in_executor(None, read_from, pos)
            for e in entries:
                yield e
            if done:
                return
            await asyncio.sleep(0.05)

    async def remove(self, log: LogContext) -> None:
        for p in (log_path(log.log_dir, log.container_id),
                  count_path(log.log_dir, log.container_id)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(CounterLogDriver)
