"""Writing state files safely: the one helper the kernel, the registry and drivers share.

Standard library only (plugins and the registry import it too).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or creation in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644, *,
                 make_parents: bool = False, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash at any moment) sees
    the old file or the new one, never a part: temp file in the same directory, fsync,
    rename, fsync of the directory. ``durable=False`` leaves the fsyncs out, for files
    made again whenever they are needed: readers still never see a part, but after
    a power cut the file may be the old one or empty."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
