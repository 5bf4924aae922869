"""The ``local`` volume driver's options: ``type``, ``device`` and ``o``, as in Docker.

``docker volume create -d local -o type=tmpfs -o device=tmpfs -o o=size=16m v`` makes a
volume whose ``_data`` directory gets a filesystem mounted on it while containers use
it. The options mean what they mean to ``mount(8)``: ``type`` is the filesystem type
(``none`` with ``o=bind`` for a host directory), ``device`` what is mounted, ``o`` the
comma-separated mount options. Of ``o``, the words that are mount flags (``ro``,
``nosuid``, ``bind``, ``rprivate``...) become flags of mount(2) and the rest is handed
to the filesystem as its data (``size=16m``, ``addr=10.0.0.2``...).

Checked at ``create`` (:func:`parse_options`): no key but ``type``, ``device``, ``o``
and ``size`` (Docker's quota option, which needs a quota-capable backing filesystem
this driver does not have); ``type`` and ``device`` go together and ``o`` needs both; a
CIFS device URL has no port; for ``tmpfs`` the ``size``, ``nr_inodes``, ``mode``,
``uid`` and ``gid`` values are well formed; a bind's device is an existing directory.

At mount time (:func:`mount_volume`), an ``addr=`` that is not an IPv4 address is
resolved for ``nfs`` and ``cifs`` (the kernel's clients want an address), and a CIFS
device's host likewise, as Docker does. A failed mount leaves nothing mounted and its
error names the mount, with any ``password=`` masked.

The functions that mount block: the driver runs them in an executor.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from engine.sdk.errors import DriverError, InvalidArgument
from engine.sdk.mounts import is_mount_point

#: the keys ``docker volume create -o`` accepts for the local driver
VALID_KEYS = ("type", "device", "o", "size")
#: key -> the keys it cannot go without
_REQUIRES = {"type": ("device",), "device": ("type",), "o": ("device", "type")}

# mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_SYNCHRONOUS, MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC = 0x10, 0x20, 0x40, 0x80
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 0x400, 0x800, 0x1000, 0x4000
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 0x20000, 0x40000, 0x80000, 0x100000
MS_RELATIME, MS_STRICTATIME = 0x200000, 0x1000000
MNT_DETACH = 0x2
_PROPAGATION = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED

# The words of ``o`` that are flags, as Docker's mount package reads them: a word
# sets its flag, or clears it when the value is negative (``rw`` clears MS_RDONLY).
_FLAG_WORDS: dict[str, int] = {
    "defaults": 0, "ro": MS_RDONLY, "rw": -MS_RDONLY,
    "nosuid": MS_NOSUID, "suid": -MS_NOSUID, "nodev": MS_NODEV, "dev": -MS_NODEV,
    "noexec": MS_NOEXEC, "exec": -MS_NOEXEC, "sync": MS_SYNCHRONOUS, "async": -MS_SYNCHRONOUS,
    "dirsync": MS_DIRSYNC, "remount": MS_REMOUNT, "mand": MS_MANDLOCK, "nomand": -MS_MANDLOCK,
    "noatime": MS_NOATIME, "atime": -MS_NOATIME,
    "nodiratime": MS_NODIRATIME, "diratime": -MS_NODIRATIME,
    "relatime": MS_RELATIME, "norelatime": -MS_RELATIME,
    "strictatime": MS_STRICTATIME, "nostrictatime": -MS_STRICTATIME,
    "bind": MS_BIND, "rbind": MS_BIND | MS_REC,
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}

_TMPFS_VALUES = {
    "size": re.compile(r"^\d+[kKmMgGtTpPeE%]?$"),
    "nr_blocks": re.compile(r"^\d+[kKmMgGtTpPeE%]?$"),
    "nr_inodes": re.compile(r"^\d+[kKmMgGtTpPeE%]?$"),
    "mode": re.compile(r"^[0-7]{1,4}$"),
    "uid": re.compile(r"^\d+$"),
    "gid": re.compile(r"^\d+$"),
}
# go-units' RAMInBytes: "16m", "1.5GiB", "512 kb"
_RAM_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RAM_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

Resolver = Callable[[str], str]


@dataclass(frozen=True)
class MountOptions:
    """What ``o`` means to mount(2): flags to set, propagation, filesystem data."""

    flags: int = 0
    propagation: int = 0
    data: str = ""

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & MS_BIND)


@dataclass(frozen=True)
class LocalMount:
    """A local volume's filesystem: mounted on ``_data`` while the volume is in use."""

    fstype: str
    device: str
    options: str = ""

    @property
    def parsed(self) -> MountOptions:
        return split_mount_options(self.options)


