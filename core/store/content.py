"""Content-addressed blob store.

Blobs live at ``<root>/blobs/sha256/<hex>``; partial writes live in ``<root>/tmp``. A
blob only becomes visible under its digest after its bytes were hashed, compared with
the expected digest, fsynced and renamed into place, so a crash (even ``kill -9``) at
any moment leaves at worst an orphan temp file, never a corrupt or truncated blob.
Leftover temp files are removed when the store is opened.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, BinaryIO

from engine.sdk.errors import InvalidArgument, NotFound

from .fsutil import CHUNK, fsync_dir, parse_digest


class ContentStore:
    """Blobs by ``sha256:`` digest. All methods are synchronous and thread-safe."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self._blobs = self.root / "blobs" / "sha256"
        self._tmp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Anything left in tmp is the remains of an interrupted write.
        for leftover in self._tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    @property
    def tmp_dir(self) -> Path:
        """A scratch directory on the same filesystem as the blobs."""
        return self._tmp

    def path(self, digest: str) -> Path:
        """The path of a blob (whether or not it exists)."""
        return self._blobs / parse_digest(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def _existing(self, digest: str) -> Path:
        p = self.path(digest)
        if not p.is_file():
            raise NotFound(f"blob {digest} not found")
        return p

    def read(self, digest: str) -> bytes:
        return self._existing(digest).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for reading (the caller closes it)."""
        return open(self._existing(digest), "rb")

    def size(self, digest: str) -> int:
        return self._existing(digest).stat().st_size

    def write(self, data: bytes, expected: str | None = None) -> str:
        """Store ``data`` and return its digest (verified against ``expected`` if given)."""

        digest, _ = self.ingest(io.BytesIO(data), expected=expected, size=len(data))
        return digest

    def ingest(
        self, fileobj: IO[bytes], expected: str | None = None, size: int | None = None
    ) -> tuple[str, int]:
        """Stream ``fileobj`` into the store; return ``(digest, size)``.

        When ``size`` is given exactly that many bytes are read (the stream may go on).
        A digest or size mismatch raises InvalidArgument and stores nothing.
        """
        if expected is not None:
            parse_digest(expected)
        fd, tmp = tempfile.mkstemp(prefix="ingest-", dir=self._tmp)
        try:
            h = hashlib.sha256()
            total = 0
            with os.fdopen(fd, "wb") as out:
                remaining = size
                while remaining is None or remaining > 0:
                    want = CHUNK if remaining is None else min(CHUNK, remaining)
                    chunk = fileobj.read(want)
                    if not chunk:
                        break
                    h.update(chunk)
                    out.write(chunk)
                    total += len(chunk)
                    if remaining is not None:
                        remaining -= len(chunk)
                out.flush()
                os.fchmod(out.fileno(), 0o644)
                os.fsync(out.fileno())
            if size is not None and total != size:
                raise InvalidArgument(f"short blob: expected {size} bytes, got {total}")
            digest = "sha256:" + h.hexdigest()
            if expected is not None and digest != expected:
                raise InvalidArgument(f"digest mismatch: expected {expected}, got {digest}")
            final = self._blobs / h.hexdigest()
            if final.is_file():
                os.unlink(tmp)
            else:
                os.rename(tmp, final)
                fsync_dir(self._blobs)
            return digest, total
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def adopt(self, path: str | Path, expected: str, *, hashed: str | None = None) -> str:
        """Move the complete file at ``path`` into the store as blob ``expected``.

        The file is renamed into place, not copied, so it must be on the store's
        filesystem (else it is copied through :meth:`ingest`). ``hashed`` is the digest
        the caller computed over the bytes as it wrote them; without it the file is read
        and hashed here. The file is fsynced before the rename, so the blob appears
        complete or not at all. A mismatch raises InvalidArgument and leaves the file
        where it is; once the blob is in (or was already), ``path`` is gone.
        """
        parse_digest(expected)
        source = Path(path)
        with open(source, "rb") as f:
            if hashed is None:
                h = hashlib.sha256()
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                hashed = "sha256:" + h.hexdigest()
            if hashed != expected:
                raise InvalidArgument(f"digest mismatch: expected {expected}, got {hashed}")
            final = self.path(expected)
            if final.is_file():
                source.unlink()
                return expected
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
            try:
                os.rename(source, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                f.seek(0)
                self.ingest(f, expected=expected)
                source.unlink()
                return expected
        fsync_dir(self._blobs)
        return expected

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def list(self) -> builtins.list[str]:
        return sorted("sha256:" + p.name for p in self._blobs.iterdir() if len(p.name) == 64)
