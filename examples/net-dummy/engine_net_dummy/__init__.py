"""The ``dummy`` network driver: addresses without a wire.

Each network is an IPv4 subnet (from its IPAM configuration, ``10.123.0.0/24`` when it
has none); each endpoint gets the lowest free address of it and, in the container's
network namespace, a ``dummy`` interface carrying that address (on kernels built
without the dummy module, a veth pair with both ends inside the namespace). Containers on the same
network cannot reach each other: the driver shows how a network plugin assigns and
releases addresses and plumbs a namespace, nothing more.

Driver option ``create-interface=false`` skips the interface (addresses only).
Allocations are kept in the driver's state directory, one JSON file per network.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from engine.sdk import hookimpl
from engine.sdk.drivers import EndpointInfo, NetworkDriver, NetworkSpec, Sandbox
from engine.sdk.errors import Conflict, DriverError, InvalidArgument, NotFound

DEFAULT_SUBNET = "10.123.0.0/24"


def _ip(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", "ip", *args],
                          capture_output=True, text=True)


class DummyNetworkDriver(NetworkDriver):
    name = "dummy"
    needs_netns = True

    def _state(self, network_id: str) -> Path:
        return self.ctx.path(f"{network_id}.json")

    def _load(self, network_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._state(network_id).read_text())
        except FileNotFoundError:
            raise NotFound(f"dummy network {network_id[:12]} not found") from None

    def _save(self, network_id: str, state: dict[str, Any]) -> None:
        path = self._state(network_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    @property
    def plumbs(self) -> bool:
        return self.ctx.options.get("create-interface", "true").lower() != "false"

    async def create_network(self, network: NetworkSpec) -> None:
        configs = network.ipam.get("Config") or [{}]
        subnet_text = configs[0].get("Subnet") or DEFAULT_SUBNET
        try:
            subnet = ipaddress.IPv4Network(subnet_text)
        except ValueError as e:
            raise InvalidArgument(f"dummy network: invalid subnet {subnet_text!r}: {e}") from None
        if subnet.num_addresses < 4:
            raise InvalidArgument(f"dummy network: subnet {subnet} is too small")
        gateway = configs[0].get("Gateway") or str(next(subnet.hosts()))
        self._save(network.id, {"subnet": str(subnet), "gateway": gateway, "endpoints": {}})

    async def delete_network(self, network: NetworkSpec) -> None:
        try:
            self._state(network.id).unlink()
        except FileNotFoundError:
            pass

    async def join(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox,
                   options: dict[str, Any]) -> EndpointInfo:
        state = self._load(network.id)
        subnet = ipaddress.IPv4Network(state["subnet"])
        taken = set(state["endpoints"].values()) | {state["gateway"]}
        address = state["endpoints"].get(endpoint_id)
        if address is None:
            address = next((str(h) for h in subnet.hosts() if str(h) not in taken), None)
            if address is None:
                raise Conflict(f"dummy network {network.name}: no free address in {subnet}")
            state["endpoints"][endpoint_id] = address
            self._save(network.id, state)
        if self.plumbs and sandbox.netns_path:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._plumb, sandbox.netns_path, endpoint_id,
                                       f"{address}/{subnet.prefixlen}")
        return EndpointInfo(ip_address=address, ip_prefix_len=subnet.prefixlen,
                            gateway=state["gateway"])

    @staticmethod
    def _ifname(endpoint_id: str) -> str:
        return f"dm{endpoint_id[:10]}"

    def _plumb(self, netns: str, endpoint_id: str, cidr: str) -> None:
        ifname = self._ifname(endpoint_id)
        proc = _ip(netns, "link", "add", ifname, "type", "dummy")
        if proc.returncode != 0 and "Unknown device type" in proc.stderr:
            proc = _ip(netns, "link", "add", ifname, "type", "veth", "peer", "name", ifname + "p")
        if proc.returncode != 0:
            raise DriverError(f"dummy: ip link add {ifname}: {proc.stderr.strip()}")
        for args in (("addr", "add", cidr, "dev", ifname),
                     ("link", "set", ifname, "up")):
            proc = _ip(netns, *args)
            if proc.returncode != 0:
                _ip(netns, "link", "del", ifname)
                raise DriverError(f"dummy: ip {' '.join(args)}: {proc.stderr.strip()}")

    async def leave(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox) -> None:
        if self.plumbs and sandbox.netns_path and os.path.exists(sandbox.netns_path):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _ip, sandbox.netns_path, "link", "del",
                                       self._ifname(endpoint_id))
        try:
            state = self._load(network.id)
        except NotFound:
            return  # the network is gone: nothing left to release
        if state["endpoints"].pop(endpoint_id, None) is not None:
            self._save(network.id, state)


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_network_driver(DummyNetworkDriver)
