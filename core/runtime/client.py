"""The daemon's side of the monitor: spawn one, then talk to it over its socket.

:func:`create` and :func:`create_exec` have the process-wide :class:`ForkServer` fork
the monitor (or, failing that, spawn it as ``python -S`` with :func:`monitor_argv`)
in a new session and wait for its one-line sync report (the blocking part runs in an
executor). :class:`Monitor` speaks the socket protocol described in
:mod:`engine.core.runtime.monitor`; it needs nothing but the state directory, so a
restarted daemon finds its running containers again (live restore).
"""
from __future__ import annotations

import array
import asyncio
import atexit
import functools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

MODULE = "engine.core.runtime.monitor"
SOCKET_NAME = "monitor.sock"
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
START_TIMEOUT = 60.0
SYNC_TIMEOUT = 60.0
_SUN_PATH_MAX = 107

_log = logging.getLogger(__name__)


class MonitorError(Exception):
    """The monitor reported a failure (``exit_code`` as Docker: 125, 126, 127)."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class MonitorUnavailable(MonitorError):
    """The monitor is gone (or not answering) and left no exit record."""


# --------------------------------------------------------------------- spawning


def _log_tail(state_dir: str, limit: int = 2000) -> str:
    try:
        with open(os.path.join(state_dir, "monitor.log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _read_sync(fd: int, timeout: float) -> bytes:
    """Read the monitor's one-line report from the sync pipe (or EOF)."""
    deadline = time.monotonic() + timeout
    chunks = []
    with select.epoll() as ep:
        ep.register(fd, select.EPOLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not ep.poll(left):
                raise MonitorUnavailable("the monitor did not report in time")
            data = os.read(fd, 4096)
            chunks.append(data)
            # one line is the whole report (the container process may still hold a
            # copy of the pipe until it execs, so EOF can come late)
            if not data or b"\n" in data:
                return b"".join(chunks)


# The monitor runs with ``python -S`` (no site: it saves a few ms and ~2 MB per
# container, most of it an editable install's import hook) and this bootstrap, which
# makes the ``engine`` package and the daemon's import path available by hand.
_BOOTSTRAP = (
    "import sys, json\n"
    "engine_path, import_path = json.loads(sys.argv.pop(1))\n"
    "engine = type(sys)('engine')\n"
    "engine.__path__ = engine_path\n"
    "sys.modules['engine'] = engine\n"
    "sys.path[:] = [p for p in sys.path if p] + import_path\n"
    "from engine.core.runtime.monitor import main\n"
    "sys.exit(main())\n"
)


@functools.lru_cache(maxsize=1)
def _bootstrap_config() -> str:
    """Where ``engine``'s subpackages live and the daemon's import path, as JSON."""
    import importlib.util
    engine_path: list[str] = []
    for name in ("engine.core", "engine.plugins", "engine.sdk"):
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            parent = os.path.dirname(os.path.abspath(location))
            if os.path.basename(location) == name.rsplit(".", 1)[1] and \
                    parent not in engine_path:
                engine_path.append(parent)
    import_path = [p for p in sys.path if p and os.path.isdir(p)]
    return json.dumps([engine_path, import_path])


def monitor_argv(args: list[str], python: str = sys.executable) -> list[str]:
    """The command line that runs the monitor with ``args``."""
    return [python, "-S", "-c", _BOOTSTRAP, _bootstrap_config(), *args]


class ForkServer:
    """The daemon's handle on a monitor fork server (see :mod:`.monitor`).

    Started on first use; ``request`` hands it one monitor's arguments with the sync
    pipe and ``monitor.log``. The server dies with the daemon: it exits when its
    control socket reaches EOF, which the kernel delivers when the daemon is gone
    however it ended. A server started under another environment (the monitors would
    inherit it) is replaced. Thread-safe: the daemon calls it from executor threads.
    A forked copy of the owner starts a server of its own on first use.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._env: dict[str, str] = {}
        self._owner = 0  # the pid that started the server

    @property
    def pid(self) -> int:
        """The server's pid, 0 when none runs."""
        return self._proc.pid if self._proc is not None else 0

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                monitor_argv(["forkserver", "--control-fd", str(theirs.fileno())],
                             self.python),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True, cwd="/")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._env = dict(os.environ)
        self._owner = os.getpid()

    def request(self, args: list[str], sync_fd: int, log_fd: int,
                timeout: float = SYNC_TIMEOUT) -> int:
        """Have the server fork a monitor with ``args`` (without ``--sync-fd``);
        return the monitor's process group.

        Raises ``OSError`` when no server can be reached (the fds stay the caller's)
        and :class:`MonitorUnavailable` when the server does not answer in time (it
        is then killed with its process group).
        """
        payload = b"\0".join(os.fsencode(a) for a in args)
        fds = array.array("i", (sync_fd, log_fd)).tobytes()
        with self._lock:
            for attempt in (1, 2):
                self._ensure_started_locked()
                sock = self._sock
                assert sock is not None
                try:
                    sock.settimeout(timeout)
                    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    reply = sock.recv(64)
                except TimeoutError:
                    self._stop_locked(kill=True)
                    raise MonitorUnavailable("the monitor did not report in time") from None
                except OSError:
                    reply = b""
                if reply:
                    pgid = int(reply)
                    if pgid < 0:  # it could not fork, or could not read us
                        raise MonitorError(f"monitor fork server: {os.strerror(-pgid)}")
                    return pgid
                # the server died: a fresh one, once
                self._stop_locked(kill=True)
                if attempt == 2:
                    raise OSError("the monitor fork server died")
        raise AssertionError("unreachable")

    def ensure_started(self) -> int:
        """Start the server now unless it runs (a daemon may call this at start-up,
        from an executor, so that its first container does not wait for Python to
        start); return its pid."""
        with self._lock:
            self._ensure_started_locked()
            return self.pid

    def _ensure_started_locked(self) -> None:
        if self._owner and self._owner != os.getpid():
            self._disown_locked()
        if self._sock is None or self._env != os.environ or \
                (self._proc is not None and self._proc.poll() is not None):
            self._stop_locked()
            self._start()

    def stop(self) -> None:
        """Close the control socket and reap the server (the monitors it forked run
        on: they are not its children)."""
        with self._lock:
            if self._owner and self._owner != os.getpid():
                self._disown_locked()
            self._stop_locked()

    def _disown_locked(self) -> None:
        """In a forked copy of the owner: forget the owner's server (its socket is
        the owner's to use, its process the owner's to reap)."""
        if self._sock is not None:
            self._sock.close()  # our copy only: the owner's end stays open
        self._sock = None
        self._proc = None
        self._owner = 0

    def _stop_locked(self, kill: bool = False) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is None:
            return
        if kill:  # with anything it started in its group (never the monitors)
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


