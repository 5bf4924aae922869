"""Starting processes in a container's namespaces: the built-in runtime's kernel part.

:func:`spawn_container` runs an OCI spec (see :mod:`engine.core.runtime.spec`);
:func:`spawn_exec` runs an extra process (``docker exec``) inside a running container.
Both fork a child that prepares everything it can (namespaces, rootfs, user,
capabilities, the executable's path), then waits for the caller to release it before
``execve``. The protocol, through :class:`Spawned`:

* ``start_fd``: write one byte to it (or close it) to let the child exec;
* ``error_fd``: close-on-exec in the child, so EOF after the release means the exec
  succeeded; otherwise it carries one JSON object ``{"message", "exit_code"}`` and the
  child exits with that code (127: command not found, 126: not executable, 125:
  any other setup failure).

With ``process.terminal`` the child allocates its terminal itself, inside the
container: it opens the ``ptmx`` of the container's own devpts instance (mounted
``newinstance``), so the container sees ``/dev/pts/N`` of its own and the host's devpts
gets no entry. A container's init binds the slave on ``/dev/console`` before
pivot_root; an exec opens it after entering the container's mount namespace. The slave
becomes the controlling terminal and stdio; the master goes back to the caller over a
unix socket with ``SCM_RIGHTS``, the shape of runc's ``--console-socket``
(:meth:`Spawned.receive_console`). The child is never released without its master
having been received: if it dies before sending, the socket's EOF says so.

A container's init is moved into its cgroup by the caller, not by itself: moving a
process between cgroup v1 hierarchies first waits for an RCU grace period (up to tens
of ms on a busy host), and this way that wait overlaps the child's own set-up and
whatever the caller does before the release (:meth:`Spawned.join_cgroup`). The child
waits for the move before it makes a cgroup namespace, and anyway before it execs.

With a pid namespace, the caller itself (the per-container monitor) is moved to the new
namespace for its future children (``unshare(CLONE_NEWPID)``), so the child becomes pid
1 there. That can happen once per process: a pid namespace dies with its first process.

Only light modules are imported: this runs at every container start.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import termios
from collections.abc import Callable

from engine.core.runtime import caps as _caps
from engine.core.runtime import cgroups as _cgroups
from engine.core.runtime import rootfs as _rootfs
from engine.core.runtime import user as _user
from engine.core.runtime.rootfs import mount, umount  # re-exported helpers

__all__ = [
    "Spawned", "SpawnError", "spawn_container", "spawn_exec", "resolve_exec_user",
    "resize_tty", "set_subreaper", "trim_heap", "pidfd_open", "mount", "umount", "unshare",
    "setns",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

#: OCI namespace type -> (clone flag, name under /proc/PID/ns)
NAMESPACES: dict[str, tuple[int, str]] = {
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
    "mount": (CLONE_NEWNS, "mnt"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "uts": (CLONE_NEWUTS, "uts"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "user": (CLONE_NEWUSER, "user"),
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_SETUP = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
#: How long the caller waits for a child to send its terminal's master.
CONSOLE_TIMEOUT = 30.0

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
_SYS_CLOSE_RANGE = 436
_CLOSE_RANGE_CLOEXEC = 1 << 2

_NOT_JOINED = "the container process was not moved into its cgroup"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.setdomainname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)


class SpawnError(Exception):
    """The container process could not be started; ``exit_code`` is what Docker
    reports (127 not found, 126 not executable, 125 otherwise)."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class _ChildError(Exception):
    """Raised inside the forked child; turned into the JSON error message."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Spawned:
    """A forked container process waiting for its release.

    ``pid`` is the host pid, ``start_fd`` the write end that releases it, ``error_fd``
    the read end of the error pipe. Both fds belong to the caller. With a terminal,
    ``console_fd`` is our end of the socket the child sends its pty master on, and
    ``master`` that master once received (-1 before): the caller owns it.
    """

    __slots__ = ("pid", "start_fd", "error_fd", "cgroups_path", "joined_fd", "join_error",
                 "terminal", "console_fd", "master")

    def __init__(self, pid: int, start_fd: int, error_fd: int, console_fd: int = -1) -> None:
        self.pid = pid
        self.start_fd = start_fd
        self.error_fd = error_fd
        self.terminal = console_fd >= 0
        self.console_fd = console_fd
        self.master = -1
        #: the cgroup the caller still has to move the child into, and the pipe that
        #: tells the child it is done (-1: nothing to do)
        self.cgroups_path = ""
        self.joined_fd = -1
        self.join_error: SpawnError | None = None

    def __repr__(self) -> str:
        return f"Spawned(pid={self.pid}, start_fd={self.start_fd}, error_fd={self.error_fd})"

    def join_cgroup(self) -> None:
        """Move the child into its cgroup in every controller and tell it so (once).

        Call it as early as convenient to overlap the move with other work;
        :meth:`start` does it otherwise. A failure is raised by :meth:`start`.
        """
        if self.joined_fd < 0:
            return
        try:
            _cgroups.join(self.cgroups_path, self.pid)
            os.write(self.joined_fd, b"\1")
        except OSError as exc:  # the child sees EOF and gives up
            self.join_error = SpawnError(
                f"cannot join the cgroup {self.cgroups_path}: {_describe(exc)}")
        finally:
            os.close(self.joined_fd)
            self.joined_fd = -1

    def receive_console(self, timeout: float = CONSOLE_TIMEOUT) -> int:
        """Wait for the child's terminal master (once) and return it, or -1 when the
        child died (or stayed silent for ``timeout`` seconds) without sending one.

        Call it after :meth:`join_cgroup` (a child making a cgroup namespace waits for
        the move first); :meth:`start` does it otherwise. The master is the caller's.
        """
        if self.console_fd < 0:
            return self.master
        sock = socket.socket(fileno=self.console_fd)
        self.console_fd = -1
        fds: list[int] = []
        try:
            sock.settimeout(timeout)
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError:  # TimeoutError included
            pass
        finally:
            sock.close()
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            self.master = fds[0]
        return self.master

    def start(self) -> None:
        """Release the child and wait for its exec; raises :class:`SpawnError` if it
        failed (the child has then exited with ``exit_code``: reap it).

        A child that owes a terminal master and has not sent it is killed instead of
        released: it must not run with a terminal nobody holds."""
        self.join_cgroup()
        self.receive_console()
        release = self.join_error is None  # else the child is giving up already
        no_console = release and self.terminal and self.master < 0
        if no_console:
            release = False
            try:
                os.kill(self.pid, signal.SIGKILL)  # not reaped yet: the pid is still ours
            except ProcessLookupError:
                pass
        try:
            if release:
                os.write(self.start_fd, b"\0")
        except BrokenPipeError:
            pass  # the child already failed: the error pipe says why
        finally:
            os.close(self.start_fd)
            self.start_fd = -1
        error = read_error(self.error_fd)
        self.error_fd = -1
        if self.join_error is not None and (error is None or error.message == _NOT_JOINED):
            raise self.join_error
        if error is not None:  # the child's own failure (the move fails when it is
            raise error        # gone already)
        if no_console:
            raise SpawnError("the container process did not set up its terminal in time")

    def close(self) -> None:
        """Close whichever of the fds are still open."""
        for name in ("start_fd", "error_fd", "joined_fd", "console_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass


def read_error(error_fd: int) -> SpawnError | None:
    """Read the error pipe to EOF and close it: ``None`` when the exec succeeded."""
    chunks = []
    try:
        while chunk := os.read(error_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(error_fd)
    if not chunks:
        return None
    try:
        payload = json.loads(b"".join(chunks))
        return SpawnError(str(payload["message"]), int(payload["exit_code"]))
    except (ValueError, KeyError, TypeError):
        return SpawnError(b"".join(chunks).decode(errors="replace"))


# --- small syscall wrappers -----------------------------------------------------------


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) on an fd of ``/proc/PID/ns/*`` (or a bind mount of one)."""
    _check(_libc.setns(fd, nstype), "setns")


