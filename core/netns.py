"""Network namespaces the daemon creates for containers (sandboxes).

A namespace is kept alive by bind-mounting it onto a file under the exec root, so that
it outlives the thread that made it and network drivers can enter it by path. Creation
happens in a worker thread: namespaces are per thread, so the thread unshares, pins the
new namespace, brings ``lo`` up and switches back, without touching the daemon's other
threads.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _link_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


def create(path: str) -> str:
    """Make a new network namespace pinned at ``path``, with ``lo`` up. Run it in a
    thread of its own (an executor): it changes the calling thread's namespace for a
    moment."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None),
                   f"bind-mount netns to {path}")
            _link_up("lo")
        finally:
            _check(_libc.setns(orig, CLONE_NEWNET), "setns back to the host namespace")
    except BaseException:
        _umount(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(orig)
    return path


def _umount(path: str) -> None:
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"umount {path}: {os.strerror(e)}")


def delete(path: str) -> None:
    """Unpin and remove; the namespace dies with its last user. Missing is fine."""
    _umount(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