_servers: dict[str, ForkServer] = {}
_servers_lock = threading.Lock()


def fork_server(python: str = sys.executable) -> ForkServer:
    """The process-wide fork server for ``python`` (not started until used)."""
    with _servers_lock:
        server = _servers.get(python)
        if server is None:
            server = _servers[python] = ForkServer(python)
        return server


@atexit.register
def stop_fork_servers() -> None:
    """Stop every fork server of this process (the daemon calls it when it stops;
    a daemon that is killed leaves them to exit on EOF)."""
    with _servers_lock:
        servers = list(_servers.values())
    for server in servers:
        server.stop()


def spawn_monitor(args: list[str], state_dir: str, *, python: str = sys.executable,
                  timeout: float = SYNC_TIMEOUT, use_fork_server: bool = True
                  ) -> dict[str, Any]:
    """Run the monitor with ``args`` (without ``--sync-fd``) and return its report.

    Through the fork server of ``python`` unless ``use_fork_server`` is false or the
    server cannot be started; then as a process of its own. Synchronous: call it from
    an executor. Raises :class:`MonitorError` when the monitor reports a failure or
    dies without a report.
    """
    os.makedirs(state_dir, exist_ok=True)
    r, w = os.pipe()
    proc: subprocess.Popen[bytes] | None = None
    group = 0
    try:
        logfd = os.open(os.path.join(state_dir, "monitor.log"),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            if use_fork_server:
                try:
                    group = fork_server(python).request(args, w, logfd, timeout)
                except MonitorUnavailable:
                    raise
                except OSError as exc:
                    _log.warning("monitor fork server unavailable (%s): spawning", exc)
            if not group:
                proc = subprocess.Popen(
                    monitor_argv([*args, "--sync-fd", str(w)], python),
                    stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, pass_fds=(w,),
                    start_new_session=True, cwd="/")
                group = proc.pid
        finally:
            os.close(logfd)
        os.close(w)
        w = -1
        if proc is not None:
            proc.wait()  # the first process forks the real monitor and exits at once
        try:
            raw = _read_sync(r, timeout)
        except MonitorUnavailable:
            # stuck before reporting: end it and whatever it started in its group
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if not raw.strip():
        tail = _log_tail(state_dir)
        raise MonitorUnavailable("the monitor exited without a report"
                                 + (f": {tail}" if tail else ""))
    report = json.loads(raw.splitlines()[0])
    if "message" in report and "pid" not in report:
        raise MonitorError(str(report["message"]), int(report.get("exit_code", 125)))
    return report


async def create(*, container_id: str, bundle: str, state_dir: str,
                 runtime: str = "builtin", runc_root: str | None = None,
                 log_writer: str | None = None,
                 log_context: dict[str, Any] | None = None, stdin_open: bool = False,
                 stdin_once: bool = False, python: str = sys.executable) -> dict[str, Any]:
    """Spawn the monitor of a container; return ``{"pid": N, "monitor_pid": M}``.

    The container process exists but has not exec'd: :meth:`Monitor.start` runs it.
    ``runc_root`` (runc only) defaults to ``.runc`` beside the state directory.
    """
    args = ["create", "--id", container_id, "--bundle", os.path.abspath(bundle),
            "--state", os.path.abspath(state_dir), "--runtime", runtime]
    if runc_root:
        args += ["--runc-root", runc_root]
    if log_writer:
        args += ["--log-writer", log_writer,
                 "--log-context", json.dumps(log_context or {})]
    if stdin_open:
        args.append("--stdin-open")
    if stdin_once:
        args.append("--stdin-once")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, functools.partial(spawn_monitor, args, state_dir, python=python))


