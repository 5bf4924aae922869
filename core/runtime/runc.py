"""Adapter for an external OCI runtime binary (runc, or crun which takes the same flags).

Plain synchronous functions: the monitor calls them directly (it has no event loop) and
the daemon through an executor. Every call passes ``--root`` so that several daemons on
one machine keep separate runtime state; the default root sits beside the container
state directories (``<parent of state dir>/.runc``).

``create`` and ``exec`` hand their stdio fds to the runtime, which passes them on to the
container process (detached mode). With a terminal the runtime makes the pty itself and
sends its master over a console socket (``SCM_RIGHTS``); these functions listen on that
socket and return the master fd.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any
from collections.abc import Sequence

DEFAULT_BINARY = "runc"
CONSOLE_TIMEOUT = 30.0


class RuncError(Exception):
    """A runtime command failed; ``message`` is the runtime's own error text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def default_root(state_dir: str) -> str:
    """The runtime root for containers whose state directories share a parent."""
    return os.path.join(os.path.dirname(os.path.abspath(state_dir)), ".runc")


class Runc:
    """One runtime root; ``log_file`` receives the runtime's JSON log lines."""

    def __init__(self, root: str, *, binary: str = DEFAULT_BINARY,
                 log_file: str | None = None) -> None:
        self.root = root
        self.binary = binary
        self.log_file = log_file

    # ---- plumbing

    def _argv(self, *args: str) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if self.log_file:
            argv += ["--log", self.log_file, "--log-format", "json"]
        return argv + list(args)

    def _log_size(self) -> int:
        try:
            return os.stat(self.log_file).st_size if self.log_file else 0
        except OSError:
            return 0

    def _error(self, since: int, proc_stderr: bytes, fallback: str) -> RuncError:
        """The most useful error text: the last error logged after offset ``since``,
        else the last line of stderr."""
        message = ""
        if self.log_file:
            try:
                with open(self.log_file, "rb") as f:
                    f.seek(since)
                    lines = f.read().splitlines()[-20:]
            except OSError:
                lines = []
            for line in reversed(lines):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("level") in ("error", "fatal"):
                    message = str(entry.get("msg", ""))
                    break
        if not message:
            tail = proc_stderr.decode(errors="replace").strip().splitlines()
            message = tail[-1] if tail else fallback
        return RuncError(message)

    def _run(self, *args: str, timeout: float = 60.0) -> bytes:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        since = self._log_size()
        proc = subprocess.run(self._argv(*args), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise self._error(since, proc.stderr, f"{self.binary} {args[0]} failed "
                                           f"(exit {proc.returncode})")
        return proc.stdout

    def _spawn(self, args: list[str], stdio: Sequence[int],
               console_socket: str | None) -> int | None:
        """Run a command that hands stdio on; with ``console_socket`` receive the pty
        master the runtime sends there and return it."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        since = self._log_size()
        listener = None
        if console_socket:
            try:
                os.unlink(console_socket)
            except FileNotFoundError:
                pass
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(console_socket)
            listener.listen(1)
            listener.settimeout(0.05)
            args = args[:1] + ["--console-socket", _reachable(console_socket)] + args[1:]
        master = None
        try:
            proc = subprocess.Popen(self._argv(*args), stdin=stdio[0], stdout=stdio[1],
                                    stderr=stdio[2])
            if listener is not None:
                master = _receive_master(listener, proc)
            proc.wait()
            if proc.returncode != 0:
                raise self._error(since, b"", f"{self.binary} {args[0]} failed "
                                       f"(exit {proc.returncode})")
            if listener is not None and master is None:
                raise RuncError(f"{self.binary} sent no console")
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        finally:
            if listener is not None:
                listener.close()
                try:
                    os.unlink(console_socket)  # type: ignore[arg-type]
                except OSError:
                    pass
        return master

    # ---- lifecycle

    def create(self, container_id: str, bundle: str, *, pid_file: str,
               stdio: Sequence[int] = (0, 1, 2),
               console_socket: str | None = None) -> int | None:
        """``runc create``: the container waits in ``runc init`` for :meth:`start`.
        Returns the pty master when ``console_socket`` is given (process.terminal)."""
        return self._spawn(["create", "--bundle", bundle, "--pid-file", pid_file,
                            container_id], stdio, console_socket)

    def start(self, container_id: str) -> None:
        """``runc start``: let the created container exec its process."""
        self._run("start", container_id)

    def exec(self, container_id: str, process_file: str, *, pid_file: str,
             stdio: Sequence[int] = (0, 1, 2),
             console_socket: str | None = None) -> int | None:
        """``runc exec --detach --process FILE``: run an extra process (started at
        once). Returns the pty master when ``console_socket`` is given."""
        return self._spawn(["exec", "--detach", "--pid-file", pid_file,
                            "--process", process_file, container_id],
                           stdio, console_socket)

    def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [container_id, str(signal)]
        self._run(*args)

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """``runc delete``; a container the runtime does not know is not an error."""
        try:
            self._run("delete", *(["--force"] if force else []), container_id)
        except RuncError as exc:
            if "does not exist" not in exc.message and "not exist" not in exc.message:
                raise

    def state(self, container_id: str) -> dict[str, Any]:
        """``runc state``: ``{"status": "created"|"running"|"stopped", "pid": N, ...}``."""
        return json.loads(self._run("state", container_id))

    def list(self) -> list[dict[str, Any]]:
        out = self._run("list", "--format", "json")
        return json.loads(out) if out.strip() and out.strip() != b"null" else []


def _reachable(path: str) -> str:
    """``path`` as the runtime can reach it: runc runs in the bundle directory, and a
    long absolute path does not fit ``sun_path``; ``/proc/PID/cwd`` is short."""
    full = os.path.abspath(path)
    if len(os.fsencode(full)) <= 107:
        return full
    if os.sep not in path:
        return f"/proc/{os.getpid()}/cwd/{path}"
    return full


def _receive_master(listener: socket.socket, proc: subprocess.Popen[bytes]) -> int | None:
    """Accept the runtime's console connection and take the fd it sends."""
    deadline = time.monotonic() + CONSOLE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except (TimeoutError, BlockingIOError):
            if proc.poll() is not None:
                return None
            continue
        with conn:
            conn.settimeout(CONSOLE_TIMEOUT)
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        for extra in fds[1:]:
            os.close(extra)
        return fds[0] if fds else None
    proc.kill()
    return None