def set_subreaper() -> None:
    """Become the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER)."""
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (pollable; readable when the process exits)."""
    return os.pidfd_open(pid)


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc ``malloc_trim(0)``)."""
    _libc.malloc_trim(0)


def resize_tty(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size (TIOCSWINSZ); the foreground process group gets
    SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def resolve_exec_user(target_pid: int, user_spec: str,
                      group_add: tuple[str, ...] = ()) -> _user.ExecUser:
    """Resolve ``docker exec --user`` against the running container's own passwd and
    group files, read through ``/proc/PID/root`` with symlinks kept inside it."""
    return _user.lookup(f"/proc/{target_pid}/root", user_spec, group_add)


# --- the parent side ------------------------------------------------------------------


def spawn_container(spec: dict, *, stdin: int, stdout: int, stderr: int) -> Spawned:
    """Fork the container's init process from an OCI spec, ready to be released.

    Creates the cgroup from ``linux.cgroupsPath`` and ``linux.resources`` first (the
    caller destroys it); the child is moved into it by :meth:`Spawned.join_cgroup`.
    With a pid namespace in the spec, the *calling* process unshares it (or joins the
    given path) for its children. With ``process.terminal`` the child makes its own
    terminal (see the module's doc) and the three fds are not used: take the master
    with :meth:`Spawned.receive_console`.
    """
    linux = spec.get("linux") or {}
    cgroups_path = linux.get("cgroupsPath") or None
    try:
        if cgroups_path:
            _cgroups.create(cgroups_path, linux.get("resources") or {})
        for ns in linux.get("namespaces") or ():
            if ns["type"] == "pid":
                if ns.get("path"):
                    _setns_path(ns["path"], CLONE_NEWPID)
                else:
                    unshare(CLONE_NEWPID)
    except OSError as exc:
        raise SpawnError(_describe(exc)) from exc
    terminal = bool((spec.get("process") or {}).get("terminal"))
    joined_r, joined_w = os.pipe() if cgroups_path else (-1, -1)
    ours, theirs = _console_pair() if terminal else (-1, -1)
    try:
        spawned = _fork(lambda: _container_child(spec, stdin, stdout, stderr, joined_r,
                                                 theirs),
                        child_closes=(joined_w, ours), console_fd=ours)
    except BaseException:
        _close_fds(joined_w, ours)
        raise
    finally:
        _close_fds(joined_r, theirs)
    if cgroups_path:
        spawned.cgroups_path = cgroups_path
        spawned.joined_fd = joined_w
    return spawned


def _console_pair() -> tuple[int, int]:
    """A connected unix socket pair for the terminal's master: (ours, the child's)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours.detach(), theirs.detach()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _setns_path(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype)
    finally:
        os.close(fd)


def spawn_exec(process: dict, *, target_pid: int, cgroups_path: str | None,
               stdin: int, stdout: int, stderr: int) -> Spawned:
    """Fork a process inside the namespaces and cgroup of the running ``target_pid``.

    ``process`` is an OCI ``process`` object. The caller joins the target's pid
    namespace for its children; the child opens every other namespace of the target
    before entering any, joins the cgroup, then enters them (mount last). With
    ``terminal`` the child allocates its terminal in the container's devpts once in its
    mount namespace; take the master with :meth:`Spawned.receive_console`.
    """
    ns_fds: list[tuple[str, int]] = []
    try:
        try:
            for kind in ("cgroup", "ipc", "uts", "net", "mnt"):
                path = f"/proc/{target_pid}/ns/{kind}"
                if os.stat(path).st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino:
                    continue  # already there (e.g. --network host)
                ns_fds.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            pid_ns = f"/proc/{target_pid}/ns/pid"
            if os.stat(pid_ns).st_ino != os.stat("/proc/self/ns/pid_for_children").st_ino:
                _setns_path(pid_ns, CLONE_NEWPID)
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, ProcessLookupError)):
                raise SpawnError(f"container process {target_pid} is not running") from exc
            raise SpawnError(_describe(exc)) from exc
        ours, theirs = _console_pair() if process.get("terminal") else (-1, -1)
        try:
            return _fork(lambda: _exec_child(process, ns_fds, cgroups_path, stdin, stdout,
                                             stderr, theirs),
                         child_closes=(ours,), console_fd=ours)
        except BaseException:
            _close_fds(ours)
            raise
        finally:
            _close_fds(theirs)
    finally:
        for _kind, fd in ns_fds:
            os.close(fd)


def _fork(child: Callable[[], tuple[str, list[str], dict[str, str]]],
          child_closes: tuple[int, ...] = (), console_fd: int = -1) -> Spawned:
    """Fork; the child closes ``child_closes`` (the caller's ends of its own pipes, -1
    ignored), runs ``child`` (everything up to the exec), waits for the release, then
    execs what ``child`` returned. Failures go to the error pipe. ``console_fd`` is
    our end of the terminal's socket, if any."""
    start_r, start_w = os.pipe()
    error_r, error_w = os.pipe()
    try:
        pid = os.fork()
    except BaseException as exc:
        for fd in (start_r, start_w, error_r, error_w):
            os.close(fd)
        if isinstance(exc, OSError):
            # ENOMEM here usually means the target pid namespace has lost its init.
            raise SpawnError(f"fork: {_describe(exc)}") from exc
        raise
    if pid == 0:  # pragma: no cover - runs in the child, reported via error_fd
        code = EXIT_SETUP
        try:
            os.close(start_w)
            os.close(error_r)
            _close_fds(*child_closes)
            exec_args = child()
            _wait_release(start_r)
            _exec(*exec_args)
        except _ChildError as exc:
            code = exc.exit_code
            _report(error_w, str(exc), code)
        except BaseException as exc:  # everything must reach the parent
            _report(error_w, _describe(exc), code)
        finally:
            os._exit(code)
    os.close(start_r)
    os.close(error_w)
    return Spawned(pid, start_w, error_r, console_fd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename is not None and str(exc.filename) not in exc.strerror:
            return f"{exc.strerror}: {exc.filename}"
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _report(error_fd: int, message: str, exit_code: int) -> None:
    try:
        os.write(error_fd, json.dumps({"message": message, "exit_code": exit_code}).encode())
    except OSError:
        pass


# --- the child side -------------------------------------------------------------------


def _container_child(spec: dict, stdin: int, stdout: int, stderr: int, joined_fd: int,
                     console_fd: int) -> tuple[str, list[str], dict[str, str]]:
    """Everything between fork and exec for a container's init process (``joined_fd``:
    where the parent says it moved us into our cgroup, or -1; ``console_fd``: where to
    send the terminal's master, or -1 without a terminal)."""
    _reset_signals()
    linux = spec.get("linux") or {}
    process = spec["process"]

    flags = 0
    for ns in linux.get("namespaces") or ():
        kind = ns["type"]
        if kind in ("pid", "cgroup"):
            continue  # pid: done by the parent; cgroup: after the cgroup is joined
        if kind == "user":
            raise _ChildError("user namespaces are not supported by the built-in runtime")
        flag, _name = NAMESPACES[kind]
        if ns.get("path"):
            _setns_path(ns["path"], flag)
        else:
            flags |= flag
    if not flags & CLONE_NEWNS:
        raise _ChildError("a container needs a mount namespace")
    unshare(flags)
    if any(ns["type"] == "cgroup" and not ns.get("path")
           for ns in linux.get("namespaces") or ()):
        joined_fd = _wait_joined(joined_fd)  # the namespace is rooted where we are
        unshare(CLONE_NEWCGROUP)

    pty = _rootfs.prepare(spec, terminal=console_fd >= 0)
    tty_slave = None
    if pty is not None:
        _send_console(console_fd, pty[0])
        tty_slave = pty[1]
    if spec.get("hostname"):
        name = spec["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    if spec.get("domainname"):
        name = spec["domainname"].encode()
        _check(_libc.setdomainname(name, len(name)), "setdomainname")
    exec_args = _prepare_process(process, tty_slave, stdin, stdout, stderr,
                                 create_cwd=True)
    _wait_joined(joined_fd)
    return exec_args


def _wait_joined(joined_fd: int) -> int:
    """Wait until the parent has moved us into our cgroup (-1: nothing to wait for);
    returns -1."""
    if joined_fd < 0:
        return -1
    while True:
        try:
            done = os.read(joined_fd, 1)
            break
        except InterruptedError:
            continue
    os.close(joined_fd)
    if done != b"\1":
        raise _ChildError(_NOT_JOINED)
    return -1


def _exec_child(process: dict, ns_fds: list[tuple[str, int]], cgroups_path: str | None,
                stdin: int, stdout: int, stderr: int,
                console_fd: int) -> tuple[str, list[str], dict[str, str]]:
    """Everything between fork and exec for ``docker exec``."""
    _reset_signals()
    if cgroups_path:
        _cgroups.join(cgroups_path, 0)
    for _kind, fd in ns_fds:
        setns(fd, 0)
    os.chdir("/")  # the container's root: setns(CLONE_NEWNS) moved us there
    tty_slave = None
    if console_fd >= 0:
        master, tty_slave = _rootfs.open_pty("/")
        _send_console(console_fd, master)
    return _prepare_process(process, tty_slave, stdin, stdout, stderr, create_cwd=False)


def _send_console(console_fd: int, master: int) -> None:
    """Hand the terminal's master to the caller (``SCM_RIGHTS``) and drop our copies."""
    sock = socket.socket(fileno=console_fd)
    try:
        socket.send_fds(sock, [b"\0"], [master])
    finally:
        sock.close()
        os.close(master)


def _reset_signals() -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _prepare_process(process: dict, tty_slave: int | None, stdin: int, stdout: int,
                     stderr: int, *, create_cwd: bool
                     ) -> tuple[str, list[str], dict[str, str]]:
    """rlimits, umask, cwd, stdio, identity and the executable lookup, in the new root.

    Returns what to ``execve``.
    """
    for rlimit in process.get("rlimits") or ():
        kind = getattr(resource, rlimit["type"], None)
        if kind is None:
            raise _ChildError(f"unknown rlimit {rlimit['type']}")
        _set_rlimit(kind, int(rlimit["soft"]), int(rlimit["hard"]))
    if process.get("oomScoreAdj") is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(process["oomScoreAdj"]))

    umask = (process.get("user") or {}).get("umask")
    os.umask(0o022 if umask is None else int(umask))
    cwd = process.get("cwd") or "/"
    if create_cwd:
        try:
            os.makedirs(cwd, 0o755, exist_ok=True)  # like Docker, create a missing workdir
        except OSError:
            pass  # e.g. a read-only rootfs: chdir below reports it

    _setup_stdio(tty_slave, stdin, stdout, stderr)
    if tty_slave is not None:
        _own_terminal(tty_slave, int((process.get("user") or {}).get("uid", 0)))
    _set_identity(process)
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise _ChildError(f'chdir to cwd ("{cwd}") set in config.json failed: '
                          f"{exc.strerror.lower() if exc.strerror else exc}") from None

    env: dict[str, str] = {}
    for item in process.get("env") or ():
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    args = list(process.get("args") or ())
    if not args:
        raise _ChildError("args must not be empty")
    path = find_executable(args[0], env.get("PATH", DEFAULT_PATH))
    return path, args, env


def _set_rlimit(kind: int, soft: int, hard: int) -> None:
    """setrlimit, clamped to the current hard limit when the host refuses to raise it
    (a sandboxed host may cap RLIMIT_NOFILE even for root)."""
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, PermissionError):
        _cur_soft, cur_hard = resource.getrlimit(kind)
        if cur_hard == resource.RLIM_INFINITY or hard <= cur_hard:
            raise
        resource.setrlimit(kind, (min(soft, cur_hard), cur_hard))


def _setup_stdio(tty_slave: int | None, stdin: int, stdout: int, stderr: int) -> None:
    os.setsid()
    if tty_slave is not None:
        fcntl.ioctl(tty_slave, termios.TIOCSCTTY, 0)
        sources = (tty_slave, tty_slave, tty_slave)
    else:
        sources = (stdin, stdout, stderr)
    # Copy first so that a source that is itself 0, 1 or 2 is not clobbered.
    copies = [os.dup(fd) for fd in sources]
    for target, fd in enumerate(copies):
        os.dup2(fd, target, inheritable=True)
    for fd in copies:
        os.close(fd)


def _own_terminal(tty_slave: int, uid: int) -> None:
    """Give the terminal to the process's user, as runc does: devpts makes it the
    opener's (root's), and a user must be able to reopen its own terminal. The group
    stays the mount's (``tty``)."""
    if os.fstat(tty_slave).st_uid != uid:
        os.fchown(tty_slave, uid, -1)


def _set_identity(process: dict) -> None:
    """Bounding set, then groups/gid/uid (keeping capabilities across the switch),
    then the effective/permitted/inheritable and ambient sets, then no_new_privs."""
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    groups = [int(g) for g in user.get("additionalGids") or ()]
    capabilities = process.get("capabilities")
    if capabilities is not None:
        _caps.drop_bounding(capabilities.get("bounding") or ())
    _caps.set_keepcaps(True)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _caps.set_keepcaps(False)
    if capabilities is not None:
        _caps.capset(capabilities.get("effective") or (),
                     capabilities.get("permitted") or (),
                     capabilities.get("inheritable") or ())
        if capabilities.get("ambient"):
            _caps.raise_ambient(capabilities["ambient"])
    if process.get("noNewPrivileges"):
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _is_executable(path: str) -> int:
    """0 when ``path`` is an executable regular file, else an errno."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.errno or errno.ENOENT
    if stat.S_ISDIR(st.st_mode):
        return errno.EISDIR
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return errno.EACCES
    if not os.access(path, os.X_OK):
        return errno.EACCES
    return 0


def find_executable(name: str, search_path: str) -> str:
    """Look ``name`` up like Go's ``exec.LookPath`` (which Docker's messages come from):
    a name with a slash is used as is; otherwise the first executable file in
    ``search_path`` wins. Raises :class:`_ChildError` with Docker's messages."""
    if "/" in name:
        err = _is_executable(name)
        if err == 0:
            return name
        if err in (errno.ENOENT, errno.ENOTDIR):
            raise _ChildError(f'exec: "{name}": stat {name}: no such file or directory',
                              EXIT_NOT_FOUND)
        raise _ChildError(f'exec: "{name}": {os.strerror(err).lower()}', EXIT_NOT_EXECUTABLE)
    for directory in search_path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if _is_executable(candidate) == 0:
            return candidate
    raise _ChildError(f'exec: "{name}": executable file not found in $PATH', EXIT_NOT_FOUND)


def _wait_release(start_fd: int) -> None:
    """Block until the caller writes a byte to (or closes) the start pipe."""
    while True:
        try:
            os.read(start_fd, 1)
            break
        except InterruptedError:
            continue
    os.close(start_fd)


def _exec(path: str, args: list[str], env: dict[str, str]) -> None:
    # Nothing but 0, 1, 2 may leak into the container: mark the rest close-on-exec.
    if _libc.syscall(_SYS_CLOSE_RANGE, 3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) != 0:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass
    try:
        os.execve(path, args, env)
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise _ChildError(f'exec: "{args[0]}": {reason}', code) from None
