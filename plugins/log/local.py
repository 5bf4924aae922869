"""The ``local`` log driver: compact binary records with rotation (see ``_localfile``).

Options (``--log-opt``): ``max-size`` (20m by default; -1 unlimited), ``max-file`` (5),
``compress`` (true: rotated files are gzipped), ``mode`` and ``max-buffer-size``. The
writer half (``local_writer``) runs in each container's monitor; this module reads.

:func:`read_records` is also how the drivers that cannot read their destination
(syslog, journald, fluentd) serve ``logs`` from their local cache ("dual logging").
"""
from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Callable

from engine.sdk import hookimpl
from engine.sdk.drivers import LogContext, LogDriver, LogEntry
from engine.sdk.errors import InvalidArgument

from . import _localfile
from ._base import buffer_options, parse_bool
from ._common import parse_size

MODE_OPTIONS = {"mode", "max-buffer-size"}


def log_path(log_dir: str) -> str:
    return os.path.join(log_dir, "local-logs", "container.log")


def validate_rotation(options: dict[str, str], prefix: str = "") -> None:
    """Check ``max-size``, ``max-file`` and ``compress`` (with ``prefix``: the
    ``cache-`` options of dual logging)."""
    try:
        if options.get(prefix + "max-size"):
            size = parse_size(options[prefix + "max-size"])
            if size == 0:
                raise InvalidArgument(f"{prefix}max-size must be greater than 0")
        if options.get(prefix + "max-file"):
            n = int(options[prefix + "max-file"])
            if n < 1:
                raise InvalidArgument(f"{prefix}max-file cannot be less than 1")
        parse_bool(options.get(prefix + "compress"))
    except ValueError as e:
        raise InvalidArgument(f"invalid {prefix}log option: {e}") from None


def validate_mode(options: dict[str, str]) -> None:
    try:
        buffer_options(options)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


async def read_records(rot: _localfile.Rotation, *, since_ns: int = 0, until_ns: int = 0,
                       tail: int = -1, follow: bool = False,
                       stopped: Callable[[], bool] | None = None
                       ) -> AsyncIterator[list[LogEntry]]:
    """Entries of a ``local``-format log, oldest first, in lists; file reads run in an
    executor."""
    loop = asyncio.get_running_loop()

    def keep(records: list[_localfile.Record]) -> list[LogEntry]:
        return [LogEntry(s, d, ns) for s, d, ns in records
                if not (since_ns and ns < since_ns) and not (until_ns and ns > until_ns)]

    try:
        records, pos, ino = await loop.run_in_executor(None, _localfile.read_all, rot)
    except ValueError as e:
        raise InvalidArgument(f"cannot read logs: {e}") from None
    entries = keep(records)
    if tail >= 0:
        entries = entries[len(entries) - tail:] if tail else []
    for i in range(0, len(entries), 10000):
        yield entries[i:i + 10000]
    if not follow:
        return
    follower = await loop.run_in_executor(None, _localfile.Follower, rot.path, pos, ino)
    try:
        while True:
            done = stopped() if stopped else False
            records = await loop.run_in_executor(None, follower.poll)
            batch = keep(records)
            if batch:
                yield batch
            if done:
                return
            await asyncio.sleep(0.05 if records else 0.1)
    finally:
        follower.close()


class LocalLogDriver(LogDriver):
    name = "local"
    writer = "engine.plugins.log.local_writer:create"
    can_read = True
    OPTIONS = {"max-size", "max-file", "compress"} | MODE_OPTIONS

    def validate_options(self, options: dict[str, str]) -> None:
        for key in options:
            if key not in self.OPTIONS:
                raise InvalidArgument(f"unknown log opt '{key}' for local log driver")
        validate_rotation(options)
        validate_mode(options)

    def rotation(self, log: LogContext) -> _localfile.Rotation:
        return _localfile.Rotation(log_path(log.log_dir), log.options)

    async def read_batches(self, log: LogContext, *, since_ns: int = 0, until_ns: int = 0,
                           tail: int = -1, follow: bool = False,
                           stopped: Callable[[], bool] | None = None,
                           with_time: bool = True) -> AsyncIterator[list[LogEntry]]:
        async for batch in read_records(self.rotation(log), since_ns=since_ns,
                                        until_ns=until_ns, tail=tail, follow=follow,
                                        stopped=stopped):
            yield batch

    async def remove(self, log: LogContext) -> None:
        remove_files(self.rotation(log))


def remove_files(rot: _localfile.Rotation) -> None:
    for path in rot.files():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(LocalLogDriver)


class CachingLogDriver(LogDriver):
    """Base for drivers whose destination cannot be read back (syslog, journald,
    fluentd): ``logs`` reads the local cache their writer keeps beside the container
    ("dual logging", Docker 20.10). ``cache-disabled=true`` turns the cache off;
    ``cache-max-size`` (20m), ``cache-max-file`` (5) and ``cache-compress`` (true)
    bound it."""

    can_read = True
    OPTIONS: frozenset[str] = frozenset()

    def validate_options(self, options: dict[str, str]) -> None:
        allowed = self.OPTIONS | MODE_OPTIONS | _localfile.CACHE_OPTIONS
        for key in options:
            if key not in allowed:
                raise InvalidArgument(f"unknown log opt '{key}' for {self.name} log driver")
        validate_rotation(options, "cache-")
        validate_mode(options)

    def _cache(self, log: LogContext) -> _localfile.Rotation:
        return _localfile.cache_rotation(log.log_dir, log.options)

    async def read_batches(self, log: LogContext, *, since_ns: int = 0, until_ns: int = 0,
                           tail: int = -1, follow: bool = False,
                           stopped: Callable[[], bool] | None = None,
                           with_time: bool = True) -> AsyncIterator[list[LogEntry]]:
        if not _localfile.cache_enabled(log.options):
            raise InvalidArgument(f"configured logging driver does not support reading: "
                                  f"{self.name} with cache-disabled=true")
        async for batch in read_records(self._cache(log), since_ns=since_ns,
                                        until_ns=until_ns, tail=tail, follow=follow,
                                        stopped=stopped):
            yield batch

    async def remove(self, log: LogContext) -> None:
        remove_files(self._cache(log))
