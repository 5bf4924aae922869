"""The ``local`` log format: compact binary records in rotated files.

A file is a sequence of frames::

    frame   = length:u32be  payload[length]  length:u32be
    payload = version:u8(=1)  stream:u8(1 stdout, 2 stderr)  flags:u8  time_ns:u64be  data

``data`` is one line, its newline included when the container wrote one (flag bit 0,
``PARTIAL``, marks a piece of a longer line). The length is written at both ends so the
file can be walked backwards as well as forwards, and a torn last frame (a writer
killed mid-write) is recognised and skipped.

Rotation keeps ``max-file`` files: ``container.log`` (the live one), then
``container.log.1`` ... ``container.log.N-1``, newest first, gzipped when ``compress``
is on (``container.log.1.gz``). Standard library only: the writer runs in the monitor.
"""
from __future__ import annotations

import gzip
import os
import struct
import time
from typing import Any, Iterator

from engine.sdk.logwriter import LogWriter

from ._base import LineBuffer, parse_bool
from ._common import parse_size, rotate_files

VERSION = 1
PARTIAL = 0x01
STREAMS = {"stdout": 1, "stderr": 2}
STREAM_NAMES = {1: "stdout", 2: "stderr"}
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">BBBQ")
MAX_RECORD = 1 << 20

DEFAULT_MAX_SIZE = 20 * 1024 * 1024
DEFAULT_MAX_FILE = 5
DEFAULT_COMPRESS = True

Record = tuple[str, bytes, int]  # stream, data, time_ns


def encode(stream: str, data: bytes, time_ns: int, flags: int = 0) -> bytes:
    payload = _HEAD.pack(VERSION, STREAMS.get(stream, 1), flags, time_ns) + data
    n = _LEN.pack(len(payload))
    return n + payload + n


def decode(blob: bytes) -> tuple[list[Record], int]:
    """Records in ``blob`` and how many bytes they took; a torn tail is left over."""
    out: list[Record] = []
    pos, end = 0, len(blob)
    while pos + 4 <= end:
        (n,) = _LEN.unpack_from(blob, pos)
        stop = pos + 4 + n + 4
        if n < _HEAD.size or n > MAX_RECORD + _HEAD.size:
            raise ValueError(f"corrupt log record at offset {pos}")
        if stop > end:
            break
        if _LEN.unpack_from(blob, stop - 4)[0] != n:
            raise ValueError(f"corrupt log record at offset {pos}")
        _ver, stream, _flags, ns = _HEAD.unpack_from(blob, pos + 4)
        out.append((STREAM_NAMES.get(stream, "stdout"), blob[pos + 4 + _HEAD.size:stop - 4], ns))
        pos = stop
    return out, pos


class Rotation:
    """``max-size``, ``max-file`` and ``compress`` for one log path."""

    def __init__(self, path: str, options: dict[str, Any], *, prefix: str = "",
                 max_size: int = DEFAULT_MAX_SIZE, max_file: int = DEFAULT_MAX_FILE,
                 compress: bool = DEFAULT_COMPRESS) -> None:
        self.path = path
        size = options.get(prefix + "max-size")
        self.max_size = parse_size(size) if size else max_size
        self.max_file = int(options.get(prefix + "max-file") or max_file)
        self.compress = parse_bool(options.get(prefix + "compress"), compress)

    def rotated(self, i: int) -> list[str]:
        """Candidate names of the ``i``-th rotated file."""
        return [f"{self.path}.{i}.gz", f"{self.path}.{i}"]

    def files(self) -> list[str]:
        """Existing files, oldest first, the live one last."""
        out = []
        for i in range(self.max_file - 1, 0, -1):
            for cand in self.rotated(i):
                if os.path.exists(cand):
                    out.append(cand)
                    break
        out.append(self.path)
        return out


