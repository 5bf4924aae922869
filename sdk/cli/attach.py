"""Interactive streams: ``start -a``, ``attach``, ``exec`` and the I/O of ``run``.

:func:`pump` moves bytes between the local terminal and a hijacked connection with a
plain ``select`` loop (no threads, no asyncio): container output is written to
stdout/stderr (demultiplexed unless the container has a TTY), local stdin is sent to
the container, and end of stdin half-closes the connection. :class:`TerminalSession`
puts a TTY in raw mode, sends the initial size and follows ``SIGWINCH``; signal
proxying forwards signals to the container through ``kill``.
"""
from __future__ import annotations

import os
import select
import signal

from . import Cli, StatusError
from .common import is_terminal
from .flags import BOOL, LIST, STR, Flag, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from collections.abc import Callable
    from typing import Any

_PROXIED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


class FrameParser:
    """Incremental stdcopy demultiplexer for data arriving in arbitrary pieces."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The payloads of the frames completed so far, in order, the payloads of
        consecutive frames of one stream joined (a log of a million lines comes
        back as a few large writes, not a million small ones)."""
        buf = self.buf
        buf += data
        n, pos = len(buf), 0
        out: list[tuple[int, bytes]] = []
        run: list[bytes] = []
        run_stream = -1
        from_bytes = int.from_bytes
        while pos + 8 <= n:
            end = pos + 8 + from_bytes(buf[pos + 4:pos + 8], "big")
            if end > n:
                break
            stream = buf[pos]
            if stream != run_stream:
                if run:
                    out.append((run_stream, b"".join(run)))
                    run = []
                run_stream = stream
            run.append(buf[pos + 8:end])
            pos = end
        if run:
            out.append((run_stream, b"".join(run)))
        del buf[:pos]
        return out


def _binary(stream: Any) -> Any:
    return getattr(stream, "buffer", stream)


def _write(stream: Any, data: bytes) -> None:
    try:
        stream.write(data)
    except TypeError:  # a text stream without a buffer (tests)
        stream.write(data.decode("utf-8", "replace"))
    stream.flush()


DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_PUNCT = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """``ctrl-p,ctrl-q`` -> ``b"\\x10\\x11"``: docker's detach-keys grammar (``ctrl-<a-z>``,
    ``ctrl-<@[\\]^_>`` or a single character per comma-separated key)."""
    keys = []
    for part in spec.split(","):
        if part.startswith("ctrl-") and len(part) == 6:
            c = part[5].lower()
            if "a" <= c <= "z":
                keys.append(ord(c) - ord("a") + 1)
            elif c in _CTRL_PUNCT:
                keys.append(_CTRL_PUNCT[c])
            else:
                raise StatusError(1, f"Unknown character: '{part}'")
        elif len(part) == 1:
            keys.append(ord(part))
        else:
            raise StatusError(1, f"Unknown character: '{part}'")
    return bytes(keys)


class EscapeDetector:
    """Watches terminal input for the detach sequence. Bytes of a partial match are
    held back and released if the sequence breaks, so nothing typed is lost."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Return the bytes to forward and whether the sequence is now complete."""
        out = bytearray()
        for b in data:
            if b == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            if self.matched:
                out += self.keys[:self.matched]
                self.matched = 0
                if b == self.keys[0]:
                    self.matched = 1
                    continue
            out.append(b)
        return bytes(out), False


