"""Layer snapshots and container read-write layers.

Two drivers share one on-disk layout under ``root``::

    driver                 the driver this root was created with ("overlay" or "vfs")
    layers/<chain hex>/    diff/ (the snapshot), meta.json (a Layer record)
    l/<short id>           symlink to ../layers/<chain hex>/diff (keeps mount options short)
    containers/<id>/       diff/ (upper dir, or the rootfs with vfs), init/ (the init
                           layer: mount points the image lacks), work/, merged/, meta.json
    tmp/                   unpacking and deletion in progress

``overlay`` stores each layer's own files (with overlay whiteouts) and mounts containers
with overlayfs. ``vfs`` is the copying fallback for hosts without overlayfs: each layer
directory holds the full root filesystem of its chain and a container's rootfs is a copy
of its image's top layer, used in place without any mount.

Layers appear atomically: they are unpacked into ``tmp/`` and renamed into place, and
disappear atomically: renamed into ``tmp/`` before being deleted.
"""

from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import msgspec
from engine.sdk.errors import Conflict, EngineError, InvalidArgument, NotFound

from .fsutil import atomic_write, atomic_write_json, fsync_dir, parse_digest

if TYPE_CHECKING:  # pragma: no cover
    from .compression import Source

Driver = Literal["overlay", "vfs"]

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MNT_DETACH = 2
# One page holds the whole option string of mount(2).
_MOUNT_DATA_MAX = os.sysconf("SC_PAGESIZE") - 1


class Layer(msgspec.Struct, frozen=True):
    """One unpacked layer: its chain id names it, ``size`` is the bytes of its files."""

    chain_id: str
    diff_id: str
    parent: str | None
    size: int
    link: str = ""


class Unpacked:
    """A layer unpacked into the store's scratch space, not yet a layer: see
    :meth:`LayerStore.unpack` and :meth:`LayerStore.commit`. :meth:`discard` drops it
    (a daemon restart drops any left over)."""

    def __init__(self, work: Path, diff_id: str, size: int) -> None:
        self.work = work
        self.diff_id = diff_id
        self.size = size

    def discard(self) -> None:
        """Delete what is left of it (nothing once committed)."""
        shutil.rmtree(self.work, ignore_errors=True)


class _RwMeta(msgspec.Struct):
    container_id: str
    parent: str | None
    #: paths the init layer added (relative, no leading slash)
    init: list[str] = msgspec.field(default_factory=list)


#: Docker's init layer: the mount points every container gets (``dir``, ``file`` or
#: ``symlink:<target>``). Entries are only added where the image has nothing, so no
#: file of the image is ever hidden by an empty one.
INIT_ENTRIES: tuple[tuple[str, str], ...] = (
    ("dev", "dir"),
    ("dev/pts", "dir"),
    ("dev/shm", "dir"),
    ("proc", "dir"),
    ("sys", "dir"),
    ("etc", "dir"),
    ("dev/console", "file"),
    ("etc/hosts", "file"),
    ("etc/hostname", "file"),
    ("etc/resolv.conf", "file"),
    (".dockerenv", "file"),
    ("etc/mtab", "symlink:/proc/mounts"),
)