class LocalFileWriter(LogWriter):
    """Appends records to ``path``, rotating by size."""

    def __init__(self, path: str, rotation: Rotation) -> None:
        self.path = path
        self.rot = rotation
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.f = open(path, "ab")
        self.size = self.f.tell()
        self.lines = LineBuffer()

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        lines = self.lines.feed(stream, data)
        if lines:
            blob = b"".join(encode(stream, line, time_ns, 0 if complete else PARTIAL)
                            for line, complete in lines)
            self._append(blob)

    def _append(self, blob: bytes) -> None:
        if 0 < self.rot.max_size < self.size + len(blob) and self.size > 0:
            self._rotate()
        self.f.write(blob)
        self.f.flush()
        self.size += len(blob)

    def _rotate(self) -> None:
        self.f.close()
        rotate_files(self.path, self.rot.max_file, self.rot.compress, compresslevel=1)
        self.f = open(self.path, "ab")
        self.size = 0

    def close(self) -> None:
        now = time.time_ns()
        blob = b"".join(encode(s, rest, now, PARTIAL) for s, rest in self.lines.flush())
        if blob:
            self._append(blob)
        self.f.close()


# ---------------------------------------------------------------- reading


def read_file(path: str) -> tuple[list[Record], int, int]:
    """Records of one file, the offset after the last whole record, and the inode
    (0 for a gzipped file)."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                blob = f.read()
            ino = 0
        else:
            with open(path, "rb") as f:
                blob = f.read()
                ino = os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return [], 0, 0
    except (OSError, EOFError):  # a gzip being written by a rotation
        return [], 0, 0
    records, used = decode(blob)
    return records, used, ino


def read_all(rot: Rotation) -> tuple[list[Record], int, int]:
    """Every record of every file, oldest first; offset and inode of the live file."""
    out: list[Record] = []
    pos = ino = 0
    for path in rot.files():
        records, used, inode = read_file(path)
        out.extend(records)
        if path == rot.path:
            pos, ino = used, inode
    return out, pos, ino


class Follower:
    """Reads what is appended to a live log file, across rotations.

    It keeps the file open: after a rotation its descriptor still reaches the old file
    (renamed, or unlinked once compressed), whose inode therefore cannot be reused, so
    the rest of it is read before moving on to the new file. The writer closes a file
    before rotating it, so once the path names another file the old one is complete.
    """

    def __init__(self, path: str, pos: int = 0, ino: int = 0) -> None:
        self.path = path
        self.f: Any = None
        self.pos = 0
        try:
            self.f = open(path, "rb")
        except FileNotFoundError:
            return
        if ino and os.fstat(self.f.fileno()).st_ino == ino:
            self.pos = pos

    def _drain(self) -> list[Record]:
        self.f.seek(self.pos)
        records, used = decode(self.f.read())
        self.pos += used
        return records

    def poll(self) -> list[Record]:
        """Records appended since the last call."""
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except FileNotFoundError:
                return []
            self.pos = 0
        records = self._drain()
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            return records  # in the middle of a rotation: the next poll goes on
        if current != os.fstat(self.f.fileno()).st_ino:
            records += self._drain()
            self.f.close()
            self.f = None
            records += self.poll()
        return records

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def iter_records(rot: Rotation) -> Iterator[Record]:
    """Every record, oldest first (a convenience for tests and tools)."""
    yield from read_all(rot)[0]


# ---------------------------------------------------------------- dual logging

CACHE_OPTIONS = frozenset({"cache-disabled", "cache-max-size", "cache-max-file",
                           "cache-compress"})


def cache_path(log_dir: str) -> str:
    """Where a driver that cannot read keeps its local copy for ``logs``."""
    return os.path.join(log_dir, "container-cached.log")


def cache_rotation(log_dir: str, options: dict[str, Any]) -> Rotation:
    return Rotation(cache_path(log_dir), options, prefix="cache-")


def cache_enabled(options: dict[str, Any]) -> bool:
    return not parse_bool(options.get("cache-disabled"), False)


class TeeWriter(LogWriter):
    """Writes to the local cache, then to the real destination."""

    def __init__(self, primary: LogWriter, cache: LogWriter) -> None:
        self.primary = primary
        self.cache = cache

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        self.cache.write(stream, data, time_ns)
        self.primary.write(stream, data, time_ns)

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            self.primary.close()


def with_cache(primary: LogWriter, ctx: dict[str, Any]) -> LogWriter:
    """``primary`` (in a non-blocking buffer when ``mode`` asks for one), teed into the
    local cache unless ``cache-disabled`` is set."""
    from ._base import with_mode

    primary = with_mode(primary, ctx)
    opts = ctx.get("options") or {}
    if not cache_enabled(opts):
        return primary
    rot = cache_rotation(ctx["log_dir"], opts)
    return TeeWriter(primary, LocalFileWriter(rot.path, rot))