def pump(cli: Cli, sock: Any, tty: bool, stdin: bool, detach_keys: str | None = None) -> bool:
    """Copy ``sock`` to stdout/stderr and, if ``stdin``, local stdin to ``sock``,
    until the daemon closes the stream. With a TTY, typing the detach sequence ends
    the session early: the return value is then True (detached)."""
    out = _binary(cli.out)
    err = _binary(cli.err)
    cli.out.flush()
    parser = None if tty else FrameParser()
    escape = (EscapeDetector(parse_detach_keys(detach_keys or DEFAULT_DETACH_KEYS))
              if tty and stdin else None)
    in_fd: int | None = None
    if stdin:
        try:
            in_fd = cli.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            in_fd = None
            data = cli.stdin.read()
            if data:
                sock.sendall(data.encode() if isinstance(data, str) else data)
            sock.close_write()
    sock_fd = sock.fileno()
    while True:
        if sock.pending():
            ready = [sock_fd]
        else:
            watch = [sock_fd] + ([in_fd] if in_fd is not None else [])
            ready, _, _ = select.select(watch, [], [])
        if sock_fd in ready:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return False
            if parser is None:
                _write(out, data)
            else:
                for stream, payload in parser.feed(data):
                    _write(err if stream == 2 else out, payload)
        if in_fd is not None and in_fd in ready:
            data = os.read(in_fd, 65536)
            if data and escape is not None:
                data, detached = escape.feed(data)
                if detached:
                    if data:
                        sock.sendall(data)
                    return True
                if not data:
                    continue
            if data:
                try:
                    sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    in_fd = None
            else:
                sock.close_write()
                in_fd = None


class TerminalSession:
    """Raw mode on the local terminal and size tracking for a container or exec TTY.

    ``resize`` is called with ``(height, width)`` now and on every ``SIGWINCH``. Use as
    a context manager; the terminal is restored on exit."""

    def __init__(self, cli: Cli, raw: bool, resize: Callable[[int, int], None] | None) -> None:
        self.cli = cli
        self.raw = raw and is_terminal(cli.stdin)
        self.resize = resize if is_terminal(cli.out) else None
        self._saved: Any = None
        self._old_winch: Any = None
        self._sending = False
        self._again = False

    def _send_size(self, *_: Any) -> None:
        """Send the terminal's size; a SIGWINCH that comes while a size is being sent
        (its handler runs in the middle) makes it send once more afterwards, instead
        of starting a second request on top of the first."""
        if self.resize is None:
            return
        if self._sending:
            self._again = True
            return
        self._sending = True
        try:
            while True:
                self._again = False
                try:
                    size = os.get_terminal_size(self.cli.out.fileno())
                    self.resize(size.lines, size.columns)
                except Exception:  # noqa: BLE001 - a failed resize must not end the session
                    return
                if not self._again:
                    return
        finally:
            self._sending = False

    def __enter__(self) -> TerminalSession:
        if self.raw:
            import termios
            import tty

            fd = self.cli.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setraw(fd)
        if self.resize is not None:
            # follow SIGWINCH before the first size goes out: a resize right after it
            # is not lost
            self._old_winch = signal.signal(signal.SIGWINCH, self._send_size)
            self._send_size()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.cli.stdin.fileno(), termios.TCSADRAIN, self._saved)


class SignalProxy:
    """Forward the usual terminating signals to the container while attached."""

    def __init__(self, cli: Cli, cid: str, enabled: bool) -> None:
        self.cli = cli
        self.cid = cid
        self.enabled = enabled
        self._old: dict[int, Any] = {}

    def _forward(self, signum: int, _frame: Any) -> None:
        from engine.sdk.client import APIClient, APIError, ConnectError

        name = signal.Signals(signum).name
        try:
            with APIClient(self.cli.host) as api:
                api.post(f"/containers/{self.cid}/kill", {"signal": name})
        except (APIError, ConnectError, OSError) as e:
            self.cli.warn(f"failed to forward signal {name}: {e}")

    def __enter__(self) -> SignalProxy:
        if self.enabled:
            for name in _PROXIED_SIGNALS:
                num = getattr(signal, name)
                try:
                    self._old[num] = signal.signal(num, self._forward)
                except (OSError, ValueError):
                    pass
        return self

    def __exit__(self, *exc: object) -> None:
        for num, old in self._old.items():
            signal.signal(num, old)


def interact(cli: Cli, cid: str, sock: Any, tty: bool, stdin: bool,
             detach_keys: str | None, sig_proxy: bool) -> bool:
    """Run the local side of an attached container: raw terminal and resizes with a
    TTY, signal forwarding without one, and the byte pump. True when the user
    detached."""
    resize = ((lambda h, w: cli.api.post(f"/containers/{cid}/resize", {"h": h, "w": w}))
              if tty else None)
    with TerminalSession(cli, raw=tty and stdin, resize=resize), \
            SignalProxy(cli, cid, sig_proxy and not tty):
        return pump(cli, sock, tty, stdin, detach_keys)


