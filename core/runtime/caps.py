"""Linux capabilities: names, Docker's defaults, and the syscalls that set them.

The name tables follow ``include/uapi/linux/capability.h``. The set arithmetic
(:func:`adjust`) follows Docker's rules for ``--cap-add`` / ``--cap-drop``; the
syscall wrappers (:func:`drop_bounding`, :func:`capset`, :func:`raise_ambient`) are
used by :mod:`engine.core.runtime.linux` in the forked child just before ``execve``.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

#: Capability names in kernel order: ``CAP_NAMES[n]`` is capability number ``n``.
CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS: dict[str, int] = {name: i for i, name in enumerate(CAP_NAMES)}

#: The capabilities Docker grants a non-privileged container.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_SYS_CAPGET = {"x86_64": 125, "aarch64": 90}

_libc = ctypes.CDLL(None, use_errno=True)


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NAMES) - 1


def all_caps() -> list[str]:
    """Every capability the running kernel supports and this process may pass on
    (what ``--privileged`` grants).

    A capability missing from our own bounding set (a sandboxed host) cannot be given
    to a container: asking for it would make capset fail.
    """
    known = CAP_NAMES[: min(last_cap(), len(CAP_NAMES) - 1) + 1]
    bounding = _own_bounding()
    return [name for i, name in enumerate(known) if bounding is None or bounding >> i & 1]


def _own_bounding() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def normalize(name: str) -> str:
    """``"net_admin"`` -> ``"CAP_NET_ADMIN"``; ``"all"`` -> ``"ALL"``.

    Raises :class:`ValueError` for a name the kernel tables do not know.
    """
    upper = name.strip().upper()
    if upper in ("ALL", "CAP_ALL"):
        return "ALL"
    if not upper.startswith("CAP_"):
        upper = "CAP_" + upper
    if upper not in CAP_NUMBERS:
        raise ValueError(f'unknown capability: "{upper}"')
    return upper


def adjust(
    base: Iterable[str], add: Iterable[str] = (), drop: Iterable[str] = ()
) -> list[str]:
    """Apply Docker's ``--cap-add``/``--cap-drop`` rules to ``base``.

    ``ALL`` in ``add`` grants everything but the explicit drops; ``ALL`` in ``drop``
    starts from nothing and keeps only the explicit adds. The result is in kernel order.
    """
    adds = {normalize(n) for n in add}
    drops = {normalize(n) for n in drop}
    if "ALL" in adds:
        chosen = set(all_caps())
    elif "ALL" in drops:
        chosen = set()
    else:
        chosen = {normalize(n) for n in base}
    chosen -= drops - {"ALL"}
    chosen |= adds - {"ALL"}
    if "ALL" in adds:
        chosen -= drops - {"ALL"}
    return sorted(chosen, key=CAP_NUMBERS.__getitem__)


def to_mask(names: Iterable[str]) -> int:
    """A 64-bit capability mask from capability names (unknown names are skipped)."""
    mask = 0
    for name in names:
        number = CAP_NUMBERS.get(name)
        if number is not None:
            mask |= 1 << number
    return mask


def from_mask(mask: int) -> list[str]:
    """Capability names from a mask such as ``CapEff`` in ``/proc/PID/status``."""
    return [name for i, name in enumerate(CAP_NAMES) if mask >> i & 1]


# --- syscalls (used in the container's child process) --------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def drop_bounding(keep: Iterable[str]) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    keep_mask = to_mask(keep)
    for number in range(last_cap() + 1):
        if not keep_mask >> number & 1:
            _check(_libc.prctl(_PR_CAPBSET_DROP, number, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")


def set_keepcaps(on: bool) -> None:
    """Keep the permitted set across a setuid from 0 to non-zero (PR_SET_KEEPCAPS)."""
    _check(_libc.prctl(_PR_SET_KEEPCAPS, int(on), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def capset(effective: Iterable[str], permitted: Iterable[str], inheritable: Iterable[str]) -> None:
    """Set this thread's effective, permitted and inheritable sets (capset(2), v3)."""
    masks = (to_mask(effective), to_mask(permitted), to_mask(inheritable))
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in range(2):
        data[word].effective = masks[0] >> (32 * word) & 0xFFFFFFFF
        data[word].permitted = masks[1] >> (32 * word) & 0xFFFFFFFF
        data[word].inheritable = masks[2] >> (32 * word) & 0xFFFFFFFF
    nr = _SYS_CAPSET[os.uname().machine]
    _check(_libc.syscall(nr, ctypes.byref(header), data), "capset")


def capget(pid: int = 0) -> tuple[int, int, int]:
    """``(effective, permitted, inheritable)`` masks of ``pid`` (0: this thread)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    nr = _SYS_CAPGET[os.uname().machine]
    _check(_libc.syscall(nr, ctypes.byref(header), data), "capget")
    eff = data[0].effective | data[1].effective << 32
    prm = data[0].permitted | data[1].permitted << 32
    inh = data[0].inheritable | data[1].inheritable << 32
    return eff, prm, inh


def raise_ambient(names: Iterable[str]) -> None:
    """Clear the ambient set, then raise each of ``names`` (each must be permitted and
    inheritable already)."""
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
           "prctl(PR_CAP_AMBIENT)")
    for name in names:
        number = CAP_NUMBERS.get(name)
        if number is not None:
            _check(
                _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, number, 0, 0),
                f"prctl(PR_CAP_AMBIENT_RAISE, {name})",
            )
