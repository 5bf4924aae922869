"""Layer stream compression: transparent decompression, and a parallel gzip encoder.

:func:`decompressed` turns a path or a binary stream holding a plain, gzip, bzip2, xz or
zstd compressed tar into a stream of the uncompressed bytes. zstd is decoded with the
``zstandard`` module when it is importable, else with the ``zstd`` binary.

:class:`GzipEncoder` is the other direction, for pushes: a readable stream of the gzip
encoding of a source, made of 1 MiB pieces deflated independently in worker threads
(zlib releases the GIL), as pigz does. A piece whose samples do not compress (already
compressed or random data) is written as stored deflate blocks instead of spending the
CPU on a search that would not shrink it. The output is one ordinary gzip member; it
depends only on the input and the level, so a layer always encodes to the same digest.
"""

from __future__ import annotations

import bz2
import collections
import concurrent.futures
import contextlib
import io
import lzma
import os
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.sdk.errors import InvalidArgument

from .fsutil import CHUNK

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"

Source = str | Path | BinaryIO


class _Prefixed(io.RawIOBase):
    """A read-only stream: ``prefix`` followed by the rest of ``raw``."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self._prefix = prefix
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._raw.read(len(buf))
        if not data:
            return 0
        buf[: len(data)] = data
        return len(data)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def detect(prefix: bytes) -> str:
    """Name the compression of a stream from its first bytes: gzip, zstd, bzip2, xz or none."""
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC):
        return "zstd"
    if prefix.startswith(BZIP2_MAGIC):
        return "bzip2"
    if prefix.startswith(XZ_MAGIC):
        return "xz"
    return "none"


class _GzipStream(io.RawIOBase):
    """The decoded bytes of a gzip stream, decoded by zlib a megabyte at a time.

    zlib checks each member's header, CRC and length itself (a mismatch raises
    ``zlib.error``). Members follow each other, with optional zero padding between
    them, as :mod:`gzip` reads them; a stream cut before a member's end raises
    ``EOFError``. Much faster than :class:`gzip.GzipFile`, which decodes in small
    steps and computes the CRC a second time in Python.
    """

    def __init__(self, source: BinaryIO, head: bytes = b"") -> None:
        """``head``: bytes already read from the start of the stream."""
        self._source = source
        self._decoder = zlib.decompressobj(31)
        self._input = head

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        """Up to ``size`` decoded bytes (all that is left when negative), as zlib
        returns them: no copy on the way. b"" at the end."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        if size == 0:
            return b""  # (zlib would read a max_length of 0 as no limit)
        while True:
            if self._decoder.eof:
                # what follows the member (zlib may leave a stale copy in the tail)
                rest = self._decoder.unused_data.lstrip(b"\0")
                while not rest:
                    more = self._source.read(CHUNK)
                    if not more:
                        return b""  # the end, after a complete member
                    rest = more.lstrip(b"\0")
                self._decoder = zlib.decompressobj(31)
                self._input = rest
            if not self._input:
                # zlib may hold decoded bytes back for want of room in the last answer
                out = self._decoder.decompress(b"", size)
                if out:
                    return out
                if self._decoder.eof:
                    continue
                self._input = self._source.read(CHUNK)
                if not self._input:
                    raise EOFError("compressed stream ended before the end of its last member")
            out = self._decoder.decompress(self._input, size)
            self._input = self._decoder.unconsumed_tail
            if out:
                return out

    def readinto(self, buf) -> int:  # type: ignore[override]
        out = self.read(len(buf))
        n = len(out)
        buf[:n] = out
        return n


