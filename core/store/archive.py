"""Layer tar handling: safe extraction, diff production and change lists.

Extraction is the security-critical part of the store: layer tars come from registries
and ``docker load`` archives, so every entry is treated as hostile.

* Entry names are split into components; ``..`` anywhere is rejected, a leading ``/``
  is stripped (as Docker does), ``.`` and empty components are dropped.
* Parent directories are opened one component at a time relative to a directory file
  descriptor with ``O_NOFOLLOW``; a symlink (or a non-directory) where a directory is
  expected is rejected. Leaves are created with ``*at`` calls on the parent's fd and
  never follow a symlink, so no write can land outside the destination.
* Symlinks are created verbatim: they are only ever resolved inside the container root.
* Hard-link targets are resolved the same way and must already exist in the layer.
* OCI whiteouts become overlayfs whiteouts (``overlay`` format) or deletions in the copy
  of the lower layers (``vfs`` format).

The diff id (sha256 of the uncompressed tar) is computed in the same pass.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec
from engine.sdk.errors import InvalidArgument

from .compression import Source, decompressed
from .fsutil import CHUNK

WhiteoutFormat = Literal["overlay", "vfs"]

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

#: Change kinds, as Docker's ContainerChanges reports them.
CHANGE_MODIFIED, CHANGE_ADDED, CHANGE_DELETED = 0, 1, 2

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# xattrs a layer may not carry: they steer overlayfs itself.
_RESERVED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# xattrs not worth carrying into a layer tar.
_SKIPPED_XATTRS = ("security.selinux",)


class ExtractStats(msgspec.Struct, frozen=True):
    """Result of :func:`extract_layer`: the diff id and the size of the unpacked files."""

    diff_id: str
    size: int


class _Unsafe(Exception):
    """An entry would write outside the destination or through a symlink."""


class _LayerReader:
    """The uncompressed layer, read forward once, for :mod:`tarfile`'s random-access
    mode, hashing and counting every byte on the way (the diff id).

    tarfile's stream mode reads its source 10 KB at a time and joins and slices the
    pieces again for every read; here the source is read a megabyte at a time, tarfile
    gets exact slices for its headers, and a regular file's content goes from the
    decoded pieces to the file without a copy (:meth:`pieces`). Seeking forward skips
    (padding, or content tarfile does not read); seeking back is refused, so a tar that
    would need it fails instead of being read twice.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._piece = b""
        self._at = 0  # offset in the piece
        self._pos = 0  # offset in the stream
        self.hash = hashlib.sha256()
        self.count = 0

    def _next_piece(self) -> bool:
        piece = self._raw.read(CHUNK)
        if not piece:
            return False
        self.hash.update(piece)
        self.count += len(piece)
        self._piece, self._at = piece, 0
        return True

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or pos < self._pos:
            raise tarfile.ReadError("the layer is read forward only")
        skip = pos - self._pos
        while skip:
            left = len(self._piece) - self._at
            if not left:
                if not self._next_piece():
                    break  # past the end: the next read says so
                continue
            step = min(left, skip)
            self._at += step
            self._pos += step
            skip -= step
        return self._pos

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n:
            left = len(self._piece) - self._at
            if not left:
                if not self._next_piece():
                    break
                continue
            step = left if n < 0 else min(left, n)
            parts.append(self._piece if step == len(self._piece)
                         else self._piece[self._at:self._at + step])
            self._at += step
            self._pos += step
            if n > 0:
                n -= step
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pieces(self, offset: int, size: int) -> Iterable[memoryview]:
        """``size`` bytes from ``offset`` (at or after the current one), as views of
        the decoded pieces; ``tarfile.ReadError`` when the stream ends first."""
        self.seek(offset)
        while size:
            left = len(self._piece) - self._at
            if not left:
                if not self._next_piece():
                    raise tarfile.ReadError("unexpected end of data")
                continue
            step = min(left, size)
            yield memoryview(self._piece)[self._at:self._at + step]
            self._at += step
            self._pos += step
            size -= step

    def drain(self) -> None:
        """Read (and hash) the rest: what follows the tar's end counts in the diff id."""
        self._pos += len(self._piece) - self._at
        while self._next_piece():
            self._pos += len(self._piece)
        self._at = len(self._piece)


