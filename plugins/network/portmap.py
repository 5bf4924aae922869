"""Published ports: parsing Docker's port bindings and the userland proxy.

A published port is served two ways, as in Docker: a DNAT rule (see ``iptables.py``)
for traffic that reaches one of the host's addresses from outside or from the host
itself, and an asyncio proxy in the daemon process, bound to the host address and
port, for what the DNAT rule cannot catch (connections to 127.0.0.1). Binding the
proxy's socket first also reserves the host port: a port in use fails there, before
any rule exists.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, cast

from engine.sdk.errors import Conflict, InvalidArgument

log = logging.getLogger("engine.driver.bridge.portmap")

CONNECT_TIMEOUT = 5.0        # seconds to reach the container
PENDING_LIMIT = 256 * 1024   # bytes kept from a client until the container answers
UDP_IDLE = 30.0   # seconds a UDP flow lives without traffic


@dataclass(frozen=True)
class Binding:
    """One published port: host address and port to container port."""

    proto: str          # "tcp" | "udp"
    port: int           # container port
    host_ip: str        # "" or "0.0.0.0" means every address
    host_port: int      # 0 means "any free port"

    @property
    def key(self) -> str:
        return f"{self.port}/{self.proto}"


def _port(value: Any, what: str) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise InvalidArgument(f"invalid {what}: {value!r}") from None
    if not 0 <= n <= 65535:
        raise InvalidArgument(f"invalid {what}: {value!r}")
    return n


def parse_bindings(port_bindings: dict[str, Any] | None, exposed: dict[str, Any] | None = None,
                   publish_all: bool = False) -> list[Binding]:
    """Docker's ``HostConfig.PortBindings`` (``{"80/tcp": [{"HostIp", "HostPort"}]}``), plus
    every exposed port on an ephemeral host port with ``PublishAllPorts``."""
    out: list[Binding] = []
    seen: set[str] = set()
    for key, hosts in (port_bindings or {}).items():
        port_s, _, proto = key.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp"):
            raise InvalidArgument(f"unsupported protocol {proto!r} in port binding {key}")
        port = _port(port_s, "container port")
        seen.add(f"{port}/{proto}")
        for h in hosts or [{}]:
            h = h or {}
            hp = h.get("HostPort") or ""
            if "-" in hp:  # a range: the first free port of it is good enough here
                hp = hp.split("-", 1)[0]
            out.append(Binding(proto, port, h.get("HostIp") or "",
                               _port(hp, "host port") if hp else 0))
    if publish_all:
        for key in exposed or {}:
            port_s, _, proto = key.partition("/")
            proto = proto or "tcp"
            if f"{_port(port_s, 'container port')}/{proto}" not in seen and proto in ("tcp", "udp"):
                out.append(Binding(proto, int(port_s), "", 0))
    return out


class _UDPRelay(asyncio.DatagramProtocol):
    """One client flow of a UDP proxy: replies from the container go back to the client."""

    def __init__(self, front: "_UDPFront", client: tuple) -> None:
        self.front, self.client = front, client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = asyncio.get_running_loop().time()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.front.transport is not None:
            self.front.transport.sendto(data, self.client)


class _UDPFront(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple, _UDPRelay] = {}
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.ensure_future(self._relay(data, addr))
        self.tasks.add(task)  # the loop holds tasks weakly: keep this one alive
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, data: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        flow = self.flows.get(addr)
        if flow is None or flow.transport is None or flow.transport.is_closing():
            _, flow = await loop.create_datagram_endpoint(
                lambda: _UDPRelay(self, addr), remote_addr=self.target)
            self.flows[addr] = flow
        flow.last = loop.time()
        flow.transport.sendto(data)
        now = loop.time()
        for a, f in list(self.flows.items()):
            if now - f.last > UDP_IDLE and f.transport is not None:
                f.transport.close()
                del self.flows[a]

    def close(self) -> None:
        for f in self.flows.values():
            if f.transport is not None:
                f.transport.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()


class _Side(asyncio.Protocol):
    """One side of a proxied TCP connection (the client's or the container's).

    What one side receives is written straight to the other side's transport: no task,
    stream buffer or ``await`` per chunk, which is most of the cost of a short
    connection in Python. Flow control crosses over: when a side's send buffer fills,
    the other side stops reading until it drains. A half-close is passed on, and the
    connection ends when both directions have ended or either side is lost.
    """

    def __init__(self, proxy: Proxy, peer: _Side | None = None) -> None:
        self.proxy = proxy
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but the same API
        self.transport = cast(asyncio.Transport, transport)
        self.proxy.sides.add(self)

    def _peer_transport(self) -> asyncio.Transport | None:
        return self.peer.transport if self.peer is not None else None

    def data_received(self, data: bytes) -> None:
        out = self._peer_transport()
        if out is not None:
            out.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        out = self._peer_transport()
        if out is None:
            return True  # passed on once the other side is connected
        if self.peer is not None and self.peer.eof:
            out.close()
            return False  # both directions are done: close this side too
        if out.can_write_eof():
            out.write_eof()
        return True  # keep the other direction open

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.sides.discard(self)
        out = self._peer_transport()
        if out is not None:
            out.close()  # sends what is still buffered first

    def pause_writing(self) -> None:
        out = self._peer_transport()
        if out is not None:
            out.pause_reading()

    def resume_writing(self) -> None:
        out = self._peer_transport()
        if out is not None:
            out.resume_reading()


class _ClientSide(_Side):
    """The accepted side. It connects to the container (within ``CONNECT_TIMEOUT``;
    on failure the client's connection is closed, as docker-proxy does) and keeps what
    the client sends meanwhile (reading pauses above ``PENDING_LIMIT`` bytes)."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy)
        self.pending: list[bytes] = []
        self.pending_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._connect())
        self.proxy.tasks.add(task)  # the loop holds tasks weakly: keep this one alive
        task.add_done_callback(self.proxy.tasks.discard)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            super().data_received(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None and self.transport is not None
        timer = loop.call_later(CONNECT_TIMEOUT, task.cancel)
        try:
            up, side = await loop.create_connection(lambda: _Side(self.proxy, self),
                                                    *self.proxy.target)
        except (OSError, asyncio.CancelledError):
            self.transport.close()
            return
        finally:
            timer.cancel()
        if self.transport.is_closing():  # the client left meanwhile
            up.close()
            return
        if self.pending:
            up.write(b"".join(self.pending))
            self.pending.clear()
        self.peer = side  # from now on, what the client sends goes straight through
        if self.eof:
            up.write_eof()
        elif self.pending_size > PENDING_LIMIT:
            self.transport.resume_reading()


@dataclass
class Proxy:
    """A listening userland proxy for one binding; ``host_port`` is the bound port."""

    binding: Binding
    host_port: int
    target: tuple[str, int]
    sock: socket.socket
    server: Any = None
    tasks: set = field(default_factory=set)    # connects in progress
    sides: set = field(default_factory=set)    # open connections' sides (TCP)

    async def serve(self) -> None:
        """Start accepting (TCP) or receiving (UDP) on the already bound socket."""
        loop = asyncio.get_running_loop()
        if self.binding.proto == "tcp":
            self.server = await loop.create_server(lambda: _ClientSide(self), sock=self.sock)
        else:
            _, self.server = await loop.create_datagram_endpoint(
                lambda: _UDPFront(self.target), sock=self.sock)

    async def close(self) -> None:
        if self.server is None:
            self.sock.close()
            return
        if self.binding.proto == "tcp":
            self.server.close()
            for t in list(self.tasks):
                t.cancel()
            for side in list(self.sides):
                if side.transport is not None:
                    side.transport.abort()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except asyncio.TimeoutError:  # pragma: no cover - a stuck client
                pass
        else:
            self.server.close()
        self.server = None


def bind(binding: Binding, target: tuple[str, int]) -> Proxy:
    """Bind the host side of ``binding`` (port 0: the kernel picks a free one).

    Raises :class:`Conflict` with Docker's wording when the port is taken."""
    host_ip = binding.host_ip or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if binding.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # for UDP it would let two sockets share a port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host_ip, binding.host_port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise Conflict(f"Bind for {host_ip}:{binding.host_port} failed: "
                           "port is already allocated") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(
                f"cannot publish on {host_ip}: not an address of this host") from None
        raise
    return Proxy(binding=binding, host_port=s.getsockname()[1], target=target, sock=s)