class _ZstdProcess(io.RawIOBase):
    """Decode zstd through the ``zstd`` binary; a thread feeds it the compressed bytes."""

    def __init__(self, source: BinaryIO) -> None:
        exe = shutil.which("zstd")
        if exe is None:
            raise InvalidArgument(
                "layer is zstd compressed, but neither the zstandard module nor the zstd"
                " binary is available"
            )
        self._proc = subprocess.Popen(
            [exe, "-dc", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, args=(source,), daemon=True)
        self._feeder.start()

    def _feed(self, source: BinaryIO) -> None:
        assert self._proc.stdin is not None
        try:
            while chunk := source.read(CHUNK):
                self._proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # reported by close()
            self._feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        assert self._proc.stdout is not None
        data = self._proc.stdout.read(len(buf))
        if not data:
            return 0
        buf[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Wait for the decoder and raise InvalidArgument if it failed."""
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._proc.stdout.read()
        err = self._proc.stderr.read()
        rc = self._proc.wait()
        self._feeder.join()
        if self._feed_error is not None:
            raise self._feed_error
        if rc != 0:
            raise InvalidArgument(f"invalid zstd stream: {err.decode(errors='replace').strip()}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        super().close()


def _zstd_reader(source: BinaryIO) -> tuple[BinaryIO, _ZstdProcess | None]:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        proc = _ZstdProcess(source)
        return io.BufferedReader(proc, CHUNK), proc  # type: ignore[return-value]
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    return reader, None


@contextlib.contextmanager
def decompressed(src: Source) -> Iterator[BinaryIO]:
    """Yield the uncompressed bytes of ``src`` (a path or a readable binary stream).

    A read may return fewer bytes than it asked for: read until ``b""``."""
    with contextlib.ExitStack() as stack:
        if isinstance(src, (str, Path)):
            raw: BinaryIO = stack.enter_context(open(src, "rb"))
        else:
            raw = src
        prefix = _read_exact(raw, 6)
        source: BinaryIO = io.BufferedReader(_Prefixed(prefix, raw), CHUNK)  # type: ignore[arg-type]
        kind = detect(prefix)
        proc: _ZstdProcess | None = None
        if kind == "gzip":  # zlib reads megabytes from the source itself, and the reader
            # gets what zlib returns: no buffer in between on either side
            out: BinaryIO = _GzipStream(raw, prefix)  # type: ignore[assignment]
        elif kind == "bzip2":
            out = bz2.BZ2File(source, "rb")  # type: ignore[assignment]
        elif kind == "xz":
            out = lzma.LZMAFile(source, "rb")  # type: ignore[assignment]
        elif kind == "zstd":
            out, proc = _zstd_reader(source)
            if proc is not None:
                stack.callback(proc.close)
        else:
            out = source
        try:
            yield out
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            if isinstance(exc, (EOFError, lzma.LZMAError, zlib.error)):
                raise InvalidArgument(f"invalid {kind} stream: {exc}") from exc
            raise
        if proc is not None:
            proc.finish()


# -- gzip encoding -----------------------------------------------------------------------

#: Size of the independently deflated pieces of :class:`GzipEncoder`.
GZIP_PIECE = 1 << 20
#: Default level for pushed layers: zlib's fastest, as go-containerregistry (crane) uses
#: by default. On text it costs a few percent of size against level 6 for half the CPU.
GZIP_LEVEL = 1
#: A piece is stored, not deflated, when its samples shrink by less than this ratio.
_INCOMPRESSIBLE = 0.97
_SAMPLE = 8 << 10
_SAMPLES = 4
#: gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown
#: (what Go's and Python's writers emit for mtime 0).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: an empty final deflate block (fixed Huffman codes, end of block)
_FINAL_BLOCK = b"\x03\x00"


def incompressible(data: bytes | memoryview, level: int = 1) -> bool:
    """Whether ``data`` looks incompressible: a few spread samples deflated at ``level``
    barely shrink. Samples cost ~3% of deflating the whole piece."""
    n = len(data)
    if n <= _SAMPLE * _SAMPLES:
        samples = [data]
    else:
        step = (n - _SAMPLE) // (_SAMPLES - 1)
        samples = [data[i * step:i * step + _SAMPLE] for i in range(_SAMPLES)]
    raw = sum(len(s) for s in samples)
    packed = sum(len(zlib.compress(s, max(level, 1))) for s in samples)
    return packed >= raw * _INCOMPRESSIBLE


def deflate_piece(data: bytes, level: int) -> bytes:
    """Raw deflate blocks for ``data``, byte-aligned and not final, so that pieces
    concatenate into one deflate stream (stored blocks when the data does not compress)."""
    if level and incompressible(data, level):
        level = 0
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


class GzipEncoder(io.RawIOBase):
    """A readable stream of the gzip encoding of ``source``'s bytes.

    Pieces of :data:`GZIP_PIECE` bytes are deflated by ``threads`` workers (by default
    one per CPU), at most ``2 * threads`` of them in flight, and emitted in order; the
    CRC and length for the trailer are computed on the reading thread. ``close()``
    stops the workers; the source is left open for its owner.
    """

    def __init__(self, source: BinaryIO, *, level: int = GZIP_LEVEL,
                 threads: int | None = None) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"gzip level {level} is not in 0..9")
        self._source = source
        self._level = level
        self._threads = max(1, threads or os.cpu_count() or 1)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self._out = bytearray(_GZIP_HEADER)
        self._crc = 0
        self._size = 0
        self._eof = False  # source exhausted
        self._done = False  # trailer queued

    def readable(self) -> bool:
        return True

    def _submit(self) -> bool:
        """Queue the next piece of the source; False at its end."""
        data = self._source.read(GZIP_PIECE)
        if not data:
            self._eof = True
            return False
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="gzip")
        self._pending.append(self._pool.submit(deflate_piece, data, self._level))
        return True

    def _fill(self) -> None:
        """Move at least one finished piece (or the trailer) into the output buffer."""
        while not self._eof and len(self._pending) < 2 * self._threads:
            if not self._submit():
                break
        if self._pending:
            self._out += self._pending.popleft().result()
        elif not self._done:
            self._out += _FINAL_BLOCK
            self._out += struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)
            self._done = True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while not self._out and not self._done:
            self._fill()
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        del self._out[:n]
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (everything left when negative): at least one piece is
        waited for, never more than needed to return something."""
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(GZIP_PIECE):
                chunks.append(chunk)
            return b"".join(chunks)
        while not self._out and not self._done:
            self._fill()
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def close(self) -> None:
        if self._pool is not None:
            for fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()
        super().close()