def split_path(name: str) -> list[str]:
    """Split an archive path into components; strip ``/`` and ``.``; reject ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Unsafe("path climbs out of the layer with '..'")
    if any("\x00" in p for p in parts):
        raise _Unsafe("path contains a NUL byte")
    return parts


def open_dir_in(root_fd: int, parts: Sequence[str], *, create: bool = False) -> int:
    """Open the directory ``parts`` below ``root_fd`` without following any symlink.

    Missing components are created (mode 0755) when ``create`` is true. Returns a new fd
    the caller closes. Raises ``_Unsafe`` when a component is a symlink or not a
    directory, FileNotFoundError when missing and ``create`` is false.
    """
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _Unsafe(f"component {comp!r} is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_at(dir_fd: int, name: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _proc_fd(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class _Extractor:
    """Applies the members of one tar stream to a destination directory."""

    def __init__(self, dest: str | Path, whiteout_format: WhiteoutFormat) -> None:
        if whiteout_format not in ("overlay", "vfs"):
            raise InvalidArgument(f"unknown whiteout format {whiteout_format!r}")
        self.format = whiteout_format
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.is_root = os.geteuid() == 0
        self.created: set[str] = set()
        # directories whose mtime (and, unprivileged, mode) is set once all is in
        self.dirs: list[tuple[list[str], int, int]] = []
        self.size = 0
        # the last parent directory opened: tars list a directory's entries together
        self._cached: tuple[tuple[str, ...], int] | None = None
        # where regular files' content is read from, when not through tarfile
        self.reader: _LayerReader | None = None

    def close(self) -> None:
        self._forget_parent()
        os.close(self.root_fd)

    def _open_parent(self, parent: list[str]) -> int:
        """An fd of the parent directory (the caller closes it), walked without symlinks."""
        key = tuple(parent)
        if self._cached is not None and self._cached[0] == key:
            return os.dup(self._cached[1])
        fd = open_dir_in(self.root_fd, parent, create=True)
        self._forget_parent()
        self._cached = (key, os.dup(fd))
        return fd

    def _forget_parent(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _remove(self, dir_fd: int, name: str, st: os.stat_result) -> None:
        # a removal may take the cached directory out of the tree: walk again next time
        self._forget_parent()
        _remove_at(dir_fd, name, st)

    # -- per member -----------------------------------------------------------------

    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = split_path(m.name)
        if not parts:
            return  # the root itself ("./"): keep the destination's own attributes
        parent, leaf = parts[:-1], parts[-1]
        pfd = self._open_parent(parent)
        try:
            if leaf.startswith(WHITEOUT_PREFIX):
                self._whiteout(pfd, parent, leaf)
            else:
                self._create(tf, m, pfd, parent, leaf)
                self.created.add("/".join(parts))
        finally:
            os.close(pfd)

    def _whiteout(self, pfd: int, parent: list[str], leaf: str) -> None:
        if leaf == WHITEOUT_OPAQUE:
            if self.format == "overlay":
                os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
            else:
                prefix = "/".join(parent)
                for child in os.listdir(pfd):
                    path = f"{prefix}/{child}" if prefix else child
                    st = _lstat_at(pfd, child)
                    if path not in self.created and st is not None:
                        self._remove(pfd, child, st)
            return
        if leaf.startswith(WHITEOUT_META_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk and friends): nothing to apply
        target = leaf[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise _Unsafe("whiteout names no file")
        st = _lstat_at(pfd, target)
        path = "/".join([*parent, target])
        if self.format == "overlay":
            if st is not None:
                self._remove(pfd, target, st)
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
        elif st is not None and path not in self.created:
            self._remove(pfd, target, st)

    def _create(
        self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, parent: list[str], leaf: str
    ) -> None:
        existing = _lstat_at(pfd, leaf)
        if existing is not None and not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
            self._remove(pfd, leaf, existing)
            existing = None

        if m.isreg():
            fd = os.open(
                leaf,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=pfd,
            )
            try:
                if self.reader is not None and not m.issparse():
                    for piece in self.reader.pieces(m.offset_data, m.size):
                        while piece:
                            piece = piece[os.write(fd, piece):]
                else:
                    src = tf.extractfile(m)
                    assert src is not None
                    with os.fdopen(os.dup(fd), "wb", buffering=0) as out:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                self.size += m.size
                self._set_meta(fd, m)
                os.utime(fd, ns=(_mtime_ns(m), _mtime_ns(m)))
            finally:
                os.close(fd)
        elif m.isdir():
            if existing is None:
                os.mkdir(leaf, 0o700, dir_fd=pfd)
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._set_meta(fd, m)
                if not self.is_root:
                    # keep the directory writable for us until every entry is in
                    os.fchmod(fd, (m.mode & 0o7777) | 0o700)
            finally:
                os.close(fd)
            self.dirs.append(([*parent, leaf], _mtime_ns(m), m.mode & 0o7777))
        elif m.issym():
            os.symlink(m.linkname, leaf, dir_fd=pfd)
            if self.is_root:
                os.chown(leaf, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            os.utime(leaf, ns=(_mtime_ns(m), _mtime_ns(m)), dir_fd=pfd, follow_symlinks=False)
        elif m.islnk():
            self._hardlink(m, pfd, leaf)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._special(m, pfd, leaf)
        else:
            raise _Unsafe(f"unsupported tar entry type {m.type!r}")

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, leaf: str) -> None:
        target = split_path(m.linkname)
        if not target:
            raise _Unsafe("hard link to the layer root")
        try:
            tfd = open_dir_in(self.root_fd, target[:-1])
        except FileNotFoundError:
            raise _Unsafe(f"hard link target {m.linkname!r} does not exist in the layer") from None
        try:
            st = _lstat_at(tfd, target[-1])
            if st is None:
                raise _Unsafe(f"hard link target {m.linkname!r} does not exist in the layer")
            if stat.S_ISDIR(st.st_mode):
                raise _Unsafe(f"hard link target {m.linkname!r} is a directory")
            os.link(target[-1], leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _special(self, m: tarfile.TarInfo, pfd: int, leaf: str) -> None:
        kind = stat.S_IFIFO
        if m.ischr():
            kind = stat.S_IFCHR
        elif m.isblk():
            kind = stat.S_IFBLK
        try:
            os.mknod(leaf, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
        except PermissionError:
            if not self.is_root and kind != stat.S_IFIFO:
                return  # unprivileged: device nodes are skipped, as rootless Docker does
            raise
        fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            path = _proc_fd(fd)  # the magic link names exactly this inode
            if self.is_root:
                os.chown(path, m.uid, m.gid)
            os.chmod(path, m.mode & 0o7777)
            self._set_xattrs(path, m)
            os.utime(path, ns=(_mtime_ns(m), _mtime_ns(m)))
        finally:
            os.close(fd)

    def _set_meta(self, fd: int, m: tarfile.TarInfo) -> None:
        # chown first: it clears set-id bits that chmod then restores.
        if self.is_root:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)
        self._set_xattrs(fd, m)

    def _set_xattrs(self, target: int | str, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if name.startswith(_RESERVED_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(target, name, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP) and not self.is_root:
                    continue
                raise

    def finish(self) -> None:
        """Restore directory mtimes (creating children changed them) and modes."""
        for parts, mtime, mode in reversed(self.dirs):
            try:
                fd = open_dir_in(self.root_fd, parts)
            except (FileNotFoundError, _Unsafe):
                continue
            try:
                if not self.is_root:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def _mtime_ns(m: tarfile.TarInfo) -> int:
    return int(float(m.mtime) * 1_000_000_000)


def extract_layer(
    src: Source, dest_dir: str | Path, *, whiteout_format: WhiteoutFormat = "overlay"
) -> ExtractStats:
    """Extract a (possibly compressed) layer tar into ``dest_dir``; return its diff id.

    Raises InvalidArgument naming the entry when the tar is hostile or broken. On error
    the destination may hold part of the layer: the caller deletes it. Nothing is ever
    written outside ``dest_dir``.
    """
    ex = _Extractor(dest_dir, whiteout_format)
    try:
        with decompressed(src) as raw:
            reader = ex.reader = _LayerReader(raw)
            try:
                tf = tarfile.open(fileobj=reader, mode="r:")  # type: ignore[call-overload]
            except tarfile.TarError as exc:
                raise InvalidArgument(f"invalid layer tar: {exc}") from exc
            while True:
                try:
                    m = tf.next()
                except tarfile.TarError as exc:
                    raise InvalidArgument(f"invalid layer tar: {exc}") from exc
                if m is None:
                    break
                try:
                    ex.apply(tf, m)
                except _Unsafe as exc:
                    raise InvalidArgument(f"refusing tar entry {m.name!r}: {exc}") from None
                except (OSError, tarfile.TarError) as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)
                    raise InvalidArgument(f"cannot extract tar entry {m.name!r}: {reason}") from exc
            reader.drain()
        ex.finish()
        return ExtractStats("sha256:" + reader.hash.hexdigest(), ex.size)
    finally:
        ex.close()


# -- writing tars -------------------------------------------------------------------


class _TreeWriter:
    """Writes directory entries into a PAX tar, deterministically (sorted names)."""

    def __init__(self, fileobj: BinaryIO, *, whiteouts: bool) -> None:
        self.tf = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self.whiteouts = whiteouts
        self.inodes: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        self.tf.close()

    def _header(self, arc: str, st: os.stat_result, xattr_src: str | int | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(arc)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime)
        if xattr_src is not None:
            pax: dict[str, str] = {}
            try:
                names = sorted(os.listxattr(xattr_src, follow_symlinks=isinstance(xattr_src, int)))
            except OSError:
                names = []
            for name in names:
                if name.startswith(_RESERVED_XATTR_PREFIXES) or name in _SKIPPED_XATTRS:
                    continue
                try:
                    value = os.getxattr(xattr_src, name, follow_symlinks=isinstance(xattr_src, int))
                except OSError:
                    continue
                pax["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
            ti.pax_headers = pax
        return ti

    def _whiteout_entry(self, arc: str, st: os.stat_result) -> None:
        ti = self._header(arc, st, None)
        ti.type = tarfile.REGTYPE
        ti.size = 0
        self.tf.addfile(ti)

    def add(self, dfd: int, name: str, arc: str, st: os.stat_result) -> int | None:
        """Add one entry; for a directory return an fd of it (the caller closes it)."""
        mode = st.st_mode
        parent_arc, _, _ = arc.rpartition("/")
        if self.whiteouts and stat.S_ISCHR(mode) and st.st_rdev == 0:
            wh = (parent_arc + "/" if parent_arc else "") + WHITEOUT_PREFIX + name
            self._whiteout_entry(wh, st)
            return None
        if stat.S_ISDIR(mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            try:
                ti = self._header(arc + "/", st, fd)
                ti.type = tarfile.DIRTYPE
                self.tf.addfile(ti)
                if self.whiteouts:
                    try:
                        opaque = os.getxattr(fd, OVERLAY_OPAQUE_XATTR)
                    except OSError:
                        opaque = b""
                    if opaque == b"y":
                        self._whiteout_entry(arc + "/" + WHITEOUT_OPAQUE, st)
            except BaseException:
                os.close(fd)
                raise
            return fd
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes:
                ti = self._header(arc, st, None)
                ti.type = tarfile.LNKTYPE
                ti.linkname = self.inodes[key]
                self.tf.addfile(ti)
                return None
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                fst = os.fstat(f.fileno())
                ti = self._header(arc, fst, f.fileno())
                ti.size = fst.st_size
                self.tf.addfile(ti, f)
            if st.st_nlink > 1:
                self.inodes[key] = arc
            return None
        xattr_path = f"{_proc_fd(dfd)}/{name}"
        if stat.S_ISLNK(mode):
            ti = self._header(arc, st, xattr_path)
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(name, dir_fd=dfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti = self._header(arc, st, xattr_path)
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti = self._header(arc, st, xattr_path)
            ti.type = tarfile.FIFOTYPE
        else:
            return None  # sockets are not archived
        self.tf.addfile(ti)
        return None

    def add_tree(self, dfd: int, prefix: str = "") -> None:
        for name in sorted(os.listdir(dfd)):
            st = _lstat_at(dfd, name)
            if st is None:
                continue
            sub = self.add(dfd, name, prefix + name, st)
            if sub is not None:
                try:
                    self.add_tree(sub, prefix + name + "/")
                finally:
                    os.close(sub)


def tar_dir(src_dir: str | Path, fileobj: BinaryIO) -> None:
    """Write the tree ``src_dir`` as an uncompressed PAX tar (no whiteout conversion)."""
    _write_tree(src_dir, fileobj, whiteouts=False)


def write_diff_tar(upper_dir: str | Path, fileobj: BinaryIO) -> None:
    """Write an overlay upper dir as an OCI layer tar (overlay whiteouts become ``.wh.``)."""
    _write_tree(upper_dir, fileobj, whiteouts=True)


def _write_tree(src_dir: str | Path, fileobj: BinaryIO, *, whiteouts: bool) -> None:
    writer = _TreeWriter(fileobj, whiteouts=whiteouts)
    root = os.open(src_dir, _DIR_FLAGS)
    try:
        writer.add_tree(root)
    finally:
        os.close(root)
    writer.close()


def write_changes_tar(
    root_dir: str | Path, changes: Iterable[tuple[str, int]], fileobj: BinaryIO
) -> None:
    """Write the entries named by a change list as a layer tar (deletions as whiteouts).

    Used by the copying (vfs) driver, which has no upper dir to archive.
    """
    writer = _TreeWriter(fileobj, whiteouts=False)
    root = os.open(root_dir, _DIR_FLAGS)
    try:
        for path, kind in changes:
            parts = split_path(path)
            if not parts:
                continue
            if kind == CHANGE_DELETED:
                arc = "/".join([*parts[:-1], WHITEOUT_PREFIX + parts[-1]])
                ti = tarfile.TarInfo(arc)
                ti.mtime = 0
                writer.tf.addfile(ti)
                continue
            dfd = open_dir_in(root, parts[:-1])
            try:
                st = _lstat_at(dfd, parts[-1])
                if st is not None:
                    sub = writer.add(dfd, parts[-1], "/".join(parts), st)
                    if sub is not None:
                        os.close(sub)
            finally:
                os.close(dfd)
    finally:
        os.close(root)
    writer.close()


# -- change lists -------------------------------------------------------------------


def _lstat_in(root: str | Path, parts: Sequence[str]) -> os.stat_result | None:
    """lstat ``parts`` below ``root`` without following symlinks on the way."""
    try:
        rfd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return None
    try:
        dfd = open_dir_in(rfd, parts[:-1])
    except (FileNotFoundError, _Unsafe):
        return None
    finally:
        os.close(rfd)
    try:
        return _lstat_at(dfd, parts[-1])
    finally:
        os.close(dfd)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def lower_lstat(lower_dirs: Sequence[str | Path], parts: Sequence[str]) -> os.stat_result | None:
    """lstat a path as the union of ``lower_dirs`` (top-most first) shows it.

    None when no layer has it or the top-most one that has it whites it out.
    """
    for lower in lower_dirs:
        st = _lstat_in(lower, parts)
        if st is not None:
            return None if _is_whiteout(st) else st
    return None


def _in_lowers(lower_dirs: Sequence[str | Path], parts: Sequence[str]) -> bool:
    return lower_lstat(lower_dirs, parts) is not None


def changes(upper_dir: str | Path, lower_dirs: Sequence[str | Path] = ()) -> list[tuple[str, int]]:
    """Docker's ContainerChanges for an overlay upper dir over ``lower_dirs`` (top first).

    Returns ``(path, kind)`` pairs, paths absolute inside the container, kinds
    :data:`CHANGE_MODIFIED`, :data:`CHANGE_ADDED` or :data:`CHANGE_DELETED`.
    """
    out: list[tuple[str, int]] = []

    def walk(dfd: int, parts: list[str]) -> None:
        for name in sorted(os.listdir(dfd)):
            st = _lstat_at(dfd, name)
            if st is None:
                continue
            here = [*parts, name]
            path = "/" + "/".join(here)
            if _is_whiteout(st):
                out.append((path, CHANGE_DELETED))
                continue
            out.append((path, CHANGE_MODIFIED if _in_lowers(lower_dirs, here) else CHANGE_ADDED))
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    walk(sub, here)
                finally:
                    os.close(sub)

    root = os.open(upper_dir, _DIR_FLAGS)
    try:
        walk(root, [])
    finally:
        os.close(root)
    return out


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return False
    same_meta = (a.st_mode, a.st_uid, a.st_gid, a.st_rdev) == (
        b.st_mode,
        b.st_uid,
        b.st_gid,
        b.st_rdev,
    )
    if stat.S_ISDIR(a.st_mode):
        return same_meta and a.st_mtime_ns == b.st_mtime_ns
    return same_meta and a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def naive_changes(old_root: str | Path | None, new_root: str | Path) -> list[tuple[str, int]]:
    """Compare two full trees (the copying driver's way of finding changes)."""
    out: list[tuple[str, int]] = []

    def walk_new(dfd: int, parts: list[str]) -> None:
        for name in sorted(os.listdir(dfd)):
            st = _lstat_at(dfd, name)
            if st is None:
                continue
            here = [*parts, name]
            old = _lstat_in(old_root, here) if old_root is not None else None
            if old is None:
                out.append(("/" + "/".join(here), CHANGE_ADDED))
            elif not _same(old, st) or (
                stat.S_ISLNK(st.st_mode)
                and os.readlink(name, dir_fd=dfd) != os.readlink(Path(old_root, *here))  # type: ignore[arg-type]
            ):
                out.append(("/" + "/".join(here), CHANGE_MODIFIED))
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    walk_new(sub, here)
                finally:
                    os.close(sub)

    def walk_old(dfd: int, parts: list[str]) -> None:
        for name in sorted(os.listdir(dfd)):
            here = [*parts, name]
            if _lstat_in(new_root, here) is None:
                out.append(("/" + "/".join(here), CHANGE_DELETED))
                continue
            st = _lstat_at(dfd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    walk_old(sub, here)
                finally:
                    os.close(sub)

    root = os.open(new_root, _DIR_FLAGS)
    try:
        walk_new(root, [])
    finally:
        os.close(root)
    if old_root is not None:
        root = os.open(old_root, _DIR_FLAGS)
        try:
            walk_old(root, [])
        finally:
            os.close(root)
    out.sort(key=lambda c: c[0])
    return out
