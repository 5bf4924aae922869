"""Transparent decompression of layer streams, detected by magic bytes.

:func:`decompressed` turns a path or a binary stream holding a plain, gzip, bzip2, xz or
zstd compressed tar into a stream of the uncompressed bytes. zstd is decoded with the
``zstandard`` module when it is importable, else with the ``zstd`` binary.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import shutil
import subprocess
import threading
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
    """Yield the uncompressed bytes of ``src`` (a path or a readable binary stream)."""
    with contextlib.ExitStack() as stack:
        if isinstance(src, (str, Path)):
            raw: BinaryIO = stack.enter_context(open(src, "rb"))
        else:
            raw = src
        prefix = _read_exact(raw, 6)
        source: BinaryIO = io.BufferedReader(_Prefixed(prefix, raw), CHUNK)  # type: ignore[arg-type]
        kind = detect(prefix)
        proc: _ZstdProcess | None = None
        if kind == "gzip":
            out: BinaryIO = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[assignment]
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
        except (OSError, EOFError, lzma.LZMAError) as exc:
            if isinstance(exc, (gzip.BadGzipFile, EOFError, lzma.LZMAError)):
                raise InvalidArgument(f"invalid {kind} stream: {exc}") from exc
            raise
        if proc is not None:
            proc.finish()