def attach_stream(cli: Cli, cid: str, stdin: bool, stdout: bool, stderr: bool,
                  detach_keys: str | None = None, logs: bool = False) -> Any:
    params = {"stream": True, "stdin": stdin, "stdout": stdout, "stderr": stderr,
              "logs": logs or None, "detachKeys": detach_keys or None}
    return cli.api.hijack("POST", f"/containers/{cid}/attach", params)


def check_tty(cli: Cli, attach_stdin: bool, tty: bool) -> None:
    if attach_stdin and tty and not is_terminal(cli.stdin):
        raise StatusError(1, "the input device is not a TTY")


# -- start -----------------------------------------------------------------------------

START = Spec("start", "start [OPTIONS] CONTAINER [CONTAINER...]",
             "Start one or more stopped containers", [
                 Flag("-a, --attach", BOOL, "Attach STDOUT/STDERR and forward signals"),
                 Flag("--detach-keys", STR, "Override the key sequence for detaching a "
                      "container"),
                 Flag("-i, --interactive", BOOL, "Attach container's STDIN"),
             ], min_args=1)


def cmd_start(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(START, argv)
    if not (opts.attach or opts.interactive):
        from engine.sdk.client import APIError

        failed = []
        for name in args:
            try:
                cli.api.post(f"/containers/{name}/start")
                cli.print(name)
            except APIError as e:  # report and go on, like docker
                cli.warn(str(e))
                failed.append(name)
        if failed:
            raise StatusError(1, "Error: failed to start containers: " + ", ".join(failed))
        return 0
    if len(args) > 1:
        raise StatusError(1, "you cannot start and attach multiple containers at once")
    info = cli.api.get(f"/containers/{args[0]}/json").json()
    cid, config = info["Id"], info.get("Config") or {}
    use_stdin = bool(opts.interactive and config.get("OpenStdin"))
    return attach_and_wait(cli, cid, config, use_stdin, opts.detach_keys, sig_proxy=True,
                           start=True)


def attach_and_wait(cli: Cli, cid: str, config: dict, use_stdin: bool,
                    detach_keys: str | None, sig_proxy: bool, start: bool = False) -> int:
    """``attach`` and ``start -a``: attach the streams (then start the container, with
    ``start``), copy them until the container exits or the client detaches, and
    return the container's exit status (0 on detach)."""
    tty = bool(config.get("Tty"))
    check_tty(cli, use_stdin, tty)
    sock = attach_stream(cli, cid, use_stdin, True, True, detach_keys)
    waiter = send_wait(cli, cid, "next-exit")
    try:
        if start:
            cli.api.post(f"/containers/{cid}/start")
        detached = interact(cli, cid, sock, tty, use_stdin, detach_keys, sig_proxy)
    except BaseException:
        waiter.close()
        raise
    finally:
        sock.close()
    if detached:
        waiter.close()
        return 0
    return wait_status(cli, waiter)


WAIT_REGISTERED_TIMEOUT = 1.0


def send_wait(cli: Cli, cid: str, condition: str) -> Any:
    """Send ``POST /containers/{id}/wait`` and give the daemon a moment to confirm it
    (by answering the headers) so that an instant exit after ``start`` is not
    missed; a daemon that holds the headers back only costs that moment."""
    waiter = cli.api.send("POST", f"/containers/{cid}/wait", {"condition": condition})
    waiter.wait_head(WAIT_REGISTERED_TIMEOUT)
    return waiter


def wait_status(cli: Cli, waiter: Any) -> int:
    """Read the answer of a pending ``/wait`` request: the exit code."""
    import json

    from engine.sdk.client import APIError

    try:
        body = json.loads(waiter.read() or b"{}")
    except APIError as e:
        raise StatusError(125, str(e)) from None
    err = body.get("Error")
    if err and err.get("Message"):
        raise StatusError(125, err["Message"])
    return int(body.get("StatusCode", 0))


# -- attach ----------------------------------------------------------------------------

ATTACH = Spec("attach", "attach [OPTIONS] CONTAINER",
              "Attach local standard input, output, and error streams to a running container",
              [Flag("--detach-keys", STR, "Override the key sequence for detaching a container"),
               Flag("--no-stdin", BOOL, "Do not attach STDIN"),
               Flag("--sig-proxy", BOOL, "Proxy all received signals to the process",
                    default=True)], min_args=1, max_args=1)


def cmd_attach(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(ATTACH, argv)
    info = cli.api.get(f"/containers/{args[0]}/json").json()
    cid, config = info["Id"], info.get("Config") or {}
    state = info.get("State") or {}
    if not state.get("Running"):
        raise StatusError(1, "You cannot attach to a stopped container, start it first")
    if state.get("Paused"):
        raise StatusError(1, "You cannot attach to a paused container, unpause it first")
    use_stdin = bool(not opts.no_stdin and config.get("OpenStdin"))
    return attach_and_wait(cli, cid, config, use_stdin, opts.detach_keys, opts.sig_proxy)


# -- exec ------------------------------------------------------------------------------

EXEC = Spec("exec", "exec [OPTIONS] CONTAINER COMMAND [ARG...]",
            "Execute a command in a running container", [
                Flag("-d, --detach", BOOL, "Detached mode: run command in the background"),
                Flag("--detach-keys", STR, "Override the key sequence for detaching a "
                     "container"),
                Flag("-e, --env", LIST, "Set environment variables"),
                Flag("--env-file", LIST, "Read in a file of environment variables"),
                Flag("-i, --interactive", BOOL, "Keep STDIN open even if not attached"),
                Flag("--privileged", BOOL, "Give extended privileges to the command"),
                Flag("-t, --tty", BOOL, "Allocate a pseudo-TTY"),
                Flag("-u, --user", STR, "Username or UID (format: "
                     '"<name|uid>[:<group|gid>]")'),
                Flag("-w, --workdir", STR, "Working directory inside the container"),
            ], min_args=2, interspersed=False)


def exec_body(opts: Any, cmd: list[str]) -> dict[str, Any]:
    """The ``POST /containers/{id}/exec`` body for the parsed ``exec`` flags."""
    from .opts import read_kv_file

    env: list[str] = []
    for path in opts.env_file:
        env.extend(read_kv_file(path, env_lookup=True))
    for item in opts.env:
        if "=" not in item and item in os.environ:
            item = f"{item}={os.environ[item]}"
        env.append(item)
    body: dict[str, Any] = {
        "User": opts.user or "",
        "Privileged": bool(opts.privileged),
        "Tty": bool(opts.tty),
        "AttachStdin": bool(opts.interactive) and not opts.detach,
        "AttachStderr": not opts.detach,
        "AttachStdout": not opts.detach,
        "Detach": bool(opts.detach),
        "DetachKeys": opts.detach_keys or "",
        "Env": env or None,
        "WorkingDir": opts.workdir or "",
        "Cmd": cmd,
    }
    return body


def cmd_exec(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(EXEC, argv)
    container, cmd = args[0], args[1:]
    body = exec_body(opts, cmd)
    if body["AttachStdin"]:
        check_tty(cli, True, body["Tty"])
    if body["Tty"] and is_terminal(cli.out):
        try:
            size = os.get_terminal_size(cli.out.fileno())
            body["ConsoleSize"] = [size.lines, size.columns]
        except OSError:
            pass
    exec_id = cli.api.post(f"/containers/{container}/exec", body=body).json()["Id"]
    if opts.detach:
        cli.api.post(f"/exec/{exec_id}/start", body={"Detach": True, "Tty": body["Tty"]})
        return 0
    sock = cli.api.hijack("POST", f"/exec/{exec_id}/start",
                          body={"Detach": False, "Tty": body["Tty"]})
    tty = body["Tty"]
    try:
        with TerminalSession(cli, raw=tty and body["AttachStdin"],
                             resize=(lambda h, w: cli.api.post(
                                 f"/exec/{exec_id}/resize", {"h": h, "w": w})) if tty else None):
            detached = pump(cli, sock, tty, body["AttachStdin"], opts.detach_keys)
    finally:
        sock.close()
    if detached:
        return 0
    info = cli.api.get(f"/exec/{exec_id}/json").json() or {}
    code = info.get("ExitCode")
    return int(code) if code is not None else 0

