"""The ``json-file`` log driver: Docker's on-disk format, with rotation.

Each line is ``{"log":"text\\n","stream":"stdout","time":"RFC3339Nano"}``. The writer
half (``jsonfile_writer``) runs inside the container's monitor process; this module,
the reader half, runs in the daemon.

Options (``--log-opt``): ``max-size`` (``10m``; -1 unlimited), ``max-file`` (how many
files to keep, 1 by default), ``compress`` (gzip the rotated files), ``mode``
(``non-blocking`` buffers up to ``max-buffer-size`` and drops rather than stalls).
"""
from __future__ import annotations

import asyncio
import collections
import gzip
import os
from typing import AsyncIterator, Callable

import msgspec

from engine.sdk import hookimpl
from engine.sdk.drivers import LogContext, LogDriver, LogEntry
from engine.sdk.errors import InvalidArgument

from ._base import buffer_options
from ._common import log_file, parse_size, parse_time_ns

class JsonFileDriver(LogDriver):
    name = "json-file"
    writer = "engine.plugins.log.jsonfile_writer:create"
    can_read = True
    OPTIONS = {"max-size", "max-file", "compress", "labels", "labels-regex", "env",
               "env-regex", "tag", "mode", "max-buffer-size"}

    def validate_options(self, options: dict[str, str]) -> None:
        for key, value in options.items():
            if key not in self.OPTIONS:
                raise InvalidArgument(f"unknown log opt '{key}' for json-file log driver")
        if "max-size" in options:
            parse_size(options["max-size"])
        if "max-file" in options:
            try:
                n = int(options["max-file"])
            except ValueError:
                raise InvalidArgument(f"invalid max-file: {options['max-file']!r}") from None
            if n < 1:
                raise InvalidArgument("max-file cannot be less than 1")
            if n > 1 and "max-size" not in options:
                raise InvalidArgument("max-file can only be set when max-size is set")
        try:
            buffer_options(options)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None

    def _files(self, log: LogContext) -> list[str]:
        path = log_file(log.log_dir, log.container_id)
        max_file = int(log.options.get("max-file", "1") or 1)
        files = []
        for i in range(max_file - 1, 0, -1):
            for cand in (f"{path}.{i}.gz", f"{path}.{i}"):
                if os.path.exists(cand):
                    files.append(cand)
                    break
        files.append(path)
        return files

    async def read_batches(self, log: LogContext, *, since_ns: int = 0, until_ns: int = 0,
                           tail: int = -1, follow: bool = False,
                           stopped: Callable[[], bool] | None = None,
                           with_time: bool = True) -> AsyncIterator[list[LogEntry]]:
        decoder = msgspec.json.Decoder(_Line)
        loop = asyncio.get_running_loop()
        need_time = with_time or since_ns or until_ns

        def decode_each(blob: bytes) -> list[_Line]:
            recs = []
            for raw in blob.split(b"\n"):
                if raw:
                    try:
                        recs.append(decoder.decode(raw))
                    except msgspec.DecodeError:
                        continue  # a torn line of a crashed writer
            return recs

        def decode(blob: bytes) -> list[LogEntry]:
            try:  # the whole file in one call: the common, fast case
                recs = decoder.decode_lines(blob)
            except msgspec.DecodeError:
                recs = decode_each(blob)
            if not need_time:
                return [LogEntry(r.stream, r.log.encode(), 0) for r in recs]
            out = []
            for rec in recs:
                ts = parse_time_ns(rec.time)
                if since_ns and ts < since_ns:
                    continue
                if until_ns and ts > until_ns:
                    continue
                out.append(LogEntry(rec.stream, rec.log.encode(), ts))
            return out

        files = self._files(log)
        pos = ino = 0
        if tail >= 0:
            # only the last ``tail`` entries are kept while reading: memory stays bounded
            def last_entries() -> tuple[list[LogEntry], int, int]:
                kept: collections.deque[LogEntry] = collections.deque(maxlen=tail)
                end = inode = 0
                for path in files:
                    for batch, at, node in _chunks(path, path == files[-1], decode):
                        kept.extend(batch)
                        end, inode = at, node
                return list(kept), end, inode

            entries, pos, ino = await loop.run_in_executor(None, last_entries)
            for i in range(0, len(entries), 10000):
                yield entries[i:i + 10000]
        else:
            # a file at a time, a chunk at a time: a 1 GB log never sits in memory
            for path in files:
                chunks = _chunks(path, path == files[-1], decode)
                while True:
                    item = await loop.run_in_executor(None, next, chunks, None)
                    if item is None:
                        break
                    batch, pos, ino = item
                    if batch:
                        yield batch
        if not follow:
            return
        path = log_file(log.log_dir, log.container_id)
        while True:
            done = stopped() if stopped else False
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if st.st_ino != ino or st.st_size < pos:  # rotated: start over
                        ino, pos = st.st_ino, 0
                    f.seek(pos)
                    blob = f.read()
            except FileNotFoundError:
                blob = b""
            cut = blob.rfind(b"\n") + 1
            if cut:
                pos += cut
                batch = decode(blob[:cut])
                if batch:
                    yield batch
            if done:
                return
            await asyncio.sleep(0.05 if cut else 0.1)

    async def remove(self, log: LogContext) -> None:
        for path in self._files(log):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


READ_CHUNK = 4 << 20


def _chunks(path: str, last: bool, decode: Callable[[bytes], list[LogEntry]]):
    """Decoded entries of one log file, a few MB at a time, with the offset just past
    the last complete line and the file's inode (where a follower goes on)."""
    try:
        f = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        ino = 0 if path.endswith(".gz") else os.fstat(f.fileno()).st_ino
        carry = b""
        offset = 0
        while True:
            data = f.read(READ_CHUNK)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            offset += cut
            if cut:
                yield decode(data[:cut]), offset, ino
        if carry and not last:  # a rotated file's last line always ends; be lenient
            yield decode(carry), offset + len(carry), ino
        elif last:
            yield [], offset, ino


class _Line(msgspec.Struct):
    log: str
    stream: str = "stdout"
    time: str = ""


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(JsonFileDriver)