async def create_exec(*, exec_id: str, state_dir: str, target_pid: int,
                      process: dict[str, Any], cgroups_path: str = "",
                      runtime: str = "builtin", container_id: str | None = None,
                      runc_root: str | None = None, stdin_open: bool = False,
                      stdin_once: bool = True,
                      python: str = sys.executable) -> dict[str, Any]:
    """Spawn the monitor of an exec; ``process`` is an OCI process object.

    Returns ``{"pid": N, "monitor_pid": M}``; with runc ``pid`` is 0 until started
    (runc runs an exec at once, so the monitor defers it to :meth:`Monitor.start`).
    """
    os.makedirs(state_dir, exist_ok=True)
    process_file = os.path.join(os.path.abspath(state_dir), "process.json")
    tmp = process_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(process, f)
    os.rename(tmp, process_file)
    args = ["exec", "--id", exec_id, "--state", os.path.abspath(state_dir),
            "--target-pid", str(target_pid), "--process", process_file,
            "--runtime", runtime]
    if cgroups_path:
        args += ["--cgroups-path", cgroups_path]
    if container_id:
        args += ["--container-id", container_id]
    if runc_root:
        args += ["--runc-root", runc_root]
    if stdin_open:
        args.append("--stdin-open")
    if stdin_once:
        args.append("--stdin-once")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, functools.partial(spawn_monitor, args, state_dir, python=python))


# --------------------------------------------------------------------- talking


async def _open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a unix socket, also when its path is too long for ``sun_path``
    (through ``/proc/self/fd/N`` of an ``O_PATH`` handle on its directory)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return await asyncio.open_unix_connection(path)
    dfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(
            sock, f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dfd)
    return await asyncio.open_unix_connection(sock=sock)