def _copy_dir_attrs(path: Path, st: os.stat_result | None) -> None:
    if st is None:
        os.chmod(path, 0o755)
        return
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def build_init_layer(target: Path, lowers: list[Path]) -> list[str]:
    """Add the :data:`INIT_ENTRIES` the image (``lowers``, top first) lacks to ``target``.

    ``target`` is a fresh directory (overlay: the init layer) or the rootfs copy itself
    (vfs: then ``lowers`` is ``[target]``). Directories created on the way take the
    image's attributes; the mtimes of existing directories are kept. Returns the paths
    added.
    """
    from . import archive
    added: list[str] = []
    touched: dict[str, os.stat_result | None] = {}
    for path, kind in INIT_ENTRIES:
        parts = path.split("/")
        parents = [parts[:i] for i in range(1, len(parts))]
        parent_stats = [archive.lower_lstat(lowers, p) for p in parents]
        if any(st is not None and not stat.S_ISDIR(st.st_mode) for st in parent_stats):
            continue  # the image has a file or symlink where a directory would go
        if archive.lower_lstat(lowers, parts) is not None:
            continue
        for prefix, st in zip(parents, parent_stats, strict=True):
            rel = "/".join(prefix)
            touched.setdefault(rel, st)
            d = target.joinpath(*prefix)
            if not d.exists():
                d.mkdir()
                _copy_dir_attrs(d, st)
                if st is None:
                    added.append(rel)
        full = target.joinpath(*parts)
        if kind == "dir":
            full.mkdir(mode=0o755)
        elif kind == "file":
            os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            os.chmod(full, 0o644)
        else:
            os.symlink(kind.removeprefix("symlink:"), full)
        added.append(path)
    for rel, st in touched.items():  # creating entries changed the parents' mtimes
        if st is not None:
            os.utime(target / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    return added


def chain_id(parent: str | None, diff_id: str) -> str:
    """The OCI chain id: the diff id for a base layer, else sha256(parent + " " + diff_id)."""
    parse_digest(diff_id)
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain id of each layer of a stack, bottom first."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(chain_id(chains[-1] if chains else None, diff_id))
    return chains


# -- mount(2) through libc ------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str, target: str, fstype: str, data: str) -> None:
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(0), data.encode()
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(target.encode(), _MNT_DETACH) == 0:
        return
    if err == errno.EINVAL:  # not a mount point (any more)
        return
    raise OSError(err, f"umount {target}: {os.strerror(err)}")


#: Mount options that keep every change of a container in its upper dir as plain files
#: and whiteouts (no redirects, no metadata-only copy-ups), so diffs are complete.
_PLAIN_UPPER_OPTIONS = "redirect_dir=off,metacopy=off"


def overlay_options(scratch: str | Path) -> str | None:
    """Try overlay mounts in a scratch directory.

    Returns the extra options to mount with (``_PLAIN_UPPER_OPTIONS`` when the kernel
    takes them, else ``""``), or None when overlayfs cannot be mounted here at all.
    """
    if os.geteuid() != 0:
        return None
    base = Path(tempfile.mkdtemp(prefix="overlay-check-", dir=scratch))
    try:
        for d in ("lower", "upper", "work", "merged"):
            (base / d).mkdir()
        dirs = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
        for extra in (_PLAIN_UPPER_OPTIONS, ""):
            try:
                _mount("overlay", str(base / "merged"), "overlay", f"{dirs},{extra}".rstrip(","))
            except OSError:
                continue
            _umount(str(base / "merged"))
            return extra
        return None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a root filesystem preserving owners, modes, links, devices and xattrs."""
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise EngineError(f"copying {src} failed: {proc.stderr.strip()}")


def _tree_size(path: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if os.path.isfile(os.path.join(dirpath, name)) and not os.path.islink(
                os.path.join(dirpath, name)
            ):
                total += st.st_size
    return total


class LayerStore:
    """Unpacked layers keyed by chain id, and the read-write layers of containers."""

    def __init__(self, root: str | Path, driver: str = "auto") -> None:
        self.root = Path(root).absolute()
        self._layers_dir = self.root / "layers"
        self._links_dir = self.root / "l"
        self._containers_dir = self.root / "containers"
        self._tmp = self.root / "tmp"
        for d in (self._layers_dir, self._links_dir, self._containers_dir, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        self.driver: Driver = self._choose_driver(driver)
        self._lock = threading.RLock()
        self._layers: dict[str, Layer] = {}
        for meta in self._layers_dir.glob("*/meta.json"):
            layer = msgspec.json.decode(meta.read_bytes(), type=Layer)
            self._layers[layer.chain_id] = layer

    def _choose_driver(self, wanted: str) -> Driver:
        """Pick the driver (the one recorded in the root wins) and probe overlay options."""
        marker = self.root / "driver"
        recorded = marker.read_text().strip() if marker.exists() else None
        if wanted not in ("auto", "overlay", "vfs"):
            raise InvalidArgument(f"unknown storage driver {wanted!r}")
        if recorded is not None and wanted != "auto" and wanted != recorded:
            raise InvalidArgument(
                f"storage at {self.root} was created with driver {recorded!r}, not {wanted!r}"
            )
        choice = recorded or wanted
        options = self._overlay_options() if choice in ("auto", "overlay") else None
        self._overlay_extra = options or ""
        if recorded is not None:
            return recorded  # type: ignore[return-value]
        if wanted == "overlay" and options is None:
            raise InvalidArgument("the overlay driver needs root and a kernel with overlayfs")
        chosen: Driver = "overlay" if options is not None else "vfs"
        atomic_write(marker, chosen.encode() + b"\n")
        return chosen

    def _overlay_options(self) -> str | None:
        """:func:`overlay_options`, probed once per kernel: the answer is kept in the
        root beside the kernel release that gave it (the probe's unmount waits for an
        RCU grace period, tens of milliseconds of every daemon start otherwise)."""
        if os.geteuid() != 0:
            return None
        cache = self.root / "overlay-probe.json"
        kernel = os.uname().release
        try:
            known = msgspec.json.decode(cache.read_bytes())
            if known.get("kernel") == kernel:
                return known.get("options")
        except (OSError, msgspec.DecodeError, AttributeError):
            pass
        options = overlay_options(self._tmp)
        try:
            atomic_write(cache, msgspec.json.encode({"kernel": kernel, "options": options}))
        except OSError:
            pass
        return options

    # -- layers ------------------------------------------------------------------------

    def _layer_dir(self, chain: str) -> Path:
        return self._layers_dir / parse_digest(chain)

    def diff_path(self, chain: str) -> Path:
        """The directory holding a layer's files (its full rootfs with the vfs driver)."""
        self.get(chain)
        return self._layer_dir(chain) / "diff"

    def exists(self, chain: str) -> bool:
        with self._lock:
            return chain in self._layers

    def get(self, chain: str) -> Layer:
        with self._lock:
            try:
                return self._layers[chain]
            except KeyError:
                raise NotFound(f"layer {chain} not found") from None

    def list(self) -> builtins.list[Layer]:
        with self._lock:
            return list(self._layers.values())

    def ancestry(self, chain: str | None) -> builtins.list[Layer]:
        """The layer and its parents, top-most first."""
        out: builtins.list[Layer] = []
        while chain is not None:
            layer = self.get(chain)
            out.append(layer)
            chain = layer.parent
        return out

    def register(self, src: Source, parent: str | None, *, diff_id: str | None = None) -> Layer:
        """Unpack a layer blob on top of ``parent`` and return its Layer (reused if known).

        When ``diff_id`` is given and the layer exists the blob is not read at all;
        otherwise the unpacked diff id must equal it.
        """
        if parent is not None:
            self.get(parent)
        if diff_id is not None:
            known = self._layers.get(chain_id(parent, diff_id))
            if known is not None:
                return known
        return self.commit(self._unpack(src, parent, diff_id), parent)

    @property
    def unpacks_alone(self) -> bool:
        """Whether a layer can be unpacked without its parent (:meth:`unpack`): true
        with overlay, where a layer's directory holds its own files and whiteouts only;
        false with vfs, where it starts as a copy of its parent's."""
        return self.driver == "overlay"

    def unpack(self, src: Source, *, diff_id: str | None = None) -> Unpacked:
        """Unpack a layer blob into the store's scratch space, before its parent is known.

        Only where :attr:`unpacks_alone` holds. Nothing is visible until
        :meth:`commit` puts the result in place on top of its parent; the layers of an
        image can so be unpacked at the same time, in any order, and committed in order.
        The diff id is checked here as in :meth:`register`.
        """
        if not self.unpacks_alone:
            raise InvalidArgument(f"the {self.driver} driver unpacks a layer onto its parent")
        return self._unpack(src, None, diff_id)

    def _unpack(self, src: Source, parent: str | None, diff_id: str | None) -> Unpacked:
        from . import archive
        work = Path(tempfile.mkdtemp(prefix="layer-", dir=self._tmp))
        try:
            diff = work / "diff"
            diff.mkdir()
            if self.driver == "vfs" and parent is not None:
                _copy_tree(self._layer_dir(parent) / "diff", diff)
            stats = archive.extract_layer(src, diff, whiteout_format=self.driver)
            if diff_id is not None and stats.diff_id != diff_id:
                raise InvalidArgument(
                    f"layer content does not match its diff id: expected {diff_id},"
                    f" got {stats.diff_id}"
                )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return Unpacked(work, stats.diff_id, stats.size)

    def commit(self, unpacked: Unpacked, parent: str | None) -> Layer:
        """Make an unpacked layer visible on top of ``parent`` and return its Layer (the
        existing one when its chain id is known already). ``unpacked`` is used up,
        whatever happens."""
        try:
            if parent is not None:
                self.get(parent)
            chain = chain_id(parent, unpacked.diff_id)
            link = parse_digest(chain)[:16]
            layer = Layer(chain, unpacked.diff_id, parent, unpacked.size, link)
            work = unpacked.work
            with self._lock:
                if chain in self._layers:
                    return self._layers[chain]
                atomic_write_json(work / "meta.json", layer)
                final = self._layer_dir(chain)
                os.chmod(work, 0o700)
                os.rename(work, final)
                fsync_dir(self._layers_dir)
                linkpath = self._links_dir / link
                linkpath.unlink(missing_ok=True)
                os.symlink(f"../layers/{final.name}/diff", linkpath)
                self._layers[chain] = layer
                return layer
        finally:
            unpacked.discard()

    def _users(self, chain: str) -> builtins.list[str]:
        """Child layers and containers built directly on ``chain``."""
        users = [f"layer {c}" for c, layer in self._layers.items() if layer.parent == chain]
        for meta in self._containers_dir.glob("*/meta.json"):
            rw = msgspec.json.decode(meta.read_bytes(), type=_RwMeta)
            if rw.parent == chain:
                users.append(f"container {rw.container_id}")
        return users

    def delete(self, chain: str) -> None:
        """Delete one layer; Conflict while child layers or containers use it."""
        with self._lock:
            layer = self.get(chain)
            users = self._users(chain)
            if users:
                raise Conflict(f"layer {chain} is in use by {', '.join(users)}")
            doomed = Path(tempfile.mkdtemp(prefix="delete-", dir=self._tmp))
            os.rename(self._layer_dir(chain), doomed / "layer")
            (self._links_dir / layer.link).unlink(missing_ok=True)
            del self._layers[chain]
        shutil.rmtree(doomed, ignore_errors=True)

    def release(
        self, chain: str, keep: frozenset[str] | set[str] = frozenset()
    ) -> builtins.list[str]:
        """Delete ``chain`` and then its parents while nothing uses them.

        Layers in ``keep`` (still referenced by images) stop the walk. Returns the chain
        ids deleted, top-most first.
        """
        deleted: builtins.list[str] = []
        with self._lock:
            current: str | None = chain
            while current is not None and current not in keep and current in self._layers:
                if self._users(current):
                    break
                parent = self._layers[current].parent
                self.delete(current)
                deleted.append(current)
                current = parent
        return deleted

    def graph_driver(self, chain: str | None) -> dict:
        """Docker's GraphDriver block for an image whose top layer is ``chain``."""
        if chain is None:
            return {"Name": self._driver_name, "Data": None}
        dirs = [str(self._layer_dir(layer.chain_id) / "diff") for layer in self.ancestry(chain)]
        if self.driver == "vfs":
            return {"Name": "vfs", "Data": {"Dir": dirs[0]}}
        top = self._layer_dir(chain)
        data = {"MergedDir": str(top / "merged"), "UpperDir": dirs[0], "WorkDir": str(top / "work")}
        if len(dirs) > 1:
            data["LowerDir"] = ":".join(dirs[1:])
        return {"Name": self._driver_name, "Data": data}

    @property
    def _driver_name(self) -> str:
        return "overlay2" if self.driver == "overlay" else "vfs"

    # -- container read-write layers ---------------------------------------------------

    def _rw_dir(self, container_id: str) -> Path:
        if not _CONTAINER_ID.match(container_id):
            raise InvalidArgument(f"invalid container id {container_id!r}")
        return self._containers_dir / container_id

    def _rw_meta(self, container_id: str) -> _RwMeta:
        meta = self._rw_dir(container_id) / "meta.json"
        try:
            return msgspec.json.decode(meta.read_bytes(), type=_RwMeta)
        except FileNotFoundError:
            raise NotFound(f"no read-write layer for container {container_id}") from None

    def rw_path(self, container_id: str) -> Path:
        """The upper dir (overlay) or the rootfs copy (vfs) of a container."""
        return self._rw_dir(container_id) / "diff"

    def create_rw(self, container_id: str, top: str | None, *, init: bool = True) -> str:
        """Prepare a container's read-write layer on top of layer ``top`` (or nothing).

        With ``init`` an init layer like Docker's sits between the image and the
        container: the mount points (``/etc/hosts``, ``/dev/shm``, ``/.dockerenv``, ...)
        the image lacks, kept out of the container's changes and commits.
        """
        final = self._rw_dir(container_id)
        with self._lock:
            if top is not None:
                self.get(top)
            if final.exists():
                raise Conflict(f"read-write layer for container {container_id} already exists")
            work = Path(tempfile.mkdtemp(prefix="rw-", dir=self._tmp))
            try:
                for d in ("diff", "work", "merged", "init"):
                    (work / d).mkdir()
                os.chmod(work / "init", 0o755)
                added: list[str] = []
                image_dirs = [
                    self._layer_dir(layer.chain_id) / "diff" for layer in self.ancestry(top)
                ]
                if self.driver == "vfs":
                    if top is not None:
                        _copy_tree(self._layer_dir(top) / "diff", work / "diff")
                    if init:
                        added = build_init_layer(work / "diff", [work / "diff"])
                elif init:
                    added = build_init_layer(work / "init", image_dirs)
                atomic_write_json(work / "meta.json", _RwMeta(container_id, top, added))
                os.chmod(work, 0o700)
                os.rename(work, final)
                fsync_dir(self._containers_dir)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        return str(final / "diff")

    def lower_dirs(self, container_id: str) -> builtins.list[Path]:
        """The dirs below a container's upper dir, top-most first: init, then the image's."""
        meta = self._rw_meta(container_id)
        image = [self._layer_dir(layer.chain_id) / "diff" for layer in self.ancestry(meta.parent)]
        return [self._rw_dir(container_id) / "init", *image]

    def is_mounted(self, container_id: str) -> bool:
        return os.path.ismount(self._rw_dir(container_id) / "merged")

    def mount(self, container_id: str) -> str:
        """Mount a container's root filesystem and return its path (idempotent)."""
        with self._lock:
            meta = self._rw_meta(container_id)
            base = self._rw_dir(container_id)
            if self.driver == "vfs":
                return str(base / "diff")
            merged = base / "merged"
            if os.path.ismount(merged):
                return str(merged)
            links = [f"l/{layer.link}" for layer in self.ancestry(meta.parent)]
            lowers = [f"containers/{container_id}/init", *links]
            rest = f",upperdir={base / 'diff'},workdir={base / 'work'}"
            if self._overlay_extra:
                rest += "," + self._overlay_extra
            data = "lowerdir=" + ":".join(str(self.root / lower) for lower in lowers) + rest
            if len(data) <= _MOUNT_DATA_MAX:
                _mount("overlay", str(merged), "overlay", data)
            else:
                self._mount_relative(lowers, rest, merged)
            return str(merged)

    def _mount_relative(self, lowers: builtins.list[str], rest: str, merged: Path) -> None:
        """Mount with lower dirs relative to the store root, from a child process."""
        data = "lowerdir=" + ":".join(lowers) + rest
        if len(data) > _MOUNT_DATA_MAX:
            raise InvalidArgument(f"too many layers to mount ({len(lowers)})")
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", data, str(merged)],
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise EngineError(f"mounting overlay failed: {proc.stderr.strip()}")

    def unmount(self, container_id: str) -> None:
        """Unmount a container's root filesystem if it is mounted."""
        with self._lock:
            merged = self._rw_dir(container_id) / "merged"
            if self.driver == "overlay" and os.path.ismount(merged):
                _umount(str(merged))

    def remove_rw(self, container_id: str) -> None:
        """Unmount and delete a container's read-write layer."""
        with self._lock:
            self._rw_meta(container_id)
            self.unmount(container_id)
            doomed = Path(tempfile.mkdtemp(prefix="delete-", dir=self._tmp))
            os.rename(self._rw_dir(container_id), doomed / "rw")
        shutil.rmtree(doomed, ignore_errors=True)

    def _base_rootfs(self, container_id: str) -> Path | None:
        meta = self._rw_meta(container_id)
        return None if meta.parent is None else self._layer_dir(meta.parent) / "diff"

    def changes(self, container_id: str) -> builtins.list[tuple[str, int]]:
        """Docker's ContainerChanges: ``(path, kind)`` with 0 modified, 1 added, 2 deleted."""
        from . import archive
        if self.driver == "vfs":
            meta = self._rw_meta(container_id)
            init = {"/" + path for path in meta.init}
            found = archive.naive_changes(
                self._base_rootfs(container_id), self.rw_path(container_id)
            )
            return [(path, kind) for path, kind in found if path not in init or kind != 1]
        return archive.changes(self.rw_path(container_id), self.lower_dirs(container_id))

    def diff_tar(self, container_id: str, fileobj: BinaryIO) -> None:
        """Write the container's changes as an OCI layer tar (for commit)."""
        from . import archive
        if self.driver == "vfs":
            found = self.changes(container_id)
            archive.write_changes_tar(self.rw_path(container_id), found, fileobj)
        else:
            self._rw_meta(container_id)
            archive.write_diff_tar(self.rw_path(container_id), fileobj)

    def export(self, container_id: str, fileobj: BinaryIO) -> None:
        """Write the container's merged root filesystem as a tar (mounting it if needed)."""
        from . import archive
        was_mounted = self.driver == "vfs" or self.is_mounted(container_id)
        path = self.mount(container_id)
        try:
            archive.tar_dir(path, fileobj)
        finally:
            if not was_mounted:
                self.unmount(container_id)

    def size_rw(self, container_id: str) -> int:
        """Bytes of the files the container added or changed."""
        from . import archive
        if self.driver == "vfs":
            root = self.rw_path(container_id)
            total = 0
            for path, kind in self.changes(container_id):
                p = root / path.lstrip("/")
                if kind != archive.CHANGE_DELETED and p.is_file() and not p.is_symlink():
                    total += p.lstat().st_size
            return total
        self._rw_meta(container_id)
        return _tree_size(self.rw_path(container_id))
