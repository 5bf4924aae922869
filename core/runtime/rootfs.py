"""The container's root filesystem: safe path resolution, mounts, /dev, pivot_root.

Everything here works with direct syscalls through ctypes (no ``mount(8)``), so that
building a rootfs costs a few hundred microseconds. Paths inside a container's rootfs
are never joined as strings: :func:`secure_join` walks them component by component,
reading symlinks as if the rootfs were ``/``, and :func:`open_in_root` uses
``openat2(RESOLVE_IN_ROOT)`` where the kernel has it. Mount targets are then opened
``O_PATH`` and mounted on through ``/proc/self/fd/N``, so a symlink swapped in after
the check cannot redirect a mount outside the rootfs.

Functions that change mounts are meant for the container's child process, after it has
entered a private mount namespace (:mod:`engine.core.runtime.linux`).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct

from engine.sdk.mounts import mount_point_of

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# openat2(2)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_AT_FDCWD = -100

# pty ioctls (the generic encoding: x86_64 and aarch64 share it)
_TIOCGPTN = 0x80045430     # _IOR('T', 0x30, unsigned int): the pty's number
_TIOCSPTLCK = 0x40045431   # _IOW('T', 0x31, int): (un)lock the slave
_TIOCGPTPEER = 0x5441      # _IO('T', 0x41): open the slave from the master (4.13+)
_PTMX_DEV = (5, 2)

# Mount options that are flags: name -> (clear?, flag)
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "nosuid": (False, MS_NOSUID), "suid": (True, MS_NOSUID),
    "nodev": (False, MS_NODEV), "dev": (True, MS_NODEV),
    "noexec": (False, MS_NOEXEC), "exec": (True, MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS), "async": (True, MS_SYNCHRONOUS),
    "dirsync": (False, MS_DIRSYNC), "remount": (False, MS_REMOUNT),
    "mand": (False, MS_MANDLOCK), "nomand": (True, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME), "atime": (True, MS_NOATIME),
    "nodiratime": (False, MS_NODIRATIME), "diratime": (True, MS_NODIRATIME),
    "relatime": (False, MS_RELATIME), "norelatime": (True, MS_RELATIME),
    "strictatime": (False, MS_STRICTATIME), "nostrictatime": (True, MS_STRICTATIME),
    "nosymfollow": (False, MS_NOSYMFOLLOW),
    "bind": (False, MS_BIND), "rbind": (False, MS_BIND | MS_REC),
}
_PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}

#: Device nodes every container gets: name -> (major, minor).
DEFAULT_DEVICES: dict[str, tuple[int, int]] = {
    "null": (1, 3), "zero": (1, 5), "full": (1, 7),
    "random": (1, 8), "urandom": (1, 9), "tty": (5, 0),
}
_DEV_SYMLINKS = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"),
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _enc(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    """mount(2); raises :class:`OSError` naming the target on failure."""
    if _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}", target)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2); raises :class:`OSError` naming the target on failure."""
    if _libc.umount2(_enc(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """The pivot_root(2) syscall."""
    nr = _SYS_PIVOT_ROOT[os.uname().machine]
    if _libc.syscall(nr, _enc(new_root), _enc(put_old)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root {new_root}: {os.strerror(err)}", new_root)


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dirfd`` with ``RESOLVE_*`` rules."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, _enc(path), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2 {path}: {os.strerror(err)}", path)
    return fd


# --- resolution inside a root ----------------------------------------------------------


def secure_join(root: str, unsafe_path: str) -> str:
    """Join ``unsafe_path`` onto ``root`` the way the kernel would if ``root`` were ``/``.

    Each existing component is checked with lstat; symlinks are expanded with absolute
    targets restarting at ``root`` and ``..`` never climbing above it. Components that
    do not exist are taken literally. The result always lies inside ``root``.
    """
    root = os.path.abspath(root)
    pending = [c for c in unsafe_path.split("/") if c]
    resolved: list[str] = []
    links = 0
    while pending:
        comp = pending.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, comp)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(comp)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(comp)
            continue
        links += 1
        if links > 255:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {unsafe_path}", unsafe_path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending[:0] = [c for c in target.split("/") if c]
    return os.path.join(root, *resolved) if resolved else root


_openat2_missing = False


def open_in_root(root: str, path: str, flags: int = os.O_RDONLY) -> int:
    """Open ``path`` inside ``root`` with symlinks resolved inside the root.

    Uses ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``; on kernels without
    openat2, falls back to :func:`secure_join` plus ``O_NOFOLLOW`` on the last component.
    """
    fd = _openat2_below(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    if fd is not None:
        return fd
    return os.open(secure_join(root, path), flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _openat2_below(root: str, path: str, flags: int, resolve: int) -> int | None:
    """``openat2`` of ``path`` relative to ``root``; None on a kernel without openat2
    (remembered, so the callers' fallbacks are taken at once from then on)."""
    global _openat2_missing
    if _openat2_missing:
        return None
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return openat2(root_fd, path, flags, resolve)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        _openat2_missing = True
        return None
    finally:
        os.close(root_fd)


def read_in_root(root: str, path: str, limit: int = 16 << 20) -> bytes | None:
    """The contents of ``path`` inside ``root`` (at most ``limit`` bytes), or ``None``
    when it does not exist or is not a regular file."""
    try:
        fd = open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def make_target(root: str, dest: str, *, is_dir: bool = True) -> tuple[int, str]:
    """Create the mount point ``dest`` inside ``root`` (and its parents).

    Returns an ``O_PATH`` fd on it, opened with ``RESOLVE_NO_SYMLINKS`` below ``root``
    so that no symlink swapped in meanwhile is followed, and its resolved host path.
    """
    full = secure_join(root, dest)
    rel = os.path.relpath(full, root)
    parts = [] if rel == "." else rel.split("/")
    current = root
    for i, comp in enumerate(parts):
        current = os.path.join(current, comp)
        try:
            if is_dir or i < len(parts) - 1:
                os.mkdir(current, 0o755)
            else:
                _touch(current)
        except FileExistsError:
            pass
    fd = _openat2_below(root, rel, os.O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)
    if fd is not None:
        return fd, full
    return os.open(full, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC), full


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))


# --- mounts ---------------------------------------------------------------------------


def parse_options(options: list[str] | tuple[str, ...]) -> tuple[int, int, str]:
    """Split OCI mount options into ``(flags, propagation, data)``."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def mount_entry(root: str, entry: dict, *, cgroups_path: str | None = None) -> None:
    """Mount one OCI ``mounts[]`` entry inside ``root`` (an absolute host path).

    Errors name the entry: ``error mounting "SRC" to rootfs at "DEST": REASON``.
    """
    try:
        _mount_entry(root, entry, cgroups_path)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f'error mounting "{entry.get("source") or entry.get("type")}"'
                      f' to rootfs at "{entry["destination"]}": {reason}') from exc


def _mount_entry(root: str, entry: dict, cgroups_path: str | None) -> None:
    dest = entry["destination"]
    fstype = entry.get("type") or ""
    source = entry.get("source") or fstype
    flags, propagation, data = parse_options(entry.get("options") or ())
    is_bind = bool(flags & MS_BIND) or fstype == "bind"
    if is_bind:
        flags |= MS_BIND
        is_dir = os.path.isdir(source)
    else:
        is_dir = True
    fd, full = make_target(root, dest, is_dir=is_dir)
    try:
        # The first mount goes through the verified fd. Later steps (remounts, mounts
        # below it) must see the new mount, which a /proc/self/fd path does not: they
        # use the resolved path, checked again without following symlinks.
        target = f"/proc/self/fd/{fd}"
        if fstype == "cgroup" and not is_bind:
            _mount_cgroup(target, full, flags, cgroups_path)
        elif is_bind:
            mount(source, target, None, flags & (MS_BIND | MS_REC))
        else:
            mount(source, target, fstype, flags, data or None)
    finally:
        os.close(fd)
    # A bind mount ignores other flags: they take a remount.
    extra = flags & ~(MS_BIND | MS_REC | MS_REMOUNT)
    if is_bind and extra:
        _mount_on(full, None, MS_REMOUNT | MS_BIND | extra)
    if propagation:
        _mount_on(full, None, propagation)


def _mount_on(path: str, source: str | None, flags: int, data: str | None = None) -> None:
    """Mount onto the topmost mount at ``path``, refusing a symlink as last component."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mount(source, f"/proc/self/fd/{fd}", None, flags, data)
    finally:
        os.close(fd)


def _mount_cgroup(target: str, path: str, flags: int, cgroups_path: str | None) -> None:
    """Show the container its own cgroups at ``target`` (an fd path for ``path``).

    On cgroup v2 this is a cgroup2 mount (rooted at the container's cgroup when a cgroup
    namespace was made). On v1, a tmpfs holds one read-only bind of the container's
    directory per controller hierarchy, with the host's symlinks (``cpu`` ->
    ``cpu,cpuacct``) mirrored.
    """
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        mount("cgroup2", target, "cgroup2", flags)
        return
    mount("tmpfs", target, "tmpfs", (flags & ~MS_RDONLY) | MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "mode=755")
    inner = (cgroups_path or "").strip("/")
    with os.scandir("/sys/fs/cgroup") as it:
        entries = list(it)
    for entry in entries:
        dst = os.path.join(path, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
            continue
        src = os.path.join(entry.path, inner) if inner else entry.path
        if entry.name == "unified" or not os.path.isdir(src):
            continue
        os.mkdir(dst, 0o555)
        mount(src, dst, None, MS_BIND | MS_REC)
        mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
              | (flags & MS_RDONLY))
    if flags & MS_RDONLY:
        _mount_on(path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "mode=755")


def setup_dev(root: str, *, console: int | None = None, devices: list[dict] = ()) -> None:
    """Populate ``root``/dev: the default device nodes, the usual symlinks, the
    spec's extra ``linux.devices`` and, with a terminal, ``/dev/console``.

    ``console`` is a pty slave opened in this mount namespace (see :func:`open_pty`):
    it is bound on ``/dev/console``, as runc does.
    """
    dev = secure_join(root, "/dev")
    os.makedirs(dev, 0o755, exist_ok=True)
    for name, (major, minor) in DEFAULT_DEVICES.items():
        _mknod(os.path.join(dev, name), stat.S_IFCHR | 0o666, major, minor, 0, 0)
    for entry in devices:
        kind = stat.S_IFBLK if entry.get("type") == "b" else stat.S_IFCHR
        path = secure_join(root, entry["path"])
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        mode = entry.get("fileMode", 0o666) & 0o7777
        _mknod(path, kind | mode, entry["major"], entry["minor"],
               entry.get("uid", 0), entry.get("gid", 0))
    for name, target in _DEV_SYMLINKS:
        try:
            os.symlink(target, os.path.join(dev, name))
        except FileExistsError:
            pass
    if os.path.exists("/proc/kcore"):
        try:
            os.symlink("/proc/kcore", os.path.join(dev, "core"))
        except FileExistsError:
            pass
    if console is not None:
        fd, _path = make_target(root, "/dev/console", is_dir=False)
        try:
            mount(f"/proc/self/fd/{console}", f"/proc/self/fd/{fd}", None, MS_BIND)
        finally:
            os.close(fd)


def open_pty(root: str) -> tuple[int, int]:
    """Allocate a terminal in the devpts instance mounted on ``root``/dev/pts.

    Opens that instance's ``ptmx`` (resolved inside ``root``, and checked to be the
    pty multiplexer: a container may have put anything there), unlocks the new pty
    and opens its slave through the master (``TIOCGPTPEER``, else by its number in
    the same ``/dev/pts``). Returns ``(master, slave)``, both close-on-exec, the slave
    without becoming anyone's controlling terminal. The slave is ``/dev/pts/N`` of that
    instance: a container whose devpts is its own (``newinstance``) sees its own name.
    """
    try:
        master = open_in_root(root, "/dev/pts/ptmx",
                              os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise OSError(exc.errno, "cannot allocate a terminal: /dev/pts/ptmx: "
                      f"{os.strerror(exc.errno) if exc.errno else exc}") from exc
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev),
                                            os.minor(st.st_rdev)) != _PTMX_DEV:
            raise OSError(errno.ENOTTY, "cannot allocate a terminal: /dev/pts/ptmx is "
                          "not a pty multiplexer")
        os.set_blocking(master, True)
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        try:
            slave = fcntl.ioctl(master, _TIOCGPTPEER,
                                os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTTY):
                raise
            slave = open_in_root(root, f"/dev/pts/{pty_number(master)}",
                                 os.O_RDWR | os.O_NOCTTY)
    except BaseException:
        os.close(master)
        raise
    return master, slave