def split_mount_options(o: str) -> MountOptions:
    """Split ``o`` into mount(2) flags, a propagation change and the filesystem's data
    (the words that are not flags, in their order)."""
    flags = propagation = 0
    data: list[str] = []
    for word in (w.strip() for w in o.split(",")):
        if not word:
            continue
        value = _FLAG_WORDS.get(word)
        if value is None:
            data.append(word)
        elif value < 0:
            flags &= ~(-value)
        elif value & _PROPAGATION:
            propagation |= value
        else:
            flags |= value
    return MountOptions(flags=flags, propagation=propagation, data=",".join(data))


def ram_in_bytes(value: str) -> int:
    """Docker's size syntax (``16m``, ``1.5GiB``): bytes, or InvalidArgument."""
    m = _RAM_SIZE.match(value.strip())
    if not m:
        raise InvalidArgument(f"invalid size: '{value}'")
    return int(float(m.group(1)) * _RAM_UNITS[(m.group(2) or "").lower()])


def _option_value(o: str, key: str) -> str:
    """The value of the first ``key=value`` word of ``o``, or ""."""
    for word in o.split(","):
        k, eq, v = word.strip().partition("=")
        if eq and k == key:
            return v
    return ""


def parse_options(options: dict[str, str]) -> LocalMount | None:
    """Check a local volume's options; the mount they describe, or None for a plain
    directory. Raises :class:`InvalidArgument` naming what is wrong."""
    if not options:
        return None
    for key in options:
        if key not in VALID_KEYS:
            raise InvalidArgument(f"invalid option: \"{key}\" (the local driver accepts "
                                  f"{', '.join(VALID_KEYS[:3])})")
    for key, needed in _REQUIRES.items():
        if key in options:
            for other in needed:
                if other not in options:
                    raise InvalidArgument(f"missing required option: \"{other}\"")
    if "size" in options and ram_in_bytes(options["size"]) > 0:
        raise InvalidArgument("quota size requested but no quota support")
    fstype, device, o = options.get("type", ""), options.get("device", ""), options.get("o", "")
    if not fstype and not device:
        return None
    if not fstype or not device:
        raise InvalidArgument("the local driver's type and device options must not be empty")
    mount = LocalMount(fstype=fstype, device=device, options=o)
    _check(mount)
    return mount


def _check(mount: LocalMount) -> None:
    parsed = mount.parsed
    if mount.fstype == "cifs":
        try:
            port = urlsplit(mount.device).port
        except ValueError as e:
            raise InvalidArgument(f"error parsing mount device url: {e}") from None
        if port is not None:
            raise InvalidArgument("port not allowed in CIFS device URL, include 'port' in 'o='")
    if mount.fstype == "tmpfs":
        for word in parsed.data.split(","):
            key, eq, value = word.partition("=")
            rule = _TMPFS_VALUES.get(key)
            if rule is not None and (not eq or not rule.match(value)):
                raise InvalidArgument(f"invalid tmpfs option {word!r} in o={mount.options!r}")
    if parsed.is_bind:
        if not os.path.isabs(mount.device):
            raise InvalidArgument(f"bind device must be an absolute host path: {mount.device!r}")
        if not os.path.isdir(mount.device):
            raise InvalidArgument(f"bind device {mount.device} is not an existing directory")