class Monitor:
    """A handle on the monitor whose state directory is ``state_dir``."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.socket_path = os.path.join(self.state_dir, SOCKET_NAME)

    def __repr__(self) -> str:
        return f"Monitor({self.state_dir!r})"

    # ---- sync helpers (files only)

    def _read_json(self, name: str) -> Any:
        try:
            with open(os.path.join(self.state_dir, name), "rb") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def read_exit(self) -> dict[str, Any] | None:
        """The exit record (``exit.json``) once the process has exited, else None."""
        record = self._read_json("exit.json")
        return record if isinstance(record, dict) else None

    def pid(self) -> int:
        """The host pid of the container (or exec) process; 0 if not known."""
        pid = self._read_json("pid")
        return pid if isinstance(pid, int) else 0

    def monitor_pid(self) -> int:
        pid = self._read_json("monitor.pid")
        return pid if isinstance(pid, int) else 0

    def alive(self) -> bool:
        """True while the monitor runs and serves its socket."""
        pid = self.monitor_pid()
        if pid <= 0 or not os.path.exists(self.socket_path):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        # the pid may have been recycled since: check it is our monitor, serving this
        # directory (its working directory; a monitor forked by the fork server has
        # the server's command line)
        if MODULE.encode() not in cmdline:
            return False
        if b"\0--state\0" + os.fsencode(self.state_dir) + b"\0" in cmdline:
            return True
        try:
            return os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(self.state_dir)
        except OSError:
            return False

    # ---- protocol

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(_open_unix(self.socket_path), CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            raise MonitorUnavailable(f"cannot reach the monitor at {self.socket_path}: "
                                     f"{exc or type(exc).__name__}") from None

    async def _request(self, request: dict[str, Any], timeout: float | None
                       ) -> tuple[dict[str, Any], asyncio.StreamReader,
                                  asyncio.StreamWriter]:
        reader, writer = await self._connect()
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
        except (TimeoutError, OSError) as exc:
            writer.close()
            raise MonitorUnavailable(f"monitor {request.get('op')}: "
                                     f"{exc or type(exc).__name__}") from None
        except BaseException:
            writer.close()
            raise
        if not line:
            writer.close()
            raise MonitorUnavailable(f"monitor closed the connection on "
                                     f"{request.get('op')}")
        return json.loads(line), reader, writer

    async def _call(self, request: dict[str, Any],
                    timeout: float | None = REQUEST_TIMEOUT) -> dict[str, Any]:
        reply, _reader, writer = await self._request(request, timeout)
        writer.close()
        if reply.get("ok") is False:
            raise MonitorError(str(reply.get("message", "monitor error")),
                               int(reply.get("exit_code") or 125))
        return reply

    async def start(self) -> int:
        """Let the process exec; return its pid. Raises :class:`MonitorError` with
        Docker's exit code when it cannot (``exec: "x": executable file not found``)."""
        reply = await self._call({"op": "start"}, START_TIMEOUT)
        return int(reply.get("pid") or 0)

    async def attach(self, stdin: bool, stdout: bool, stderr: bool
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """Attach to the streams: ``(reader, writer, tty)``. The reader yields raw
        bytes with a tty, else stdcopy frames; bytes written go to the process's stdin
        (``writer.write_eof()`` ends it when the monitor runs with stdin-once). The
        reader reaches EOF after the process exited and its output is drained."""
        reply, reader, writer = await self._request(
            {"op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr},
            REQUEST_TIMEOUT)
        if reply.get("ok") is False:
            writer.close()
            raise MonitorError(str(reply.get("message", "attach failed")))
        return reader, writer, bool(reply.get("tty"))

    async def resize(self, height: int, width: int) -> None:
        await self._call({"op": "resize", "height": height, "width": width})

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        await self._call({"op": "kill", "signal": int(sig)})

    async def state(self) -> dict[str, Any]:
        """``{"pid", "running", "status", "started_at", "exit_code", "tty"}``; from
        ``exit.json`` when the monitor is already gone."""
        try:
            return await self._call({"op": "state"})
        except MonitorUnavailable:
            record = self.read_exit()
            if record is None:
                raise
            return {"pid": record.get("pid", 0), "running": False, "status": "exited",
                    "started_at": record.get("started_at", ""),
                    "exit_code": record.get("exit_code")}

    async def wait(self) -> dict[str, Any]:
        """Block until the process has exited and its output is drained; return
        ``{"exit_code", "oom_killed", "started_at", "finished_at"}``."""
        try:
            reply, _reader, writer = await self._request({"op": "wait"}, None)
            writer.close()
            if "exit_code" in reply:
                return reply
        except MonitorUnavailable:
            pass
        # the monitor finished (or is finishing): it wrote exit.json before going
        for _ in range(50):
            record = self.read_exit()
            if record is not None:
                return record
            if not _running(self.monitor_pid()):
                break
            await asyncio.sleep(0.1)
        record = self.read_exit()
        if record is None:
            raise MonitorUnavailable(f"the monitor at {self.state_dir} is gone and "
                                     f"recorded no exit")
        return record


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for init is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
