"""Files in and out of a container: ``docker cp``, ``export``.

Paths are resolved inside the container's root with openat2(RESOLVE_IN_ROOT): a
symlink in the container that points at ``/`` or climbs with ``..`` stays inside it.
A running container is reached through ``/proc/<pid>/root`` so its volumes are seen
as the container sees them; a stopped one through its mounted snapshot.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_mod
import tempfile
import time
from typing import Callable

from engine.sdk.errors import InvalidArgument, NotFound

from ..runtime import rootfs
from ..runtime.rootfs import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2



def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH | os.O_CLOEXEC) -> int:
    """``path`` looked up as if ``root_fd`` were /: symlinks and ``..`` stay inside."""
    return openat2(root_fd, path, flags | os.O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


@contextlib.contextmanager
def container_root(cs, c):
    """An fd of the container's root for the duration of the block."""
    if c.state.running and c.state.pid:
        fd = os.open(f"/proc/{c.state.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    path = cs.layers.mount(c.id)
    mounted: list[str] = []
    try:
        mounted = _mount_volumes(path, c.mounts)
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        for target in reversed(mounted):
            try:
                rootfs.umount(target, _MNT_DETACH)
            except OSError:
                pass
        if not c.state.running:
            cs.layers.unmount(c.id)


_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC = 0x1, 0x20, 0x1000, 0x4000
_MNT_DETACH = 0x2


def _mount_volumes(root: str, mounts: list[dict]) -> list[str]:
    """Bind a stopped container's volumes and bind mounts at their places in its
    mounted rootfs, as Docker does for ``docker cp``; return the targets, innermost
    last. Mount points are made inside ``root`` without following its symlinks."""
    done: list[str] = []
    try:
        for mp in sorted(mounts, key=lambda m: len(m.get("Destination") or "")):
            source = mp.get("Source") or ""
            if mp.get("Type") not in ("volume", "bind") or not os.path.exists(source):
                continue  # tmpfs has no content while the container is stopped
            fd, target = rootfs.make_target(root, mp["Destination"],
                                            is_dir=os.path.isdir(source))
            try:
                rootfs.mount(source, f"/proc/self/fd/{fd}", None, _MS_BIND | _MS_REC)
                done.append(target)
                if not mp.get("RW", True):
                    rootfs.mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
            finally:
                os.close(fd)
    except BaseException:
        for target in reversed(done):
            try:
                rootfs.umount(target, _MNT_DETACH)
            except OSError:
                pass
        raise
    return done


def _split(path: str) -> tuple[str, str]:
    p = os.path.normpath("/" + path)
    return os.path.dirname(p), os.path.basename(p)


def _lookup(root_fd: int, path: str) -> tuple[int, str, os.stat_result]:
    """(fd of the parent dir, final name, lstat of the final entry)."""
    parent, name = _split(path)
    try:
        pfd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"Could not find the file {path} in container") from None
    except NotADirectoryError:
        raise InvalidArgument(f"{parent} is not a directory") from None
    try:
        st = os.stat(name or ".", dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        os.close(pfd)
        raise NotFound(f"Could not find the file {path} in container") from None
    return pfd, name, st


def _go_mode(st: os.stat_result) -> int:
    """Go's os.FileMode bits, which the docker CLI reads from the stat header."""
    m = st.st_mode & 0o777
    if stat_mod.S_ISDIR(st.st_mode):
        m |= 1 << 31
    elif stat_mod.S_ISLNK(st.st_mode):
        m |= 1 << 27
    elif stat_mod.S_ISFIFO(st.st_mode):
        m |= 1 << 25
    elif stat_mod.S_ISSOCK(st.st_mode):
        m |= 1 << 24
    elif stat_mod.S_ISCHR(st.st_mode):
        m |= (1 << 26) | (1 << 21)
    elif stat_mod.S_ISBLK(st.st_mode):
        m |= 1 << 26
    if st.st_mode & stat_mod.S_ISUID:
        m |= 1 << 23
    if st.st_mode & stat_mod.S_ISGID:
        m |= 1 << 22
    if st.st_mode & stat_mod.S_ISVTX:
        m |= 1 << 20
    return m


def stat_path(cs, c, path: str) -> dict:
    with container_root(cs, c) as root:
        pfd, name, st = _lookup(root, path)
        try:
            link = os.readlink(name, dir_fd=pfd) if stat_mod.S_ISLNK(st.st_mode) else ""
        finally:
            os.close(pfd)
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
    return {"name": name or "/", "size": st.st_size, "mode": _go_mode(st), "mtime": mtime,
            "linkTarget": link}


def tar_path(cs, c, path: str, out) -> None:
    import tarfile  # here: the daemon needs it only for ``cp``

    with container_root(cs, c) as root:
        pfd, name, st = _lookup(root, path)
        try:
            base = f"/proc/self/fd/{pfd}/{name}" if name else f"/proc/self/fd/{pfd}"
            arc = name or "."
            if path.endswith("/.") or path == "/":
                arc = "."
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                tf.add(base, arcname=arc, recursive=True)
        finally:
            os.close(pfd)


class _ThreadWriter:
    """A file object for a worker thread whose writes go to an aiohttp response."""

    def __init__(self, loop, resp) -> None:
        self.loop, self.resp = loop, resp
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= 1 << 16:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            asyncio.run_coroutine_threadsafe(self.resp.write(data), self.loop).result()


async def stream_from_thread(resp, fn: Callable) -> None:
    loop = asyncio.get_running_loop()
    w = _ThreadWriter(loop, resp)

    def run() -> None:
        fn(w)
        w.flush()

    await loop.run_in_executor(None, run)


async def extract_to(cs, c, path: str, content, no_overwrite_dir_non_dir: bool = False) -> None:
    """Unpack the tar in the request body into directory ``path`` of the container."""
    from ..store.archive import extract_layer

    with tempfile.TemporaryFile(dir=os.path.join(cs.root, "..")) as spool:
        while True:
            chunk = await content.read(1 << 20)
            if not chunk:
                break
            spool.write(chunk)
        spool.seek(0)

        def work() -> None:
            with container_root(cs, c) as root:
                try:
                    dfd = open_in_root(root, os.path.normpath("/" + path),
                                       os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise NotFound(f"Could not find the file {path} in container") from None
                except NotADirectoryError:
                    raise InvalidArgument(f"extraction point is not a directory: {path}") from None
                try:
                    # the layer extractor never follows a symlink it did not resolve,
                    # nor a final symlink in its destination: "/." keeps the magic
                    # /proc link out of the final component
                    extract_layer(spool, f"/proc/self/fd/{dfd}/.", whiteout_format="vfs")
                finally:
                    os.close(dfd)

        await cs.run(work)
