"""Published ports: parsing Docker's port bindings and the userland proxy.

Which path serves a published port's traffic (rules in ``iptables.py``):

* from outside the host, and from the host itself to one of its non-loopback
  addresses: the kernel, a DNAT rule in nat ``ENGINE`` (``PREROUTING``/``OUTPUT``);
* from the host to 127.0.0.1 (a port on 127.0.0.1 or on every address, TCP and UDP):
  the kernel too, a DNAT rule in nat ``ENGINE-LOCALHOST`` (``OUTPUT``), when the
  network's bridge routes loopback sources (``route_localnet=1``; Docker's
  ``--userland-proxy=false``);
* and the asyncio proxy in this module, in the daemon process, for the rest: a
  container reaching a port through a host address from its own bridge (hairpin: the
  DNAT rules skip traffic coming in on the bridge), IPv6 (``::1``, ``[::]:P``: the
  rules are IPv4's), and 127.0.0.1 where ``route_localnet`` cannot be set.

The proxy's socket is bound for every binding, first: that reserves the host port, so a
port in use fails there at once (``Conflict``, Docker's wording), before any rule
exists, and ``0`` gets a free port from the kernel.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from engine.sdk.errors import Conflict, InvalidArgument

log = logging.getLogger("engine.driver.bridge.portmap")

BUFSIZE = 65536
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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFSIZE):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


@dataclass
class Proxy:
    """A listening userland proxy for one binding; ``host_port`` is the bound port."""

    binding: Binding
    host_port: int
    target: tuple[str, int]
    sock: socket.socket
    server: Any = None
    tasks: set = field(default_factory=set)

    async def serve(self) -> None:
        """Start accepting (TCP) or receiving (UDP) on the already bound socket."""
        loop = asyncio.get_running_loop()
        if self.binding.proto == "tcp":
            self.server = await asyncio.start_server(self._handle, sock=self.sock)
        else:
            _, self.server = await loop.create_datagram_endpoint(
                lambda: _UDPFront(self.target), sock=self.sock)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
            except (OSError, asyncio.TimeoutError):
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            for w in (writer, up_w):
                w.close()
        except asyncio.CancelledError:
            writer.close()
            raise
        finally:
            self.tasks.discard(task)

    async def close(self) -> None:
        if self.server is None:
            self.sock.close()
            return
        if self.binding.proto == "tcp":
            self.server.close()
            for t in list(self.tasks):
                t.cancel()
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
