"""Destination addresses of the network log drivers (syslog, fluentd) and a socket
that reconnects. Standard library only: used by writers in the monitor."""
from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 5.0
RETRY_AFTER = 1.0  # seconds between reconnection attempts while the peer is down


@dataclass(frozen=True)
class Address:
    """``scheme`` is ``tcp``, ``udp``, ``unix`` (stream, falling back from datagram)
    or ``unixgram``; ``path`` for unix sockets, ``host``/``port`` otherwise."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return f"{self.scheme}://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_address(value: str, *, default_port: int, schemes: tuple[str, ...],
                  default_scheme: str = "tcp") -> Address:
    """Parse ``scheme://host:port``, ``host:port``, ``host`` or ``unix:///path``;
    raise ValueError when it is malformed or its scheme is not in ``schemes``."""
    value = value.strip()
    if "://" not in value:
        value = f"{default_scheme}://{value}"
    u = urlsplit(value)
    scheme = u.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"unsupported address scheme {scheme!r} in {value!r} "
                         f"(supported: {', '.join(schemes)})")
    if scheme in ("unix", "unixgram"):
        if not u.path:
            raise ValueError(f"address {value!r} has no socket path")
        return Address(scheme, path=u.path)
    try:
        port = u.port or default_port
    except ValueError:
        raise ValueError(f"invalid port in address {value!r}") from None
    if not u.hostname:
        raise ValueError(f"address {value!r} has no host")
    return Address(scheme, host=u.hostname, port=port)


class Connection:
    """A socket to ``addr`` that connects on first use and after a failure.

    :meth:`send` returns False when the message could not be delivered (the peer is
    down); it then waits :data:`RETRY_AFTER` before trying to connect again, so a dead
    peer costs one failed connect per second, not one per line. :meth:`abort` shuts
    the socket down from another thread, which unblocks a stuck ``send``.
    """

    def __init__(self, addr: Address, timeout: float = CONNECT_TIMEOUT) -> None:
        self.addr = addr
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.stream = addr.scheme in ("tcp", "unix")
        self.next_try = 0.0
        self.failures = 0
        self.last_error = ""

    def _connect(self) -> socket.socket:
        a = self.addr
        if a.scheme in ("unix", "unixgram"):
            kinds = [socket.SOCK_DGRAM, socket.SOCK_STREAM] if a.scheme == "unix" \
                else [socket.SOCK_DGRAM]
            err: OSError | None = None
            for kind in kinds:
                s = socket.socket(socket.AF_UNIX, kind)
                try:
                    s.settimeout(self.timeout)
                    s.connect(a.path)
                    s.settimeout(None)
                    self.stream = kind == socket.SOCK_STREAM
                    return s
                except OSError as e:
                    s.close()
                    err = e
                    if e.errno != errno.EPROTOTYPE:
                        break
            assert err is not None
            raise err
        kind = socket.SOCK_STREAM if a.scheme == "tcp" else socket.SOCK_DGRAM
        info = socket.getaddrinfo(a.host, a.port, type=kind)[0]
        s = socket.socket(info[0], kind)
        try:
            s.settimeout(self.timeout)
            s.connect(info[4])
            s.settimeout(None)  # blocking: a slow peer slows the writer (see mode)
        except OSError:
            s.close()
            raise
        return s

    def send(self, data: bytes, frame: Callable[[bytes], bytes] | None = None) -> bool:
        """Send one message; on a stream socket ``frame(data)`` is sent instead (a
        unix address may turn out to be either kind)."""
        for attempt in (0, 1):
            if self.sock is None:
                if time.monotonic() < self.next_try:
                    return False
                try:
                    self.sock = self._connect()
                except OSError as e:
                    self._failed(e)
                    return False
            try:
                if self.stream:
                    self.sock.sendall(frame(data) if frame else data)
                else:
                    self.sock.send(data)
                return True
            except OSError as e:
                self.close()
                if attempt:
                    self._failed(e)
        return False

    def _failed(self, e: OSError) -> None:
        self.failures += 1
        self.last_error = str(e)
        self.next_try = time.monotonic() + RETRY_AFTER

    def abort(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
