"""The per-container monitor: one small process per container (and one per exec).

It holds the container's standard streams, serves attach clients, feeds the log
writer, reaps the exit status and records it. It outlives the daemon (live restore):
it runs in its own session, ignores SIGHUP and SIGPIPE, and its own stdio goes to
``DIR/monitor.log``.

Command line (the daemon runs it through :mod:`engine.core.runtime.client`)::

    monitor create --id ID --bundle DIR --state DIR [--runtime builtin|runc]
                   [--runc-root DIR] [--log-writer module:attr --log-context JSON]
                   [--stdin-open] [--stdin-once] --sync-fd N
    monitor exec   --id EXEC_ID --state DIR --target-pid PID --process FILE
                   [--cgroups-path P] [--runtime builtin|runc --container-id ID]
                   [--runc-root DIR] [--stdin-open] [--stdin-once] --sync-fd N
    monitor forkserver --control-fd N

The daemon normally runs one ``forkserver`` (see the section of that name below) and
has it fork each ``create`` and ``exec`` monitor: no Python start-up per container,
and the imported modules' memory shared by all monitors. Such a monitor has the fork
server's command line; it is known by its working directory, its state directory.

Start-up: the first process forks and exits at once; the real monitor prepares the
stdio, creates the container process (which waits, not yet exec'd, like
``runc create``), binds ``DIR/monitor.sock``, writes ``DIR/monitor.pid`` and
``DIR/pid`` and writes one JSON line to the sync fd: ``{"pid": N, "monitor_pid": M}``
or ``{"message": ..., "exit_code": 125|126|127}``. Then it moves the container
process into its cgroup (that waits for the kernel: it overlaps the daemon's work
until its ``start`` request) and freezes what it allocated so far for the collector.

Protocol on ``monitor.sock``: one request per connection, one JSON line each way.

* ``{"op": "start"}`` -> ``{"ok": true, "pid": N}`` or ``{"ok": false, "message",
  "exit_code"}`` (the exec failed: 127 not found, 126 not executable, 125 other).
* ``{"op": "attach", "stdin", "stdout", "stderr"}`` -> ``{"ok": true, "tty": bool}``,
  then the connection carries the streams: raw bytes for a tty, otherwise Docker's
  stdcopy frames (at most 32 KiB of payload each); raw stdin bytes the other way.
  A client gets the output from the moment it attached; at the exit it gets the rest
  and its connection is closed.
* ``{"op": "resize", "height", "width"}``, ``{"op": "kill", "signal"}`` -> ``{"ok": true}``
  (signals go through a pidfd: a recycled pid is never hit).
* ``{"op": "wait"}`` -> once the process exited and its output is drained:
  ``{"exit_code", "oom_killed", "started_at", "finished_at", "pid"}``.
* ``{"op": "state"}`` -> ``{"pid", "running", "status", "started_at", "exit_code", "tty"}``.

Exit: the exit record goes to ``DIR/exit.json`` (atomically), the log writer is
closed, attach clients get the rest of the output, the cgroup is destroyed (builtin
runtime) or ``runc delete`` runs, the socket is removed, waiters get the record and
the monitor exits. A process that died before it was started (its setup failed)
keeps its monitor until the daemon starts it (and so learns why) or kills it.
runc has no create/start split for execs: ``runc exec`` runs at ``start``.

The module must stay light (a few MB, a few ms to start): only small stdlib modules at
import time; the runtime helpers, the runc adapter and the log writer are imported
when needed.
"""
from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False  # typing costs a megabyte in every monitor: type checkers only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SOCKET_NAME = "monitor.sock"
READ_CHUNK = 64 * 1024
FRAME_MAX = 32 * 1024
STREAM_STDOUT = 1
STREAM_STDERR = 2
# Stop reading the container's output while an attach client has this much unsent.
CLIENT_HIGH_WATER = 4 * 1024 * 1024
# Stop reading attach clients' stdin while this much waits for the container.
STDIN_HIGH_WATER = 1024 * 1024
# After the process exited: stop waiting for its output once it stays silent this long
# (a background process of an exec may hold the pipes open forever).
DRAIN_IDLE = 1.0
# How long the exiting monitor keeps sending buffered output to slow attach clients.
FLUSH_TIMEOUT = 5.0
# How long an exited process's output may stay unread because an attach client is slow.
PAUSED_EXIT_GRACE = 30.0
REQUEST_MAX = 64 * 1024

_HEADER = struct.Struct(">BxxxI")


# --------------------------------------------------------------------- small helpers


