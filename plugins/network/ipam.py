"""IPv4 address management for the bridge driver.

A :class:`Pool` is one network's subnet: the gateway takes the first host address
(``.1``) and endpoints get the next free addresses in order, as Docker's default IPAM
does. A released address is reused only after the allocator has wrapped around the
subnet, so a container that just left does not hand its address to the next one at once.

Pools are plain data (``to_dict``/``from_dict``) so the driver can persist them next to
its other state. Nothing here touches the kernel.
"""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from engine.sdk.errors import Conflict, Forbidden, InvalidArgument
from engine.sdk.files import atomic_write


class PoolExhausted(Forbidden):
    """Every address of the subnet is taken."""


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """Parse ``10.1.0.0/24``; host bits are an error, as in Docker."""
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid subnet {subnet!r}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"only IPv4 subnets are supported: {subnet}")
    if net.prefixlen > 30:
        raise InvalidArgument(f"subnet {subnet} is too small (at most /30)")
    if ipaddress.ip_address(subnet.split("/")[0]) != net.network_address:
        raise InvalidArgument(f"invalid subnet {subnet} : it should be {net}")
    return net


def mac_for(ip: str) -> str:
    """Docker's MAC address for an IPv4 endpoint: ``02:42`` then the four address bytes."""
    b = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{x:02x}" for x in b)


class Pool:
    """The addresses of one subnet: a gateway and sequentially allocated endpoints."""

    def __init__(self, subnet: str, gateway: str = "", *,
                 allocated: dict[str, str] | None = None, last: str = "") -> None:
        self.net = parse_subnet(subnet)
        self.subnet = str(self.net)
        first = self.net.network_address + 1
        self.gateway = gateway or str(first)
        gw = ipaddress.IPv4Address(self.gateway)
        if gw not in self.net or gw in (self.net.network_address, self.net.broadcast_address):
            raise InvalidArgument(f"gateway {self.gateway} is not a host address of {self.subnet}")
        self.allocated: dict[str, str] = dict(allocated or {})   # ip -> endpoint id
        self.last = last

    @property
    def prefixlen(self) -> int:
        return self.net.prefixlen

    def _usable(self, ip: ipaddress.IPv4Address) -> bool:
        return (ip not in (self.net.network_address, self.net.broadcast_address)
                and str(ip) != self.gateway and str(ip) not in self.allocated)

    def allocate(self, owner: str, wanted: str = "") -> str:
        """Give ``owner`` an address: ``wanted`` if free, else the next one in order."""
        if wanted:
            try:
                ip = ipaddress.IPv4Address(wanted)
            except ValueError:
                raise InvalidArgument(f"invalid IPv4 address {wanted!r}") from None
            if ip not in self.net:
                raise InvalidArgument(f"no configured subnet contains IP address {wanted}")
            if not self._usable(ip):
                raise Conflict(f"Address already in use: {wanted}")
            self.allocated[wanted] = owner
            return wanted
        last = ipaddress.IPv4Address(self.last) if self.last else self.net.network_address
        start = int(last)
        lo, hi = int(self.net.network_address) + 1, int(self.net.broadcast_address) - 1
        size = hi - lo + 1
        for step in range(1, size + 1):
            n = lo + (start - lo + step) % size
            ip = ipaddress.IPv4Address(n)
            if self._usable(ip):
                self.allocated[str(ip)] = owner
                self.last = str(ip)
                return str(ip)
        raise PoolExhausted(f"no available IPv4 addresses on network subnet {self.subnet}")

    def release(self, ip: str) -> None:
        """Free ``ip``; releasing an unknown address is a no-op."""
        self.allocated.pop(ip, None)

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": self.subnet, "gateway": self.gateway,
                "allocated": dict(self.allocated), "last": self.last}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Pool":
        return cls(d["subnet"], d.get("gateway", ""), allocated=d.get("allocated"),
                   last=d.get("last", ""))


def write_json(path: Path, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON (temp file, fsync, rename)."""
    atomic_write(path, json.dumps(obj).encode(), make_parents=True)


class Leases:
    """Host-wide address leases on a bridge, shared by every daemon on the machine.

    A bridge device such as the default ``engine0`` is a host-wide resource: two
    daemons with different data roots (tests, a second engine) may put containers on
    it, each with a pool of its own. Before an address is used, it is leased with a
    file created exclusively under ``root/<bridge>/<ip>``, naming the network namespace
    that holds it. A lease whose namespace is gone is stale and may be taken over.
    """

    def __init__(self, root: str = "/run/engine-ipam") -> None:
        self.root = Path(root)

    def _path(self, bridge: str, ip: str) -> Path:
        return self.root / bridge / ip

    @staticmethod
    def _alive(owner: dict[str, Any]) -> bool:
        ns = owner.get("netns") or ""
        return bool(ns) and os.path.exists(ns) and os.path.ismount(ns)

    def take(self, bridge: str, ip: str, endpoint: str, netns: str) -> bool:
        """Lease ``ip``; False when a live endpoint elsewhere holds it."""
        path = self._path(bridge, ip)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"endpoint": endpoint, "netns": netns}).encode()
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                if owner.get("endpoint") == endpoint:
                    return True
                if self._alive(owner):
                    return False
                path.unlink(missing_ok=True)   # stale: its namespace is gone
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        return False

    def forget(self, bridge: str) -> None:
        """Remove the bridge's (empty) lease directory, and the root once it is empty."""
        for d in (self.root / bridge, self.root):
            try:
                d.rmdir()
            except OSError:   # not empty (other endpoints or bridges), or gone
                return

    def drop(self, bridge: str, ip: str, endpoint: str) -> None:
        """Give the lease back if ``endpoint`` holds it."""
        path = self._path(bridge, ip)
        try:
            if json.loads(path.read_text() or "{}").get("endpoint") == endpoint:
                path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
