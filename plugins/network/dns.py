"""The embedded DNS server of user-defined bridge networks.

One asyncio UDP server per network listens on the network's gateway address, port 53,
in the host's namespace; containers on the network get that address as their
nameserver. It answers ``A`` queries for the names of the network's endpoints
(container names, aliases, short ids) from a table the driver keeps, and forwards every
other query to the host's upstream resolvers (``/etc/resolv.conf``, loopback ones
skipped) with a timeout. On ``--internal`` networks nothing is forwarded: unknown names
are answered ``REFUSED``.

The wire format (RFC 1035) is parsed by hand: a header, one question, and answers built
from the question's own bytes.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("engine.driver.bridge.dns")

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5
TTL = 600
FORWARD_TIMEOUT = 3.0


class DNSFormatError(ValueError):
    """The packet is not a well-formed DNS query."""


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str          # lower case, no trailing dot
    qtype: int
    qclass: int
    raw: bytes         # the question section as received (name + type + class)


def parse_query(data: bytes) -> Question:
    """Parse a query's header and its first question (compression is not used in
    questions by real resolvers; a pointer here is a format error)."""
    if len(data) < 12:
        raise DNSFormatError("short header")
    qid, flags, qdcount = struct.unpack("!HHH", data[:6])
    if flags & 0x8000:
        raise DNSFormatError("not a query")
    if qdcount < 1:
        raise DNSFormatError("no question")
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            raise DNSFormatError("truncated name")
        n = data[pos]
        if n & 0xC0:
            raise DNSFormatError("compressed question name")
        pos += 1
        if n == 0:
            break
        if pos + n > len(data):
            raise DNSFormatError("truncated label")
        labels.append(data[pos:pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(data):
        raise DNSFormatError("truncated question")
    qtype, qclass = struct.unpack("!HH", data[pos:pos + 4])
    return Question(qid, flags, ".".join(labels).lower(), qtype, qclass, data[12:pos + 4])


def build_response(q: Question, rcode: int = RCODE_OK, addresses: list[str] = ()) -> bytes:
    """An authoritative answer to ``q`` with one A record per address."""
    flags = 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080 | (rcode & 0xF)  # QR AA RD RA
    out = [struct.pack("!HHHHHH", q.id, flags, 1, len(addresses), 0, 0), q.raw]
    for a in addresses:
        # the name is a pointer to the question's name at offset 12
        out.append(struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4))
        out.append(ipaddress.IPv4Address(a).packed)
    return b"".join(out)


def error_response(data: bytes, rcode: int) -> bytes:
    """A header-only answer for a packet we could not parse (echoes its id)."""
    qid = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
    return struct.pack("!HHHHHH", qid, 0x8000 | 0x0080 | rcode, 0, 0, 0, 0)


def upstream_servers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The host's resolvers, without loopback ones (unreachable from a container's
    point of view, and a forwarding loop risk)."""
    try:
        text = open(resolv_conf).read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            if not ip.is_loopback:
                out.append(str(ip))
    return out


class _Forward(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future) -> None:
        self.fut = fut

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


async def forward(data: bytes, servers: list[str],
                  timeout: float = FORWARD_TIMEOUT) -> bytes | None:
    """Send the query to each upstream in turn; the first answer wins."""
    loop = asyncio.get_running_loop()
    per = timeout / max(len(servers), 1)
    for server in servers:
        fut = loop.create_future()
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Forward(fut), remote_addr=(server, 53), family=family)
        try:
            transport.sendto(data)
            answer = await asyncio.wait_for(fut, per)
            if answer[:2] == data[:2]:
                return answer
        except (asyncio.TimeoutError, OSError):
            continue
        finally:
            transport.close()
    return None


def _host_upstreams(client_ip: str) -> list[str]:
    return upstream_servers()


class Resolver(asyncio.DatagramProtocol):
    """The server for one network: ``lookup(name)`` gives the network's addresses for a
    name (empty when it has none); ``upstreams(client_ip)`` the servers to forward the
    other names to (a container's ``--dns``, else the host's)."""

    def __init__(self, lookup: Callable[[str], list[str]], *, forward_queries: bool = True,
                 upstreams: Callable[[str], list[str]] = _host_upstreams) -> None:
        self.lookup = lookup
        self.forward_queries = forward_queries
        self.upstreams = upstreams
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def answer_local(self, data: bytes) -> bytes | None:
        """The answer when it is ours to give; ``None`` means "forward it"."""
        try:
            q = parse_query(data)
        except DNSFormatError:
            return error_response(data, RCODE_FORMERR)
        if q.qclass != CLASS_IN:
            return build_response(q, RCODE_REFUSED)
        addrs = self.lookup(q.name)
        if addrs:
            # ours: A records for A queries, an empty answer for other types (AAAA...)
            return build_response(q, RCODE_OK, addrs if q.qtype == TYPE_A else [])
        if not self.forward_queries:
            return build_response(q, RCODE_REFUSED)
        if "." not in q.name:
            return build_response(q, RCODE_NXDOMAIN)   # a single label is never global
        return None

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.answer_local(data)
        if reply is not None:
            if self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        task = asyncio.ensure_future(self._forward(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _forward(self, data: bytes, addr) -> None:
        answer = await forward(data, self.upstreams(addr[0]))
        if answer is None:
            try:
                answer = build_response(parse_query(data), RCODE_SERVFAIL)
            except DNSFormatError:  # pragma: no cover - checked before forwarding
                return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.transport is not None:
            self.transport.close()


async def serve(address: str, lookup: Callable[[str], list[str]], *,
                forward_queries: bool = True, port: int = 53,
                upstreams: Callable[[str], list[str]] = _host_upstreams) -> Resolver:
    """Start a resolver on ``address:port`` (UDP). The address must be configured on an
    interface already (the bridge's gateway address)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the bridge may still be down
        sock.bind((address, port))
        sock.setblocking(False)
        _, proto = await loop.create_datagram_endpoint(
            lambda: Resolver(lookup, forward_queries=forward_queries, upstreams=upstreams),
            sock=sock)
    except BaseException:
        sock.close()
        raise
    return proto