def frame(stream: int, data: bytes) -> bytes:
    """Docker stdcopy frames for ``data`` (each payload at most ``FRAME_MAX`` bytes)."""
    if len(data) <= FRAME_MAX:
        return _HEADER.pack(stream, len(data)) + data
    parts: list[bytes | memoryview] = []
    view = memoryview(data)
    for off in range(0, len(data), FRAME_MAX):
        chunk = view[off:off + FRAME_MAX]
        parts.append(_HEADER.pack(stream, len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


def rfc3339_nano(ns: int) -> str:
    """``ns`` since the epoch as Docker's RFC 3339 timestamp with nanoseconds, in UTC."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def exit_code_of(status: int) -> int:
    """A wait status as Docker reports it: the exit code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def classify_error(message: str) -> int:
    """The exit code Docker gives a failed start: 127 not found, 126 not executable."""
    low = message.lower()
    if "not found" in low or "no such file" in low:
        return 127
    if "permission denied" in low or "exec format error" in low:
        return 126
    return 125


def atomic_write_json(path: str, obj: Any, *, durable: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file, fsync, rename).

    ``durable=False`` skips the two fsyncs (a few ms each on a busy disk) for what
    cannot outlive the machine anyway, such as pid files: readers still never see a
    partial file.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(obj).encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if not durable:
        return
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def log(msg: str) -> None:
    """A line on the monitor's stderr, which is ``DIR/monitor.log``."""
    try:
        sys.stderr.write(f"{rfc3339_nano(time.time_ns())} monitor[{os.getpid()}]: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class StartError(Exception):
    """The container process could not be created or started."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# --------------------------------------------------------------------- arguments


class Options:
    """The parsed command line (argparse is too heavy for the monitor's start-up)."""

    VALUED = {"id", "bundle", "state", "runtime", "runc-root", "log-writer",
              "log-context", "sync-fd", "target-pid", "process", "cgroups-path",
              "container-id"}
    FLAGS = {"stdin-open", "stdin-once"}

    def __init__(self) -> None:
        self.command = ""
        self.id = ""
        self.bundle = ""
        self.state = ""
        self.runtime = "builtin"
        self.runc_root = ""
        self.log_writer = ""
        self.log_context: dict[str, Any] | None = None
        self.sync_fd = -1
        self.target_pid = 0
        self.process = ""
        self.cgroups_path = ""
        self.container_id = ""
        self.stdin_open = False
        self.stdin_once = False


def parse_args(argv: list[str]) -> Options:
    """Parse ``create ...`` or ``exec ...``; raise ``ValueError`` with a usage message."""
    if not argv or argv[0] not in ("create", "exec"):
        raise ValueError("usage: monitor create|exec --id ID --state DIR --sync-fd N ...")
    opts = Options()
    opts.command = argv[0]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        if name in Options.FLAGS and not eq:
            setattr(opts, name.replace("-", "_"), True)
            i += 1
            continue
        if name not in Options.VALUED:
            raise ValueError(f"unknown option --{name}")
        if not eq:
            if i + 1 >= len(argv):
                raise ValueError(f"--{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        attr = name.replace("-", "_")
        if attr in ("sync_fd", "target_pid"):
            setattr(opts, attr, int(value))
        elif attr == "log_context":
            opts.log_context = json.loads(value)
        else:
            setattr(opts, attr, value)
    if not opts.id or not opts.state or opts.sync_fd < 0:
        raise ValueError("--id, --state and --sync-fd are required")
    if opts.runtime not in ("builtin", "runc"):
        raise ValueError(f"unknown runtime {opts.runtime!r}")
    if opts.command == "create" and not opts.bundle:
        raise ValueError("create needs --bundle")
    if opts.command == "exec":
        if not opts.process or (opts.runtime == "builtin" and opts.target_pid <= 0):
            raise ValueError("exec needs --process and --target-pid")
        if opts.runtime == "runc" and not opts.container_id:
            raise ValueError("exec with runc needs --container-id")
    if opts.log_writer and ":" not in opts.log_writer:
        raise ValueError("--log-writer must be module:attribute")
    return opts


# --------------------------------------------------------------------- stdio


class Stdio:
    """The container's standard streams: the ends the container gets and ours.

    With a terminal we keep the pty master. Both runtimes make the pty themselves,
    inside the container's own devpts (``open_pty=False``): the master is handed to
    :meth:`set_master` once the runtime sends it. ``open_pty=True`` makes one on the
    host instead and gives the container the slave for all three streams (for backends
    that cannot). Without a terminal, stdout and stderr are pipes and stdin is a pipe
    only when it is kept open, else ``/dev/null``.
    """

    def __init__(self, *, terminal: bool, stdin_open: bool, open_pty: bool = True) -> None:
        self.terminal = terminal
        self.stdin_open = stdin_open
        self.master = -1
        self.tty_slave: int | None = None
        self.stdin_w = -1
        self.stdout_r = -1
        self.stderr_r = -1
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._owned = [null]
        if terminal:
            if open_pty:
                self.set_master(*os.openpty())
            self.child = (null, null, null)
            if self.tty_slave is not None:
                self.child = (self.tty_slave,) * 3
            return
        if stdin_open:
            r, self.stdin_w = os.pipe()
            self._owned.append(r)
            stdin = r
        else:
            stdin = null
        self.stdout_r, w_out = os.pipe()
        self.stderr_r, w_err = os.pipe()
        self._owned += [w_out, w_err]
        self.child = (stdin, w_out, w_err)

    def set_master(self, master: int, slave: int | None = None) -> None:
        """Adopt a pty master (and the slave to hand to the container, if we have it)."""
        os.set_inheritable(master, False)
        self.master = master
        if slave is not None:
            os.set_inheritable(slave, False)
            self.tty_slave = slave
            self._owned.append(slave)

    def close_child_side(self) -> None:
        """Close our copies of the container's ends, so EOF reaches us when it exits."""
        for fd in self._owned:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned = []

    def outputs(self) -> list[tuple[int, str]]:
        """The fds to read, with the log stream name of each."""
        if self.terminal:
            return [(self.master, "stdout")] if self.master >= 0 else []
        return [(self.stdout_r, "stdout"), (self.stderr_r, "stderr")]

    def stdin_fd(self) -> int:
        """A fd to write the container's stdin to, or -1 (its own for the pty case)."""
        if self.terminal:
            return os.dup(self.master) if self.stdin_open and self.master >= 0 else -1
        return self.stdin_w


# --------------------------------------------------------------------- backends


class Backend:
    """How the container (or exec) process is made, started and cleaned up.

    ``prepare`` runs before the sync reply and returns the host pid (0 when the process
    is only made at start); ``settle`` runs right after the reply, before any request
    is served (set-up the daemon need not wait for); ``start`` releases the process and
    returns its pid or raises :class:`StartError` (``winsize`` is the terminal size
    asked for so far, for a runtime that makes the pty only then); ``cleanup`` runs
    once it has exited.
    """

    terminal = False
    cgroups_path = ""

    def prepare(self, stdio: Stdio) -> int:
        raise NotImplementedError

    def settle(self) -> None:
        pass

    def start(self, stdio: Stdio, winsize: tuple[int, int] | None = None) -> int:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        if not self.cgroups_path:
            return False
        try:
            from engine.core.runtime import cgroups
            return bool(cgroups.oom_killed(self.cgroups_path))
        except Exception as exc:  # never fail the exit record over this
            log(f"oom check failed: {exc!r}")
            return False

    def cleanup(self) -> None:
        pass


class _SpawnedBackend(Backend):
    """The builtin runtime: :mod:`engine.core.runtime.linux` forks the process, which
    waits for its release (``Spawned.start``) before it execs.

    With a terminal the process allocates it in the container and sends the master
    back; ``settle`` takes it (so before any request is served: attach, resize and the
    log see it), sized from the spec's ``consoleSize`` when there is one.
    """

    def __init__(self) -> None:
        self.spawned: Any = None
        self.stdio: Stdio | None = None
        self.console_size: tuple[int, int] | None = None

    def _spawn(self, stdio: Stdio, fn: Callable[..., Any], *args: Any,
               **kwargs: Any) -> int:
        from engine.core.runtime import linux
        self.stdio = stdio
        try:
            self.spawned = fn(*args, stdin=stdio.child[0], stdout=stdio.child[1],
                              stderr=stdio.child[2], **kwargs)
        except linux.SpawnError as exc:
            raise StartError(exc.message, exc.exit_code) from None
        return int(self.spawned.pid)

    def settle(self) -> None:
        # the cgroup move waits for the kernel (see linux.py): overlap it with the
        # child's set-up and the daemon's work until its next request. (Not in a
        # thread: after unshare(CLONE_NEWPID) this process can make none.)
        if self.spawned is None:
            return
        self.spawned.join_cgroup()
        self._take_console()

    def _take_console(self) -> None:
        """Adopt the terminal's master once the child sends it (a child that dies
        first sends none: ``start`` then reports its error)."""
        if not self.spawned.terminal or self.stdio is None or self.stdio.master >= 0:
            return
        master = self.spawned.receive_console()
        if master < 0:
            return
        self.stdio.set_master(master)
        if self.console_size:
            _resize(master, *self.console_size)

    def start(self, stdio: Stdio, winsize: tuple[int, int] | None = None) -> int:
        from engine.core.runtime import linux
        self._take_console()  # settle did, unless it was skipped
        try:
            self.spawned.start()
        except linux.SpawnError as exc:
            raise StartError(exc.message, exc.exit_code) from None
        return int(self.spawned.pid)


def _console_size(process: dict[str, Any]) -> tuple[int, int] | None:
    """An OCI process's ``consoleSize`` as ``(rows, columns)``, when it has a usable one."""
    size = process.get("consoleSize") or {}
    try:
        rows, cols = int(size.get("height", 0)), int(size.get("width", 0))
    except (TypeError, ValueError, AttributeError):
        return None
    return (rows, cols) if rows > 0 and cols > 0 else None


class BuiltinContainer(_SpawnedBackend):
    """A container made by :func:`engine.core.runtime.linux.spawn_container`."""

    def __init__(self, bundle: str) -> None:
        super().__init__()
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            self.spec: dict[str, Any] = json.load(f)
        root = self.spec.setdefault("root", {})
        if not os.path.isabs(root.get("path", "rootfs")):
            root["path"] = os.path.join(bundle, root.get("path", "rootfs"))
        process = self.spec.get("process") or {}
        self.terminal = bool(process.get("terminal"))
        self.console_size = _console_size(process)
        self.cgroups_path = self.spec.get("linux", {}).get("cgroupsPath", "")

    def prepare(self, stdio: Stdio) -> int:
        from engine.core.runtime import linux
        spec, self.spec = self.spec, {}  # the child has its copy: ours is garbage
        return self._spawn(stdio, linux.spawn_container, spec)

    def cleanup(self) -> None:
        if not self.cgroups_path:
            return
        try:
            from engine.core.runtime import cgroups
            cgroups.destroy(self.cgroups_path)
        except Exception as exc:
            log(f"cgroup cleanup failed: {exc!r}")


class BuiltinExec(_SpawnedBackend):
    """An exec made by :func:`engine.core.runtime.linux.spawn_exec`."""

    def __init__(self, process: dict[str, Any], target_pid: int, cgroups_path: str) -> None:
        super().__init__()
        self.process = process
        self.target_pid = target_pid
        self.exec_cgroups_path = cgroups_path
        self.terminal = bool(process.get("terminal"))
        self.console_size = _console_size(process)

    def prepare(self, stdio: Stdio) -> int:
        from engine.core.runtime import linux
        return self._spawn(stdio, linux.spawn_exec, self.process,
                           target_pid=self.target_pid,
                           cgroups_path=self.exec_cgroups_path or None)


class RuncContainer(Backend):
    """A container made by ``runc create`` and started by ``runc start``."""

    def __init__(self, container_id: str, bundle: str, root: str, state_dir: str) -> None:
        from engine.core.runtime.runc import Runc
        self.id = container_id
        self.bundle = bundle
        self.runc = Runc(root, log_file=os.path.join(state_dir, "runc.log"))
        self.pid_file = os.path.join(state_dir, "runc.pid")
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            spec = json.load(f)
        self.terminal = bool(spec.get("process", {}).get("terminal"))
        self.cgroups_path = spec.get("linux", {}).get("cgroupsPath", "")
        self.created = False

    def prepare(self, stdio: Stdio) -> int:
        from engine.core.runtime.runc import RuncError
        try:
            master = self.runc.create(
                self.id, self.bundle, pid_file=self.pid_file, stdio=stdio.child,
                console_socket="console.sock" if self.terminal else None)
        except RuncError as exc:
            raise StartError(exc.message, classify_error(exc.message)) from None
        self.created = True
        if master is not None:
            stdio.set_master(master)
        with open(self.pid_file) as f:
            return int(f.read().strip())

    def start(self, stdio: Stdio, winsize: tuple[int, int] | None = None) -> int:
        from engine.core.runtime.runc import RuncError
        try:
            self.runc.start(self.id)
        except RuncError as exc:
            raise StartError(exc.message, classify_error(exc.message)) from None
        with open(self.pid_file) as f:
            return int(f.read().strip())

    def cleanup(self) -> None:
        if not self.created:
            return
        try:
            self.runc.delete(self.id, force=True)
        except Exception as exc:
            log(f"runc delete failed: {exc!r}")


class RuncExec(Backend):
    """An exec made by ``runc exec --detach`` when it is started (runc has no
    create/start split for execs, so ``prepare`` makes nothing)."""

    def __init__(self, container_id: str, process_file: str, root: str,
                 state_dir: str) -> None:
        from engine.core.runtime.runc import Runc
        self.container_id = container_id
        self.process_file = process_file
        self.runc = Runc(root, log_file=os.path.join(state_dir, "runc.log"))
        self.pid_file = os.path.join(state_dir, "runc.pid")
        with open(process_file, "rb") as f:
            self.terminal = bool(json.load(f).get("terminal"))

    def prepare(self, stdio: Stdio) -> int:
        return 0

    def start(self, stdio: Stdio, winsize: tuple[int, int] | None = None) -> int:
        from engine.core.runtime.runc import RuncError
        process_file = self.process_file
        if self.terminal and winsize:
            # runc runs the process at once: size its pty from the start
            with open(process_file, "rb") as f:
                process = json.load(f)
            process["consoleSize"] = {"height": winsize[0], "width": winsize[1]}
            process_file = os.path.join(os.path.dirname(self.pid_file), "process.run.json")
            atomic_write_json(process_file, process)
        try:
            master = self.runc.exec(
                self.container_id, process_file, pid_file=self.pid_file,
                stdio=stdio.child, console_socket="console.sock" if self.terminal else None)
        except RuncError as exc:
            raise StartError(exc.message, classify_error(exc.message)) from None
        if master is not None:
            stdio.set_master(master)
        with open(self.pid_file) as f:
            return int(f.read().strip())


# --------------------------------------------------------------------- connections


class Request:
    """A connection still sending its request line."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()


class Attached:
    """An attach client: it gets output from the moment it attached."""

    __slots__ = ("sock", "stdin", "stdout", "stderr", "out", "reading")

    def __init__(self, sock: socket.socket, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.sock = sock
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.out = bytearray()
        self.reading = True


def _send_reply(sock: socket.socket, obj: Any) -> bool:
    """Send one JSON line on a short-lived request connection."""
    try:
        sock.settimeout(5.0)
        sock.sendall(json.dumps(obj).encode() + b"\n")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------- the monitor


class Monitor:
    """The event loop: output, attach clients, requests, the exit status."""

    def __init__(self, *, state_dir: str, backend: Backend, stdio: Stdio,
                 stdin_once: bool = False, log_writer: str = "",
                 log_context: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir
        self.backend = backend
        self.stdio = stdio
        self.stdin_once = stdin_once
        self.sel = selectors.DefaultSelector()
        self.pid = 0
        self.pidfd = -1
        self.started_ns = 0
        self.status: int | None = None
        self.finished_ns = 0
        self.exited_at = 0.0
        self.last_output = 0.0
        self.done = False
        self.record: dict[str, Any] | None = None
        self.listener: socket.socket | None = None
        self.clients: list[Attached] = []
        self._requests: dict[socket.socket, Request] = {}
        self.waiters: list[socket.socket] = []
        self.outputs: dict[int, str] = {}
        self.paused = False
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.writer_spec = log_writer
        self.writer_context = log_context or {}
        self.writer: Any = None
        self.writer_pending: list[tuple[str, bytes, int]] | None = [] if log_writer else None
        self.writer_due = False
        self.winsize: tuple[int, int] | None = None
        self.killed = False
        self._wake_r, self._wake_w = socket.socketpair()

    # ---- set-up

    def install_signals(self) -> None:
        """SIGCHLD wakes the loop (we reap in it); SIGHUP and SIGPIPE are ignored."""
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def prepare(self) -> int:
        """Create the process; bind the socket; write the pid files."""
        self.pid = self.backend.prepare(self.stdio)
        if self.pid:  # else the process is made at start and needs the child side
            self.stdio.close_child_side()
            self._open_pidfd()
        path = os.path.join(self.state_dir, SOCKET_NAME)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind relative to our cwd (the state dir): a long path does not fit sun_path
        self.listener.bind(SOCKET_NAME if os.getcwd() == os.path.realpath(self.state_dir)
                           else path)
        self.listener.listen(64)
        self.listener.setblocking(False)
        # pids mean nothing after a reboot: no fsync on the way to the sync report
        atomic_write_json(os.path.join(self.state_dir, "monitor.pid"), os.getpid(),
                          durable=False)
        atomic_write_json(os.path.join(self.state_dir, "pid"), self.pid, durable=False)
        return self.pid

    def _open_pidfd(self) -> None:
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError as exc:
            log(f"pidfd_open({self.pid}): {exc}")

    # ---- the loop

    def serve(self) -> None:
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        assert self.listener is not None
        self.sel.register(self.listener, selectors.EVENT_READ, self._on_accept)
        self._watch_outputs()
        self._reap()
        while not self.done:
            for key, events in self.sel.select(self._timeout()):
                key.data(key.fileobj, events)
                if self.done:
                    break
            if self.writer_due:
                self._load_writer()
            if not self.done:
                self._maybe_finish()

    def _awaiting_start(self) -> bool:
        """True while a process that exited before its start waits for the daemon to
        start it (and learn why it failed) or to kill it."""
        return not self.started_ns and not self.killed

    def _timeout(self) -> float | None:
        if self.status is None or self._awaiting_start():
            return None
        if self.paused:  # waiting for a slow attach client to take its output
            return 0.1
        return max(0.0, self.last_output + DRAIN_IDLE - time.monotonic())

    def _watch_outputs(self) -> None:
        for fd, stream in self.stdio.outputs():
            if fd >= 0 and fd not in self.outputs:
                os.set_blocking(fd, False)
                self.outputs[fd] = stream
                self.sel.register(fd, selectors.EVENT_READ, self._on_output)
        if self.stdin_fd < 0 and not self.stdin_eof:
            self.stdin_fd = self.stdio.stdin_fd()
            if self.stdin_fd >= 0:
                os.set_blocking(self.stdin_fd, False)

    # ---- children

    def _on_wake(self, sock: Any, events: int) -> None:
        try:
            while sock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._reap()

    def _reap(self) -> None:
        """Reap every child (we are a subreaper); note the status of ours."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid and self.status is None:
                self.status = status
                self.exited_at = self.last_output = time.monotonic()
                self.finished_ns = time.time_ns()

    # ---- output

    def _on_output(self, fd: int, events: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the pty slave is closed everywhere
            data = b""
        if not data:
            self._close_output(fd)
            return
        self.last_output = time.monotonic()
        self._deliver(self.outputs[fd], data)

    def _close_output(self, fd: int) -> None:
        if self.outputs.pop(fd, None) is None:
            return
        if not self.paused:
            self.sel.unregister(fd)
        os.close(fd)

    def _deliver(self, stream: str, data: bytes) -> None:
        now = time.time_ns()
        if self.writer is not None:
            self._write_log(stream, data, now)
        elif self.writer_pending is not None:
            self.writer_pending.append((stream, data, now))
        tty = self.stdio.terminal
        framed = b""
        for c in list(self.clients):  # a client that fails is dropped on the way
            if not (c.stdout if stream == "stdout" else c.stderr):
                continue
            if tty:
                c.out += data
            else:
                if not framed:
                    framed = frame(STREAM_STDOUT if stream == "stdout" else STREAM_STDERR,
                                   data)
                c.out += framed
            self._flush_client(c)
        if not self.paused and any(len(c.out) > CLIENT_HIGH_WATER for c in self.clients):
            self.paused = True
            for fd in self.outputs:
                self.sel.unregister(fd)

    def _maybe_resume(self) -> None:
        if self.paused and all(len(c.out) <= CLIENT_HIGH_WATER // 2 for c in self.clients):
            self.paused = False
            for fd in self.outputs:
                self.sel.register(fd, selectors.EVENT_READ, self._on_output)

    # ---- log writer

    def _load_writer(self) -> None:
        self.writer_due = False
        if not self.writer_spec or self.writer is not None:
            return
        module_name, _, attr = self.writer_spec.partition(":")
        try:
            import importlib
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                # started with -S (see client.py): a writer installed through a .pth
                # file needs the site machinery after all
                import site
                site.main()
                module = importlib.import_module(module_name)
            factory: Callable[[dict[str, Any]], Any] = getattr(module, attr)
            self.writer = factory(dict(self.writer_context))
        except Exception as exc:
            log(f"log writer {self.writer_spec} disabled: {exc!r}")
            self._disable_writer()
            return
        pending, self.writer_pending = self.writer_pending or [], None
        for stream, data, ns in pending:
            self._write_log(stream, data, ns)

    def _write_log(self, stream: str, data: bytes, ns: int) -> None:
        try:
            self.writer.write(stream, data, ns)
        except Exception as exc:
            log(f"log writer {self.writer_spec} disabled: {exc!r}")
            self._disable_writer()

    def _disable_writer(self) -> None:
        self.writer = None
        self.writer_pending = None
        self.writer_spec = ""

    def _close_writer(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.close()
        except Exception as exc:
            log(f"log writer close failed: {exc!r}")
        self.writer = None

    # ---- requests

    def _on_accept(self, listener: socket.socket, events: int) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log(f"accept: {exc}")
                return
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, self._on_request)
            self._requests[sock] = Request(sock)

    def _on_request(self, sock: socket.socket, events: int) -> None:
        req = self._requests[sock]
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            req.buf += data
            if b"\n" not in req.buf and len(req.buf) < REQUEST_MAX:
                return
        del self._requests[sock]
        self.sel.unregister(sock)
        line = bytes(req.buf).split(b"\n", 1)[0]
        if not line.strip():
            sock.close()
            return
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("request must be a JSON object")
        except ValueError as exc:
            self._reply_close(sock, {"ok": False, "message": f"bad request: {exc}"})
            return
        op = msg.get("op")
        handler = self.OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            self._reply_close(sock, {"ok": False, "message": f"unknown op {op!r}"})
            return
        try:
            handler(self, sock, msg)
        except Exception as exc:  # a bad request must never take the monitor down
            log(f"op {op} failed: {exc!r}")
            self._reply_close(sock, {"ok": False, "message": f"{op}: {exc}"})

    def _reply_close(self, sock: socket.socket, obj: Any) -> None:
        _send_reply(sock, obj)
        sock.close()

    def op_start(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        if self.started_ns:
            self._reply_close(sock, {"ok": False, "message": "already started",
                                     "exit_code": 125})
            return
        if self.killed:
            self._reply_close(sock, {"ok": False, "message": "the process was killed",
                                     "exit_code": 125})
            return
        # a process that died before its start (its setup failed) still goes through
        # the runtime's start, which says why
        self.started_ns = time.time_ns()
        try:
            pid = self.backend.start(self.stdio, self.winsize)
        except StartError as exc:
            self._reply_close(sock, {"ok": False, "message": exc.message,
                                     "exit_code": exc.exit_code})
            if self.pid == 0:  # nothing was made (runc exec): finish with the code
                self.status = exc.exit_code << 8
                self.finished_ns = time.time_ns()
                self.exited_at = self.last_output = time.monotonic()
            return
        if not self.pid:
            self.pid = pid
            self.stdio.close_child_side()
            self._open_pidfd()
            atomic_write_json(os.path.join(self.state_dir, "pid"), self.pid, durable=False)
            self._watch_outputs()
            self._apply_winsize()
            self._reap()
        self._reply_close(sock, {"ok": True, "pid": self.pid})
        self.writer_due = bool(self.writer_spec)

    def op_attach(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        c = Attached(sock, bool(msg.get("stdin")), bool(msg.get("stdout")),
                     bool(msg.get("stderr")))
        if not _send_reply(sock, {"ok": True, "tty": self.stdio.terminal}):
            sock.close()
            return
        sock.setblocking(False)
        self.clients.append(c)
        self._update_client(c)

    def op_resize(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        h, w = int(msg.get("height", 0)), int(msg.get("width", 0))
        if self.stdio.terminal and h > 0 and w > 0:
            self.winsize = (h, w)
            self._apply_winsize()
        self._reply_close(sock, {"ok": True})

    def _apply_winsize(self) -> None:
        """Size the pty as last asked (kept when asked before the pty exists)."""
        if self.winsize and self.stdio.master >= 0:
            _resize(self.stdio.master, *self.winsize)

    def op_kill(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        sig = int(msg.get("signal", signal.SIGKILL))
        self.killed = True
        if self.pidfd >= 0 and self.status is None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass
        elif self.pid == 0 and self.status is None:
            # runc exec not started yet: there is no process; it "dies" of the signal
            self.status = sig & 0x7F
            self.finished_ns = time.time_ns()
            self.exited_at = self.last_output = time.monotonic()
        self._reply_close(sock, {"ok": True})

    def op_wait(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        self.waiters.append(sock)

    def op_state(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        self._reply_close(sock, {
            "ok": True,
            "pid": self.pid,
            "running": bool(self.started_ns) and self.status is None,
            "status": ("exited" if self.status is not None
                       else "running" if self.started_ns else "created"),
            "started_at": rfc3339_nano(self.started_ns) if self.started_ns else "",
            "exit_code": exit_code_of(self.status) if self.status is not None else None,
            "tty": self.stdio.terminal,
        })

    OPS: dict[str, Callable[[Monitor, socket.socket, dict[str, Any]], None]] = {
        "start": op_start, "attach": op_attach, "resize": op_resize, "kill": op_kill,
        "wait": op_wait, "state": op_state,
    }

    # ---- attach clients

    def _update_client(self, c: Attached) -> None:
        events = 0
        if c.reading and len(self.stdin_buf) < STDIN_HIGH_WATER:
            events |= selectors.EVENT_READ
        if c.out:
            events |= selectors.EVENT_WRITE
        key = self.sel.get_map().get(c.sock)
        if key is None:
            if events:
                self.sel.register(c.sock, events, self._on_client)
        elif not events:
            self.sel.unregister(c.sock)
        elif key.events != events:
            self.sel.modify(c.sock, events, self._on_client)

    def _find_client(self, sock: socket.socket) -> Attached | None:
        for c in self.clients:
            if c.sock is sock:
                return c
        return None

    def _on_client(self, sock: socket.socket, events: int) -> None:
        c = self._find_client(sock)
        if c is None:
            return
        if events & selectors.EVENT_READ:
            self._read_client(c)
        if events & selectors.EVENT_WRITE and c in self.clients:
            self._flush_client(c)

    def _read_client(self, c: Attached) -> None:
        try:
            data = c.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(c)
            return
        if not data:
            c.reading = False
            self._update_client(c)
            if c.stdin and self.stdin_once:
                self.stdin_eof = True
                self._flush_stdin()
            return
        if c.stdin and self.stdin_fd >= 0 and not self.stdin_eof:
            self.stdin_buf += data
            self._flush_stdin()

    def _flush_client(self, c: Attached) -> None:
        if c.out:
            try:
                n = c.sock.send(c.out)
                del c.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop_client(c)
                return
        self._update_client(c)
        self._maybe_resume()

    def _drop_client(self, c: Attached) -> None:
        if c in self.clients:
            self.clients.remove(c)
        if c.sock in self.sel.get_map():
            self.sel.unregister(c.sock)
        c.sock.close()
        self._maybe_resume()

    # ---- stdin

    def _flush_stdin(self) -> None:
        fd = self.stdin_fd
        if fd < 0:
            return
        was_full = len(self.stdin_buf) >= STDIN_HIGH_WATER
        if self.stdin_buf:
            try:
                n = os.write(fd, self.stdin_buf)
                del self.stdin_buf[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # EPIPE: the container closed its stdin
                self.stdin_buf.clear()
                self.stdin_eof = True
        registered = fd in self.sel.get_map()
        if self.stdin_buf and not registered:
            self.sel.register(fd, selectors.EVENT_WRITE, lambda f, e: self._flush_stdin())
        elif not self.stdin_buf and registered:
            self.sel.unregister(fd)
        if not self.stdin_buf and self.stdin_eof:
            os.close(fd)
            self.stdin_fd = -1
        if was_full and len(self.stdin_buf) < STDIN_HIGH_WATER:
            for c in self.clients:
                self._update_client(c)

    # ---- exit

    def _maybe_finish(self) -> None:
        if self.status is None or self._awaiting_start():
            return
        if self.outputs and not self.paused and \
                time.monotonic() - self.last_output < DRAIN_IDLE:
            return
        if self.paused and time.monotonic() - self.exited_at < PAUSED_EXIT_GRACE:
            return
        self._finish()

    def _finish(self) -> None:
        self.done = True
        for fd in list(self.outputs):
            if self.paused:
                self.outputs.pop(fd)
                os.close(fd)
            else:
                self._close_output(fd)
        assert self.status is not None
        self.record = {
            "exit_code": exit_code_of(self.status),
            "oom_killed": self.backend.oom_killed(),
            "started_at": rfc3339_nano(self.started_ns) if self.started_ns else "",
            "finished_at": rfc3339_nano(self.finished_ns),
            "pid": self.pid,
        }
        try:
            atomic_write_json(os.path.join(self.state_dir, "exit.json"), self.record)
        except OSError as exc:
            log(f"cannot record the exit: {exc}")
        self._close_writer()
        self._flush_all_clients()
        self.backend.cleanup()
        try:
            os.unlink(os.path.join(self.state_dir, SOCKET_NAME))
        except OSError:
            pass
        if self.listener is not None:
            self.sel.unregister(self.listener)
            self.listener.close()
        for sock in self.waiters:
            self._reply_close(sock, self.record)
        self.waiters = []
        for sock in list(self._requests):
            sock.close()
        if self.stdin_fd >= 0:
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    def _flush_all_clients(self) -> None:
        """Send each attach client what it still has coming, then close it (each as
        soon as it is done; a client that takes no data is dropped at the deadline)."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        for c in self.clients:
            c.reading = False
            self._update_client(c)
        while True:
            for c in [c for c in self.clients if not c.out]:
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._drop_client(c)
            left = deadline - time.monotonic()
            if not self.clients or left <= 0:
                break
            for key, events in self.sel.select(left):
                if key.data == self._on_client:
                    self._on_client(key.fileobj, events)  # type: ignore[arg-type]
                elif key.data == self._on_wake:
                    self._on_wake(key.fileobj, events)
        for c in list(self.clients):
            self._drop_client(c)


def _resize(fd: int, rows: int, cols: int) -> None:
    from engine.core.runtime import linux
    linux.resize_tty(fd, rows, cols)


# --------------------------------------------------------------------- entry point


def _redirect_stdio(state_dir: str) -> None:
    """stdin from /dev/null, stdout and stderr to DIR/monitor.log."""
    null = os.open(os.devnull, os.O_RDONLY)
    logfd = os.open(os.path.join(state_dir, "monitor.log"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(null, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(null)
    os.close(logfd)


def _report(sync_fd: int, obj: dict[str, Any]) -> None:
    try:
        os.write(sync_fd, json.dumps(obj).encode() + b"\n")
    except OSError as exc:
        log(f"cannot report to the daemon: {exc}")
    try:
        os.close(sync_fd)
    except OSError:
        pass


def _settle_memory() -> None:
    """Keep the long-lived monitor small once it is set up: what exists now is never
    traversed by the collector again (its pages stay shared with the fork server's),
    and the C heap returns what the set-up freed."""
    import gc
    gc.collect()
    gc.freeze()
    try:
        from engine.core.runtime import linux
        linux.trim_heap()
    except Exception as exc:  # only memory is at stake
        log(f"heap trim failed: {exc!r}")


def make_backend(opts: Options) -> Backend:
    """The backend for a parsed command line."""
    state = os.path.abspath(opts.state)
    root = opts.runc_root or os.path.join(os.path.dirname(state), ".runc")
    if opts.command == "create":
        bundle = os.path.abspath(opts.bundle)
        if opts.runtime == "runc":
            return RuncContainer(opts.id, bundle, root, state)
        return BuiltinContainer(bundle)
    if opts.runtime == "runc":
        return RuncExec(opts.container_id, os.path.abspath(opts.process), root, state)
    with open(opts.process, "rb") as f:
        process = json.load(f)
    return BuiltinExec(process, opts.target_pid, opts.cgroups_path)


def run(opts: Options) -> int:
    """The real monitor (after the detaching fork)."""
    os.set_inheritable(opts.sync_fd, False)  # the container must not hold it
    state = os.path.abspath(opts.state)
    os.chdir(state)
    _redirect_stdio(state)
    backend: Backend | None = None
    try:
        from engine.core.runtime import linux
        linux.set_subreaper()
        backend = make_backend(opts)
        # every runtime makes the terminal inside the container and sends its master
        stdio = Stdio(terminal=backend.terminal, stdin_open=opts.stdin_open,
                      open_pty=False)
        mon = Monitor(state_dir=state, backend=backend, stdio=stdio,
                      stdin_once=opts.stdin_once,
                      log_writer=opts.log_writer if opts.command == "create" else "",
                      log_context=opts.log_context)
        mon.install_signals()
        pid = mon.prepare()
    except Exception as exc:
        message = exc.message if isinstance(exc, StartError) else str(exc) or repr(exc)
        code = exc.exit_code if isinstance(exc, StartError) else 125
        log(f"{opts.command} failed: {message}")
        _report(opts.sync_fd, {"message": message, "exit_code": code})
        if backend is not None:
            backend.cleanup()
        return 1
    _report(opts.sync_fd, {"pid": pid, "monitor_pid": os.getpid()})
    backend.settle()
    _settle_memory()
    mon.serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["forkserver"]:
        return forkserver_main(argv[1:])
    try:
        opts = parse_args(argv)
    except ValueError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    # Detach: the daemon reaps this first process at once; the real monitor is
    # re-parented to init and is no child of the daemon.
    if os.fork():
        os._exit(0)
    try:
        return run(opts)
    except BaseException as exc:  # last resort: say why in monitor.log
        log(f"fatal: {exc!r}")
        raise


# --------------------------------------------------------------------- fork server
#
# Starting Python and importing the runtime costs tens of milliseconds and a few MB in
# every monitor. The fork server pays it once per daemon: it is started like a monitor
# (``monitor forkserver --control-fd N``), imports what every monitor needs, and then
# forks one monitor per request it reads on its control socket (a SOCK_SEQPACKET pair
# with the daemon). The forked monitors share the imported modules' memory with it and
# with each other (copy-on-write). It exits when the daemon's end is closed, which the
# kernel does when the daemon dies, however it dies.
#
# A request is one message: the monitor's arguments separated by NUL bytes (without
# ``--sync-fd``), with two fds attached (SCM_RIGHTS): the sync pipe's write end and
# ``monitor.log``. The server forks twice (like ``main``): the first child starts a
# session, the monitor in the second runs ``run()`` with ``--sync-fd`` set to the fd
# it got and reports on it as usual. The server answers each request with one message:
# the pid of the first child, which is the monitor's process group (the daemon kills
# that group when the monitor never reports), or ``-errno`` when it could not fork.

#: Modules every monitor uses, imported by the fork server before it forks any.
FORKSERVER_PRELOAD = ("engine.core.runtime.linux",)
_FDS_PER_REQUEST = 2
# Larger than any message the daemon's socket can send (its send buffer's size).
_FORK_REQUEST_MAX = 1024 * 1024


def forkserver_main(argv: list[str]) -> int:
    """``monitor forkserver --control-fd N``: serve fork requests until EOF."""
    if len(argv) != 2 or argv[0] != "--control-fd" or not argv[1].isdigit():
        print("monitor: usage: monitor forkserver --control-fd N", file=sys.stderr)
        return 2
    import _socket
    import gc
    import importlib
    control = _socket.socket(fileno=int(argv[1]))
    control.setblocking(True)
    for name in FORKSERVER_PRELOAD:
        importlib.import_module(name)
    preloaded: set[str] = set()
    fds_space = _socket.CMSG_SPACE(_FDS_PER_REQUEST * 4)
    while True:
        # nothing the monitors never touch should be copied by the collector's writes
        gc.collect()
        gc.freeze()
        try:
            data, ancillary, flags, _addr = control.recvmsg(_FORK_REQUEST_MAX, fds_space)
        except InterruptedError:
            continue
        fds = _received_fds(ancillary)
        if not data:  # the daemon closed its end (or died): we are done
            for fd in fds:
                os.close(fd)
            return 0
        if len(fds) != _FDS_PER_REQUEST or flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
            log(f"fork server: a bad request ({len(fds)} fds, flags {flags:#x}) refused")
            for fd in fds:
                os.close(fd)
            pgid = -errno.EMSGSIZE
        else:
            args = [a.decode("utf-8", "surrogateescape") for a in data.split(b"\0")]
            _preload_for(args, preloaded)
            pgid = _fork_monitor(control, args, *fds)
        try:
            control.sendall(str(pgid).encode())
        except OSError:
            return 0  # the daemon is gone


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    import _socket
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += struct.unpack(f"{usable // 4}i", payload[:usable])
    return fds


def _fork_monitor(control: Any, args: list[str], sync_fd: int, log_fd: int) -> int:
    """Fork a detached monitor for ``args``; reap the intermediate process and return
    its pid (the monitor's process group), or ``-errno``."""
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        log(f"fork server: fork failed: {exc}")
        pid = -(exc.errno or 1)
    if pid == 0:
        code = 1
        try:
            control.close()
            os.setsid()
            if os.fork() == 0:
                code = _forked_monitor(args, sync_fd, log_fd)
            else:
                code = 0
        except BaseException as exc:
            log(f"fatal: {exc!r}")
        finally:
            os._exit(code)
    os.close(sync_fd)
    os.close(log_fd)
    while pid > 0:
        try:
            os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            break
    return pid


def _forked_monitor(args: list[str], sync_fd: int, log_fd: int) -> int:
    """The monitor, in the fork server's grandchild: what ``main`` does after its
    detaching fork."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.chdir("/")
    try:
        opts = parse_args([*args, "--sync-fd", str(sync_fd)])
    except ValueError as exc:
        log(f"monitor: {exc}")
        return 2
    try:
        return run(opts)
    except BaseException as exc:
        log(f"fatal: {exc!r}")
        return 1


def _preload_for(args: list[str], preloaded: set[str]) -> None:
    """Import what the monitor for ``args`` will use, once, so that every monitor
    shares it: the runc adapter, and a log writer of the engine's own (third-party
    writers stay out of the fork server: they may start threads). Only the first
    monitor of a kind waits for it."""
    wanted = []
    for i, arg in enumerate(args[:-1]):
        if arg == "--runtime" and args[i + 1] == "runc":
            wanted.append("engine.core.runtime.runc")
        elif arg == "--log-writer" and args[i + 1].startswith("engine."):
            wanted.append(args[i + 1].partition(":")[0])
    for name in wanted:
        if name in preloaded:
            continue
        preloaded.add(name)
        try:
            import importlib
            importlib.import_module(name)
        except Exception as exc:  # the monitor imports it again and says why
            log(f"fork server: cannot preload {name}: {exc!r}")


if __name__ == "__main__":
    sys.exit(main())