# ---------------------------------------------------------------- addresses


def resolve_host(host: str) -> str:
    """An address for ``host``, IPv4 first unless ``host`` looks like IPv6 (as Go's
    ``net.ResolveIPAddr("ip", host)`` picks it)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    want6 = ":" in host
    for family, _, _, _, addr in infos:
        if (family == socket.AF_INET6) == want6:
            return str(addr[0])
    if infos:
        return str(infos[0][4][0])
    raise OSError(f"no address for {host}")


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return False


def resolved(mount: LocalMount, resolve: Resolver = resolve_host) -> LocalMount:
    """``mount`` with names turned into addresses where the kernel needs them: the
    ``addr=`` of ``nfs`` and ``cifs`` options, and the host of a CIFS device URL."""
    if mount.fstype not in ("nfs", "cifs"):
        return mount
    try:
        addr = _option_value(mount.options, "addr")
        if addr and not _is_ipv4(addr):
            ip = resolve(addr)
            words = [f"addr={ip}" if w.strip() == f"addr={addr}" else w
                     for w in mount.options.split(",")]
            return LocalMount(mount.fstype, mount.device, ",".join(words))
        if mount.fstype == "cifs":
            host = urlsplit(mount.device).hostname or ""
            if host and not _is_ip(host):
                ip = resolve(host)
                device = mount.device.replace(f"//{host}", f"//{ip}", 1)
                return LocalMount(mount.fstype, device, mount.options)
    except OSError as e:
        raise DriverError(f"error resolving passed in network volume address: {e}") from None
    return mount


# ---------------------------------------------------------------- mount(2)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode() if source else None, os.fsencode(target),
                   fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        where = f"{source}:{target}" if source else target
        extra = (f", flags: {flags:#x}" if flags else "") + (f", data: {data}" if data else "")
        raise OSError(err, f"mount {where}{extra}: {os.strerror(err).lower()}")


def _sys_umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unmount {target}: {os.strerror(err).lower()}")


def is_mounted(path: str) -> bool:
    """Whether something is mounted on ``path`` (from this process's mountinfo)."""
    return is_mount_point(os.path.realpath(path))


def _mask(text: str, options: str) -> str:
    password = _option_value(options, "password")
    return text.replace(f"password={password}", "password=********") if password else text


def mount_volume(mount: LocalMount, target: str, resolve: Resolver = resolve_host) -> None:
    """Mount ``mount`` on ``target``: the filesystem, then its propagation, then a
    read-only remount for a read-only bind (a bind ignores MS_RDONLY on its first call).
    On any failure, whatever was mounted is unmounted again before raising."""
    real = resolved(mount, resolve)
    opts = real.parsed
    try:
        _sys_mount(real.device, target, real.fstype, opts.flags, opts.data)
    except OSError as e:
        raise DriverError(f"failed to mount local volume: {_mask(e.strerror or str(e), mount.options)}"
                          ) from None
    try:
        if opts.propagation:
            _sys_mount("", target, "", opts.propagation, "")
        if opts.is_bind and opts.flags & MS_RDONLY:
            _sys_mount("", target, "", opts.flags | MS_REMOUNT, "")
    except OSError as e:
        unmount_volume(target)
        raise DriverError(f"failed to mount local volume: {e.strerror or e}") from None


def unmount_volume(target: str) -> None:
    """Unmount ``target``; not mounted is fine. A busy filesystem is detached lazily
    (it goes once its last user lets go), so the volume's next mount starts afresh."""
    try:
        _sys_umount(target)
    except OSError as e:
        if e.errno == errno.EINVAL and not is_mounted(target):
            return
        if e.errno == errno.ENOENT:
            return
        if e.errno != errno.EBUSY:
            raise DriverError(f"failed to unmount local volume: {e.strerror or e}") from None
        try:
            _sys_umount(target, MNT_DETACH)
        except OSError as e2:
            raise DriverError(f"failed to unmount local volume: {e2.strerror or e2}") from None
