"""Network drivers served by out-of-process plugins (Docker's ``NetworkDriver`` protocol).

Each plugin found by :func:`engine.sdk.remote.discover` when the daemon starts becomes
a network driver named like the plugin (``docker network create -d myplugin net``); so
does a plugin whose socket appears later, when the daemon is first asked for it by name
(the ``engine_find_driver`` hook). The daemon's side of the protocol, as libnetwork's
remote driver does it:

- ``create_network``: ``NetworkDriver.CreateNetwork`` with the network's IPv4 pools
  (``IPv4Data``) and options (under ``com.docker.network.generic`` as well). A network
  without a subnet gets its pool from the plugin when it also implements
  ``IpamDriver`` (``RequestPool``, then ``RequestAddress`` for the gateway and for each
  endpoint; ``ReleaseAddress`` and ``ReleasePool`` give them back).
- ``join``: an address from the network's subnet (when it has one; the plugin may
  also choose it), ``CreateEndpoint``, then ``Join``, whose answer names the interface
  the plugin made in the host namespace (``SrcName``). The driver moves it into the
  container's namespace, names it ``<DstPrefix><n>``, gives it its MAC and address,
  brings it up and adds the gateway and static routes.
- ``leave``: the interface goes back to the host namespace under its original name
  (so the plugin can delete it), then ``Leave`` and ``DeleteEndpoint``.

Calls time out like the volume driver's (:mod:`engine.sdk.remote`); netlink work runs
in an executor. A step the kernel refuses while plugging the interface (a gateway
outside the endpoint's subnet, an address already taken) fails the join at once with
a typed error that names the plugin and the step (:func:`.bridge.netlink_step`); the
interface goes back to the host namespace, and ``Leave`` and ``DeleteEndpoint`` tell
the plugin to delete it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

from engine.sdk import hookimpl
from engine.sdk.drivers import DriverContext, EndpointInfo, NetworkDriver, NetworkSpec, Sandbox
from engine.sdk.errors import DriverError, EngineError, InvalidArgument
from engine.sdk.remote import (
    PluginSpec,
    find_remote_driver,
    plugin_client,
    register_remote_drivers,
    remote_driver_class,
)

from .bridge import _ipr, _link_index, netlink_step
from .ipam import Pool, mac_for

GENERIC = "com.docker.network.generic"
# names the built-in drivers own; a plugin cannot shadow them
RESERVED = frozenset({"bridge", "host", "null", "none", "overlay", "macvlan", "ipvlan"})
ROUTE_NEXTHOP, ROUTE_CONNECTED = 0, 1


# ---------------------------------------------------------------- netlink (blocking)


def plug_interface(*, src_name: str, netns_path: str, dst_prefix: str, address: str,
                   prefixlen: int, mac: str, gateway: str, routes: list[dict[str, Any]]) -> str:
    """Move ``src_name`` into the namespace and configure it; return its new name.

    A step the kernel refuses (a gateway outside the endpoint's subnet, an address
    already taken) raises a typed error naming the step (:func:`netlink_step`), after
    the interface went back to the host namespace under ``src_name``, where the
    plugin deletes it on ``Leave``."""
    with _ipr() as ip:
        idx = _link_index(ip, src_name)
        if idx is None:
            raise DriverError(f"the plugin's interface {src_name} does not exist")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netlink_step(f"moving the plugin's interface {src_name} into the container"):
                ip.link("set", index=idx, state="down")
                ip.link("set", index=idx, net_ns_fd=fd)
        finally:
            os.close(fd)
    ifname = src_name
    try:
        with _ipr(netns_path) as ns:
            idx = _link_index(ns, src_name)
            names = {lk.get_attr("IFLA_IFNAME") for lk in ns.get_links()}
            prefix = dst_prefix or "eth"
            new_name = next(f"{prefix}{i}" for i in range(len(names) + 1)
                            if f"{prefix}{i}" not in names)
            attrs: dict[str, Any] = {"ifname": new_name}
            if mac:
                attrs["address"] = mac
            with netlink_step(f"naming {src_name} {new_name}"
                              + (f" with MAC address {mac}" if mac else "")):
                ns.link("set", index=idx, **attrs)
            ifname = new_name
            if address:
                with netlink_step(f"adding address {address}/{prefixlen} to {ifname}"):
                    ns.addr("add", index=idx, address=address, prefixlen=prefixlen)
            with netlink_step(f"bringing {ifname} up"):
                ns.link("set", index=idx, state="up")
            for r in routes:
                dst = r.get("Destination") or ""
                if not dst:
                    continue
                if int(r.get("RouteType", ROUTE_NEXTHOP)) == ROUTE_CONNECTED:
                    with netlink_step(f"static route to {dst} on {ifname}"):
                        ns.route("add", dst=dst, oif=idx, scope=253)  # scope link
                elif r.get("NextHop"):
                    with netlink_step(f"static route to {dst} via {r['NextHop']}"):
                        ns.route("add", dst=dst, gateway=r["NextHop"], oif=idx)
            if gateway:
                with netlink_step(f"default route via gateway {gateway} on {ifname} "
                                  f"(address {address}/{prefixlen})"):
                    ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)
            return ifname
    except BaseException:
        try:
            unplug_interface(ifname=ifname, src_name=src_name, netns_path=netns_path)
        except Exception:  # the namespace goes with the failed start: the pair with it
            pass
        raise


def unplug_interface(*, ifname: str, src_name: str, netns_path: str) -> None:
    """Give the interface back to the host namespace as ``src_name``; a namespace or
    interface that is already gone is fine."""
    if not netns_path or not os.path.exists(netns_path):
        return
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # the daemon's
    try:
        with _ipr(netns_path) as ns:
            idx = _link_index(ns, ifname)
            if idx is None:
                return
            ns.link("set", index=idx, state="down")
            ns.link("set", index=idx, ifname=src_name)
            ns.link("set", index=idx, net_ns_fd=host)
    finally:
        os.close(host)


# ---------------------------------------------------------------- driver


class RemoteNetworkDriver(NetworkDriver):
    """Base class; :func:`driver_for` makes one subclass per plugin."""

    plugin: ClassVar[PluginSpec | None] = None
    needs_netns = True

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self.client = plugin_client(self.plugin, "network", ctx.options)
        self._state = Path(ctx.state_dir, "state.json")
        self.pools: dict[str, dict[str, Any]] = {}       # network id -> its address pool
        self.endpoints: dict[str, dict[str, Any]] = {}   # endpoint id -> what leave needs
        self._lock = asyncio.Lock()
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self._state.read_text())
        except (FileNotFoundError, ValueError):
            return
        self.pools = dict(doc.get("pools") or {})
        self.endpoints = dict(doc.get("endpoints") or {})

    def _save(self) -> None:
        self._state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state.with_name(".state.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"pools": self.pools, "endpoints": self.endpoints}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._state)

    async def _run(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(**kwargs))

    # -------------------------------------------------------------- networks

    async def capabilities(self) -> dict[str, Any]:
        return await self.client.call("NetworkDriver.GetCapabilities")

    async def create_network(self, network: NetworkSpec) -> None:
        configs = [c for c in (network.ipam.get("Config") or []) if c.get("Subnet")]
        pools = []
        for c in configs:
            net = ipaddress.ip_network(c["Subnet"], strict=False)
            if net.version != 4:
                continue
            gw = c.get("Gateway") or str(net.network_address + 1)
            pools.append({"AddressSpace": "LocalDefault", "Pool": str(net),
                          "Gateway": f"{gw}/{net.prefixlen}",
                          "AuxAddresses": c.get("AuxiliaryAddresses") or {}})
        remote_pool: dict[str, Any] | None = None
        if not pools and "IpamDriver" in await self.client.activate():
            remote_pool = await self._request_pool()
            pools.append({"AddressSpace": remote_pool["space"], "Pool": remote_pool["pool"],
                          "Gateway": remote_pool["gateway"], "AuxAddresses": {}})
        options: dict[str, Any] = {GENERIC: dict(network.options)}
        options.update(network.options)
        try:
            await self.client.call("NetworkDriver.CreateNetwork", {
                "NetworkID": network.id, "Options": options, "IPv4Data": pools,
                "IPv6Data": []})
        except BaseException:
            if remote_pool is not None:
                await self._release_pool(remote_pool)
            raise
        if remote_pool is not None:
            state: dict[str, Any] = remote_pool
        elif pools:
            first = configs[0]
            state = Pool(str(ipaddress.ip_network(first["Subnet"], strict=False)),
                         first.get("Gateway") or "").to_dict()
        else:
            return
        async with self._lock:
            self.pools[network.id] = state
            self._save()

    async def delete_network(self, network: NetworkSpec) -> None:
        await self.client.call("NetworkDriver.DeleteNetwork", {"NetworkID": network.id})
        async with self._lock:
            state = self.pools.pop(network.id, None)
            if state is not None:
                self._save()
        if state is not None and state.get("remote"):
            await self._release_pool(state)

    # -------------------------------------------------------------- IPAM

    async def _request_pool(self) -> dict[str, Any]:
        """A pool and its gateway from the plugin's ``IpamDriver`` (used when the
        plugin implements one and the network names no subnet)."""
        spaces = await self.client.call("IpamDriver.GetDefaultAddressSpaces")
        space = spaces.get("LocalDefaultAddressSpace") or "LocalDefault"
        got = await self.client.call("IpamDriver.RequestPool", {
            "AddressSpace": space, "Pool": "", "SubPool": "", "Options": {}, "V6": False})
        state = {"remote": True, "space": space, "pool_id": got.get("PoolID") or "",
                 "pool": got.get("Pool") or "", "gateway": ""}
        try:
            gw = await self.client.call("IpamDriver.RequestAddress", {
                "PoolID": state["pool_id"], "Address": "",
                "Options": {"RequestAddressType": "com.docker.network.gateway"}})
            state["gateway"] = gw.get("Address") or ""
        except BaseException:
            await self._release_pool(state)
            raise
        return state

    async def _release_pool(self, state: dict[str, Any]) -> None:
        try:
            if state.get("gateway"):
                await self.client.call("IpamDriver.ReleaseAddress", {
                    "PoolID": state["pool_id"],
                    "Address": state["gateway"].split("/")[0]})
            await self.client.call("IpamDriver.ReleasePool", {"PoolID": state["pool_id"]})
        except Exception as e:  # the plugin keeps its own books; do not fail the caller
            self.ctx.logger.warning("releasing IPAM pool %s: %s", state.get("pool_id"), e)

    # -------------------------------------------------------------- endpoints

    async def _allocate(self, network: NetworkSpec, endpoint_id: str,
                        wanted: str) -> tuple[str, int, str]:
        """(address, prefix length, gateway) from the network's pool, or empty."""
        async with self._lock:
            d = self.pools.get(network.id)
            if d is None:
                if wanted:
                    raise InvalidArgument("user specified IP address is supported only when "
                                          "connecting to networks with user configured subnets")
                return "", 0, ""
            if d.get("remote"):
                got = await self.client.call("IpamDriver.RequestAddress", {
                    "PoolID": d["pool_id"], "Address": wanted, "Options": {}})
                try:
                    addr = ipaddress.ip_interface(got.get("Address") or "")
                except ValueError:
                    raise DriverError(f"IPAM plugin {self.name} answered an invalid address "
                                      f"{got.get('Address')!r}") from None
                return str(addr.ip), addr.network.prefixlen, d["gateway"].split("/")[0]
            pool = Pool.from_dict(d)
            ip = pool.allocate(endpoint_id, wanted)
            self.pools[network.id] = pool.to_dict()
            self._save()
            return ip, pool.prefixlen, pool.gateway

    async def _release(self, network_id: str, ip: str) -> None:
        async with self._lock:
            d = self.pools.get(network_id)
            if d is None or not ip:
                return
            if d.get("remote"):
                try:
                    await self.client.call("IpamDriver.ReleaseAddress",
                                           {"PoolID": d["pool_id"], "Address": ip})
                except Exception as e:
                    self.ctx.logger.warning("releasing %s: %s", ip, e)
                return
            pool = Pool.from_dict(d)
            pool.release(ip)
            self.pools[network_id] = pool.to_dict()
            self._save()

    async def join(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox,
                   options: dict[str, Any]) -> EndpointInfo:
        if not sandbox.netns_path:
            raise InvalidArgument(f"network plugin {self.name} needs a network namespace")
        ip, prefixlen, pool_gw = await self._allocate(network, endpoint_id,
                                                     str(options.get("ipv4_address") or ""))
        mac = mac_for(ip) if ip else ""
        net_id = network.id
        steps: list[str] = []
        try:
            answer = await self.client.call("NetworkDriver.CreateEndpoint", {
                "NetworkID": net_id, "EndpointID": endpoint_id,
                "Interface": {"Address": f"{ip}/{prefixlen}" if ip else "",
                              "AddressIPv6": "", "MacAddress": mac},
                "Options": {}})
            steps.append("endpoint")
            iface = answer.get("Interface") or {}
            if iface.get("Address"):
                try:
                    addr = ipaddress.ip_interface(iface["Address"])
                except ValueError:
                    raise DriverError(f"network plugin {self.name} answered an invalid "
                                      f"address {iface['Address']!r}") from None
                if ip and str(addr.ip) != ip:  # the daemon chose: the plugin must not change it
                    raise DriverError(f"network plugin {self.name} tried to replace the "
                                      f"endpoint's address {ip} with {iface['Address']}")
                ip, prefixlen = str(addr.ip), addr.network.prefixlen
            mac = iface.get("MacAddress") or mac
            joined = await self.client.call("NetworkDriver.Join", {
                "NetworkID": net_id, "EndpointID": endpoint_id,
                "SandboxKey": sandbox.netns_path, "Options": {}})
            steps.append("join")
            names = joined.get("InterfaceName") or {}
            src = names.get("SrcName") or ""
            if not src:
                raise DriverError(f"network plugin {self.name}: Join named no interface")
            gateway = joined.get("Gateway") or pool_gw
            default_route = bool(options.get("gateway", True)) and bool(gateway) \
                and not joined.get("DisableGatewayService")
            try:
                ifname = await self._run(
                    plug_interface, src_name=src, netns_path=sandbox.netns_path,
                    dst_prefix=names.get("DstPrefix") or "eth", address=ip,
                    prefixlen=prefixlen, mac=mac, gateway=gateway if default_route else "",
                    routes=list(joined.get("StaticRoutes") or []))
            except EngineError as e:  # say whose answer the kernel refused
                raise type(e)(f"network plugin {self.name}: {e.message}") from None
        except BaseException:
            await self._undo(net_id, endpoint_id, steps)
            await self._release(net_id, ip)
            raise
        async with self._lock:
            self.endpoints[endpoint_id] = {"network": net_id, "ifname": ifname, "src": src,
                                           "ip": ip, "netns": sandbox.netns_path}
            self._save()
        return EndpointInfo(ip_address=ip, ip_prefix_len=prefixlen,
                            gateway=gateway if default_route else "", mac_address=mac)

    async def _undo(self, net_id: str, endpoint_id: str, steps: list[str]) -> None:
        args = {"NetworkID": net_id, "EndpointID": endpoint_id}
        for step, method in (("join", "NetworkDriver.Leave"),
                             ("endpoint", "NetworkDriver.DeleteEndpoint")):
            if step in steps:
                try:
                    await self.client.call(method, args)
                except Exception as e:  # best effort while failing already
                    self.ctx.logger.warning("%s after a failed join: %s", method, e)

    async def leave(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox) -> None:
        ep = self.endpoints.get(endpoint_id)
        net_id = network.id or (ep or {}).get("network", "")
        if ep is not None:
            try:
                await self._run(unplug_interface, ifname=ep["ifname"], src_name=ep["src"],
                                netns_path=sandbox.netns_path or ep.get("netns") or "")
            except Exception as e:  # the namespace may be half gone: the plugin cleans up
                self.ctx.logger.warning("moving %s out of the sandbox: %s", ep["ifname"], e)
        args = {"NetworkID": net_id, "EndpointID": endpoint_id}
        await self.client.call("NetworkDriver.Leave", args)
        await self.client.call("NetworkDriver.DeleteEndpoint", args)
        if ep is not None:
            await self._release(net_id, ep.get("ip", ""))
            async with self._lock:
                self.endpoints.pop(endpoint_id, None)
                self._save()


def driver_for(spec: PluginSpec) -> type[RemoteNetworkDriver]:
    """A network driver class named like the plugin ``spec``."""
    return remote_driver_class(spec, RemoteNetworkDriver)


@hookimpl
def engine_register_drivers(registrar) -> None:
    """One network driver per plugin found on the search path at load time."""
    register_remote_drivers(registrar, "network", RemoteNetworkDriver, reserved=RESERVED)


@hookimpl
def engine_find_driver(kind: str, name: str) -> type[RemoteNetworkDriver] | None:
    """A network driver for a plugin whose socket appeared after the daemon started."""
    if kind != "network":
        return None
    return find_remote_driver(name, RemoteNetworkDriver, reserved=RESERVED)