def pty_number(master: int) -> int:
    """The ``N`` of ``/dev/pts/N`` for a pty master (``TIOCGPTN``)."""
    return struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, bytes(4)))[0]


def _mknod(path: str, mode: int, major: int, minor: int, uid: int, gid: int) -> None:
    try:
        os.mknod(path, mode, os.makedev(major, minor))
    except FileExistsError:
        return
    os.chmod(path, mode & 0o7777)
    if uid or gid:
        os.chown(path, uid, gid)


def enter_root(root: str) -> None:
    """Make ``root`` (a mount point) this mount namespace's ``/`` and drop the old root.

    pivot_root(".", ".") stacks the old root on top of the new one; it is made a slave
    (so nothing propagates back to the host) and lazily unmounted.
    """
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.chdir(root)
        pivot_root(".", ".")
        os.fchdir(old_root)
        mount(None, ".", None, MS_SLAVE | MS_REC)
        umount(".", MNT_DETACH)
    finally:
        os.close(old_root)
    os.chdir("/")


def mask_path(path: str) -> None:
    """Hide ``path`` (in the current root): /dev/null over a file, an empty read-only
    tmpfs over a directory. Missing paths are ignored."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        mount("tmpfs", path, "tmpfs", MS_RDONLY)
    else:
        mount("/dev/null", path, None, MS_BIND)


def readonly_path(path: str) -> None:
    """Bind ``path`` (in the current root) onto itself read-only. Missing paths are
    ignored."""
    try:
        mount(path, path, None, MS_BIND | MS_REC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
          | MS_NOEXEC | MS_REC)


def prepare(spec: dict, *, terminal: bool = False) -> tuple[int, int] | None:
    """Build the container's root from ``spec`` and pivot into it.

    The caller must already be in a new mount namespace. Order: make ``/`` rprivate,
    bind the rootfs onto itself, mount every spec mount, allocate the terminal (with
    ``terminal``: in the container's own devpts, see :func:`open_pty`), populate /dev,
    pivot_root, write sysctls, mask and read-only paths, and finally remount ``/``
    read-only when ``root.readonly``.

    Returns the terminal's ``(master, slave)`` fds, or ``None`` without one.
    """
    linux = spec.get("linux") or {}
    root = os.path.abspath(spec["root"]["path"])
    propagation = _PROPAGATION_OPTIONS.get(linux.get("rootfsPropagation") or "rprivate",
                                           MS_PRIVATE | MS_REC)
    mount(None, "/", None, propagation)
    if propagation & MS_SHARED:
        # pivot_root refuses a shared parent, and the root's own bind must not reach
        # the host: the mount holding the rootfs (that one alone) is made private
        mount(None, mount_point_of(root), None, MS_PRIVATE)
    mount(root, root, None, MS_BIND | MS_REC)
    cgroups_path = linux.get("cgroupsPath")
    for entry in spec.get("mounts") or ():
        mount_entry(root, entry, cgroups_path=cgroups_path)
    pty = open_pty(root) if terminal else None  # a failure ends the child: no cleanup
    setup_dev(root, console=pty[1] if pty else None, devices=linux.get("devices") or [])
    enter_root(root)
    for key, value in (linux.get("sysctl") or {}).items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))
    for path in linux.get("maskedPaths") or ():
        mask_path(path)
    for path in linux.get("readonlyPaths") or ():
        readonly_path(path)
    if spec["root"].get("readonly"):
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return pty
