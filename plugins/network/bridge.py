"""The ``bridge`` network driver: a Linux bridge per network, a veth pair per endpoint.

For each network: a bridge device (``engine0`` for the default network, named by the
``com.docker.network.bridge.name`` option; ``br-<id[:12]>`` otherwise) holding the
gateway address, an IPAM pool, iptables rules (NAT and forwarding, isolation from the
other bridges, see ``iptables.py``) and, for user-defined networks, an embedded DNS
server on the gateway address (see ``dns.py``).

For each endpoint: a veth pair, the host end on the bridge and the other end moved into
the container's namespace and renamed ``eth0`` (``eth1``... for more networks), with an
address from the pool, Docker's MAC (``02:42`` and the address) and, for the endpoint
that is the container's gateway, a default route. Published ports get DNAT rules (for
the host's addresses and, where the bridge routes loopback sources, for 127.0.0.1) and
a userland proxy for what the rules cannot reach (``portmap.py`` says which path serves
what).

Netlink and iptables calls block, so they run in the default executor. Every step of
``create_network`` and ``join`` is undone when a later one fails. State (pools and
endpoints) is persisted in the driver's state directory so that a restarted daemon
releases what its containers held.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import json
import logging
import os
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from engine.sdk import hookimpl
from engine.sdk.drivers import DriverContext, EndpointInfo, NetworkDriver, NetworkSpec, Sandbox
from engine.sdk.errors import Conflict, DriverError, Forbidden, InvalidArgument

from . import dns, iptables, portmap
from .ipam import Leases, Pool, mac_for, write_json

if TYPE_CHECKING:  # pyroute2 costs ~100 ms to import: it is loaded on first use, in a
    from pyroute2 import IPRoute  # worker thread, never on the daemon's start-up path

log = logging.getLogger("engine.driver.bridge")

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPT_MTU = "com.docker.network.driver.mtu"


def bridge_name(spec: NetworkSpec) -> str:
    """The bridge device of a network."""
    name = spec.options.get(OPT_BRIDGE_NAME) or f"br-{spec.id[:12]}"
    if len(name) > 15:
        raise InvalidArgument(f"bridge name {name!r} is longer than 15 characters")
    return name


def veth_name(endpoint_id: str) -> str:
    """The host end of an endpoint's veth pair (stable, short, unique enough)."""
    return "veth" + hashlib.sha256(endpoint_id.encode()).hexdigest()[:7]


def _pool_config(spec: NetworkSpec) -> tuple[str, str]:
    configs = spec.ipam.get("Config") or []
    if not configs or not configs[0].get("Subnet"):
        raise InvalidArgument("the bridge driver needs an IPv4 subnet (IPAM.Config[0].Subnet)")
    return configs[0]["Subnet"], configs[0].get("Gateway") or ""


# ---------------------------------------------------------------- netlink (blocking)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextmanager
def _ipr(netns: str | None = None) -> Iterator[IPRoute]:
    """A synchronous netlink socket, in the namespace pinned at ``netns`` when given.

    The socket is opened by this thread after entering the namespace (a netlink socket
    stays in the namespace it was made in), and the thread switches back at once:
    pyroute2's own ``netns=`` forks a helper, whose signals would reach the daemon's
    handlers through the shared wakeup fd. It gets an event loop of its own because
    the daemon installs uvloop, whose loops cannot drive netlink sockets."""
    from pyroute2 import IPRoute

    loop = asyncio.SelectorEventLoop()
    try:
        if netns is None:
            ip = IPRoute(use_event_loop=loop)
        else:
            orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
                try:
                    ip = IPRoute(use_event_loop=loop)
                finally:
                    _setns(orig)  # a worker thread must never stay in a container's netns
            finally:
                os.close(target)
                os.close(orig)
        with ip:
            yield ip
    finally:
        loop.close()


@contextmanager
def netlink_step(what: str) -> Iterator[None]:
    """Turn the kernel's refusal of a netlink request made inside into a typed error
    that says which step was refused (``what``) and why: an address or name already
    taken is a :class:`Conflict`, anything else a :class:`DriverError`. pyroute2's own
    ``NetlinkError`` is no error of the SDK: the daemon could not tell its kind."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as e:
        reason = os.strerror(e.code) if e.code else str(e)
        kind = Conflict if e.code in (errno.EEXIST, errno.EADDRINUSE) else DriverError
        raise kind(f"{what}: {reason}") from None


def _link_index(ip: IPRoute, name: str) -> int | None:
    found = ip.link_lookup(ifname=name)
    return found[0] if found else None


def _bridge_ready(name: str, gateway: str) -> bool:
    """True when ``name`` is a bridge that is up with ``gateway`` as its address, read
    from sysfs and one ioctl: a daemon restart then needs no netlink (and no pyroute2,
    ~10 MB and ~100 ms) until a container joins."""
    import fcntl
    import socket
    import struct

    sys_dir = f"/sys/class/net/{name}"
    try:
        if not os.path.isdir(f"{sys_dir}/bridge"):
            return False
        with open(f"{sys_dir}/flags") as f:
            if not int(f.read().strip(), 16) & 1:  # IFF_UP
                return False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = fcntl.ioctl(s, 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
    except OSError:
        return False
    return socket.inet_ntoa(ifr[20:24]) == gateway


def create_bridge(name: str, gateway: str, prefixlen: int, mtu: int = 0) -> bool:
    """Create the bridge with the gateway address, up. Returns False when it already
    existed (after a daemon restart), True when made here."""
    if _bridge_ready(name, gateway):
        return False
    with _ipr() as ip:
        made = False
        idx = _link_index(ip, name)
        if idx is not None:
            (link,) = ip.get_links(idx)
            info = link.get_attr("IFLA_LINKINFO")
            if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
                raise Conflict(f"cannot use {name} as a bridge: a device of another kind "
                               "already has that name")
        else:
            kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge"}
            if mtu:
                kwargs["mtu"] = mtu
            with netlink_step(f"creating bridge {name}"):
                ip.link("add", **kwargs)
            made = True
            idx = _link_index(ip, name)
        try:
            have = {a.get_attr("IFA_ADDRESS") for a in ip.get_addr(index=idx, family=2)}
            with netlink_step(f"giving bridge {name} the gateway {gateway}/{prefixlen}"):
                if gateway not in have:
                    ip.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
                ip.link("set", index=idx, state="up")
        except BaseException:
            if made:
                ip.link("del", index=idx)
            raise
        return made


def bridge_ports(name: str) -> int:
    """How many interfaces are attached to bridge ``name`` (0 when it does not exist)."""
    with _ipr() as ip:
        idx = _link_index(ip, name)
        if idx is None:
            return 0
        return len(ip.get_links(master=idx))


def delete_link(name: str) -> None:
    """Delete a link in the host namespace; a missing one is fine."""
    with _ipr() as ip:
        idx = _link_index(ip, name)
        if idx is not None:
            from pyroute2.netlink.exceptions import NetlinkError

            try:
                ip.link("del", index=idx)
            except NetlinkError as e:
                if e.code != 19:  # ENODEV: gone meanwhile
                    raise


def plumb_veth(*, bridge: str, host_if: str, netns_path: str, address: str, prefixlen: int,
               mac: str, gateway: str, default_route: bool, mtu: int = 0) -> str:
    """Create the veth pair, attach the host end to ``bridge``, move the other end into
    the namespace and configure it there. Returns its name in the namespace. On
    failure the pair is deleted (deleting one end deletes both)."""
    peer_tmp = "tmp" + host_if[4:]
    with _ipr() as ip:
        br = _link_index(ip, bridge)
        if br is None:
            raise DriverError(f"bridge {bridge} does not exist")
        kwargs: dict[str, Any] = {"ifname": host_if, "kind": "veth", "peer": {"ifname": peer_tmp}}
        if mtu:
            kwargs["mtu"] = mtu
        with netlink_step(f"creating the veth pair {host_if}"):
            ip.link("add", **kwargs)
        try:
            with netlink_step(f"attaching {host_if} to {bridge}"):
                host_idx = _link_index(ip, host_if)
                ip.link("set", index=host_idx, master=br, state="up")
                peer_idx = _link_index(ip, peer_tmp)
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    ip.link("set", index=peer_idx, net_ns_fd=fd)
                finally:
                    os.close(fd)
            with _ipr(netns_path) as ns:
                names = {lk.get_attr("IFLA_IFNAME") for lk in ns.get_links()}
                ifname = next(f"eth{i}" for i in range(len(names) + 1) if f"eth{i}" not in names)
                idx = _link_index(ns, peer_tmp)
                with netlink_step(f"configuring {ifname} with {address}/{prefixlen}"):
                    ns.link("set", index=idx, ifname=ifname, address=mac)
                    ns.addr("add", index=idx, address=address, prefixlen=prefixlen)
                    ns.link("set", index=idx, state="up")
                if default_route:
                    with netlink_step(f"default route via gateway {gateway} on {ifname}"):
                        ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)
            return ifname
        except BaseException:
            try:
                ip.link("del", index=_link_index(ip, host_if))
            except Exception:
                pass
            raise


# ---------------------------------------------------------------- driver


class _Network:
    """What the driver keeps for one network while the daemon runs."""

    def __init__(self, spec: NetworkSpec, pool: Pool) -> None:
        self.spec = spec
        self.pool = pool
        self.bridge = bridge_name(spec)
        self.names: dict[str, dict[str, str]] = {}   # endpoint id -> {name: ip}
        self.upstreams: dict[str, list[str]] = {}    # endpoint ip -> its own --dns servers
        self.resolver: dns.Resolver | None = None
        # the bridge routes loopback sources (127.0.0.1 ports go through the kernel);
        # None until tried
        self.localnet: bool | None = None

    @property
    def internal(self) -> bool:
        return self.spec.internal

    @property
    def default_bridge(self) -> bool:
        return self.spec.options.get(OPT_DEFAULT_BRIDGE) == "true"

    @property
    def masquerade(self) -> bool:
        return self.spec.options.get(OPT_MASQUERADE, "true") != "false" and not self.internal

    @property
    def mtu(self) -> int:
        try:
            return int(self.spec.options.get(OPT_MTU) or 0)
        except ValueError:
            raise InvalidArgument(f"invalid {OPT_MTU}: {self.spec.options[OPT_MTU]!r}") from None

    def lookup(self, name: str) -> list[str]:
        """Addresses of ``name`` (or ``name.<network>``) on this network."""
        name = name.lower().rstrip(".")
        suffix = "." + self.spec.name.lower()
        if name.endswith(suffix):
            name = name[: -len(suffix)]
        return sorted({m[name] for m in self.names.values() if name in m})

    def upstreams_for(self, client_ip: str) -> list[str]:
        """Where to forward a container's other queries: its ``--dns``, else the host's."""
        return self.upstreams.get(client_ip) or dns.upstream_servers()

    def to_dict(self) -> dict[str, Any]:
        return {"spec": {"id": self.spec.id, "name": self.spec.name,
                         "options": self.spec.options, "ipam": self.spec.ipam,
                         "internal": self.spec.internal, "labels": self.spec.labels},
                "pool": self.pool.to_dict()}


class BridgeNetworkDriver(NetworkDriver):
    """Linux bridges with NAT, published ports and embedded DNS."""

    name = "bridge"
    needs_netns = True

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self.networks: dict[str, _Network] = {}
        self.proxies: dict[str, list[portmap.Proxy]] = {}   # endpoint id -> proxies
        self.lock = asyncio.Lock()
        self.leases = Leases(ctx.options.get("lease_dir") or "/run/engine-ipam")
        self._base_ready = False

    # ------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: fn(*args, **kwargs))

    def _net_file(self, nid: str) -> Path:
        return Path(self.ctx.state_dir, "networks", f"{nid}.json")

    def _ep_file(self, eid: str) -> Path:
        return Path(self.ctx.state_dir, "endpoints", f"{eid}.json")

    def _save_net(self, net: _Network) -> None:
        write_json(self._net_file(net.spec.id), net.to_dict())

    async def _ensure_base(self) -> None:
        if not self._base_ready:
            await self._run(iptables.enable_forwarding)
            await self._run(iptables.setup_base)
            self._base_ready = True

    def _get(self, spec: NetworkSpec) -> _Network:
        net = self.networks.get(spec.id)
        if net is None:
            raise DriverError(f"bridge network {spec.name} ({spec.id[:12]}) is not set up")
        return net

    async def _start_dns(self, net: _Network) -> None:
        if net.default_bridge or net.resolver is not None:
            return
        try:
            net.resolver = await dns.serve(net.pool.gateway, net.lookup,
                                           forward_queries=not net.internal,
                                           upstreams=net.upstreams_for)
        except OSError as e:
            raise DriverError(f"embedded DNS for network {net.spec.name} on "
                              f"{net.pool.gateway}:53: {e}") from None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restore networks and endpoints a previous daemon left behind."""
        for f in sorted(Path(self.ctx.state_dir, "networks").glob("*.json")):
            try:
                d = json.loads(f.read_text())
                spec = NetworkSpec(**d["spec"])
                net = _Network(spec, Pool.from_dict(d["pool"]))
                await self._ensure_base()
                await self._run(create_bridge, net.bridge, net.pool.gateway,
                                net.pool.prefixlen, net.mtu)
                await self._run(iptables.add_network, net.bridge, net.pool.subnet,
                                net.internal, net.masquerade)
                await self._run(self._route_localnet, net)   # after its guard rule
                self.networks[spec.id] = net
                await self._start_dns(net)
            except Exception as e:
                log.error("bridge network state %s not restored: %s", f.name, e)
        for f in sorted(Path(self.ctx.state_dir, "endpoints").glob("*.json")):
            try:
                ep = json.loads(f.read_text())
                await self._restore_endpoint(f.stem, ep)
            except Exception as e:
                log.error("bridge endpoint %s not restored: %s", f.stem, e)

    async def _restore_endpoint(self, eid: str, ep: dict) -> None:
        net = self.networks.get(ep["network"])
        ns = ep.get("netns") or ""
        alive = bool(ns) and os.path.exists(ns) and os.path.ismount(ns)
        if net is None or not alive:
            await self._release(eid, ep)
            return
        net.names[eid] = {n: ep["ip"] for n in ep.get("names", [])}
        if ep.get("dns_servers"):
            net.upstreams[ep["ip"]] = list(ep["dns_servers"])
        proxies = []
        for b in ep.get("ports", []):
            binding = portmap.Binding(b["proto"], b["port"], b["host_ip"], b["host_port"])
            try:
                p = portmap.bind(binding, (ep["ip"], binding.port))
                await p.serve()
                proxies.append(p)
                # the rules outlive the daemon; an endpoint joined before 127.0.0.1
                # went through the kernel gets its loopback rule here
                await self._run(iptables.add_dnat, net.bridge, binding.proto,
                                binding.host_ip, binding.host_port, ep["ip"], binding.port,
                                loopback=bool(net.localnet))
            except Exception as e:
                log.warning("endpoint %s: proxy for %s not restored: %s", eid[:12], binding.key, e)
        self.proxies[eid] = proxies

    async def stop(self) -> None:
        """Stop serving (DNS, proxies). A user network whose bridge has no port left
        (no container of any daemon on it) is taken down, bridge and rules, and set up
        again at the next start; the others stay for their running containers. The
        default bridge always stays: other daemons on the host share it."""
        for proxies in self.proxies.values():
            for p in proxies:
                await p.close()
        self.proxies.clear()
        for net in self.networks.values():
            if net.resolver is not None:
                net.resolver.close()
                net.resolver = None
            if net.default_bridge:
                continue  # shared by every daemon on the host, like docker0: it stays
            try:
                if not net.names and await self._run(bridge_ports, net.bridge) == 0:
                    await self._run(iptables.remove_network, net.bridge, net.pool.subnet,
                                    net.internal, net.masquerade)
                    await self._run(delete_link, net.bridge)
                    self.leases.forget(net.bridge)
            except Exception as e:
                log.warning("network %s not taken down: %s", net.spec.name, e)
        try:
            if self._base_ready:
                await self._run(iptables.teardown_if_unused)
        except Exception as e:
            log.warning("iptables chains not removed: %s", e)
        self._base_ready = False

    async def create_network(self, network: NetworkSpec) -> None:
        """Set a network up; for one this driver already has (restored at start) only
        make sure its bridge and rules are there."""
        known = self.networks.get(network.id)
        if known is not None:
            async with self.lock:
                await self._ensure_base()
                await self._run(self._ensure_network, known)
                await self._start_dns(known)
            return
        subnet, gateway = _pool_config(network)
        net = _Network(network, Pool(subnet, gateway))
        for other in self.networks.values():
            if other.bridge == net.bridge and other.spec.id != network.id:
                raise Forbidden(f"bridge {net.bridge} is already used by network {other.spec.name}")
        async with self.lock, AsyncExitStack() as undo:
            await self._ensure_base()
            made = await self._run(create_bridge, net.bridge, net.pool.gateway,
                                   net.pool.prefixlen, net.mtu)
            if made:
                undo.push_async_callback(self._run, delete_link, net.bridge)
            elif not net.default_bridge and network.options.get(OPT_BRIDGE_NAME):
                # a user-named bridge that exists already belongs to someone else
                raise Conflict(f"bridge {net.bridge} already exists on this host")
            await self._run(iptables.add_network, net.bridge, net.pool.subnet, net.internal,
                            net.masquerade)
            undo.push_async_callback(self._run, iptables.remove_network, net.bridge,
                                     net.pool.subnet, net.internal, net.masquerade)
            await self._run(self._route_localnet, net)   # after its guard rule
            await self._start_dns(net)
            await self._run(self._save_net, net)
            self.networks[network.id] = net
            undo.pop_all()

    async def delete_network(self, network: NetworkSpec) -> None:
        async with self.lock:
            net = self.networks.pop(network.id, None)
            if net is None:
                return
            if net.resolver is not None:
                net.resolver.close()
            await self._run(iptables.remove_network, net.bridge, net.pool.subnet, net.internal,
                            net.masquerade)
            await self._run(delete_link, net.bridge)
            self.leases.forget(net.bridge)
            self._net_file(network.id).unlink(missing_ok=True)
            if not self.networks:
                await self._run(iptables.teardown_if_unused)
                self._base_ready = False

    # ------------------------------------------------------------ endpoints

    async def join(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox,
                   options: dict[str, Any]) -> EndpointInfo:
        if not sandbox.netns_path:
            raise InvalidArgument("the bridge driver needs a network namespace")
        net = self._get(network)
        bindings = portmap.parse_bindings(options.get("port_bindings"),
                                          options.get("exposed_ports"),
                                          bool(options.get("publish_all")))
        host_if = veth_name(endpoint_id)
        async with self.lock, AsyncExitStack() as undo:
            await self._run(self._ensure_network, net)
            # the pool is only touched under self.lock, so the worker thread is safe
            ip = await self._run(self._allocate, net, endpoint_id,
                                 options.get("ipv4_address") or "", sandbox.netns_path)
            undo.callback(net.pool.release, ip)
            undo.callback(self.leases.drop, net.bridge, ip, endpoint_id)
            proxies: list[portmap.Proxy] = []
            for b in bindings:
                p = portmap.bind(b, (ip, b.port))
                undo.push_async_callback(p.close)
                proxies.append(p)
            mac = mac_for(ip)
            ifname = await self._run(
                plumb_veth, bridge=net.bridge, host_if=host_if, netns_path=sandbox.netns_path,
                address=ip, prefixlen=net.pool.prefixlen, mac=mac, gateway=net.pool.gateway,
                default_route=bool(options.get("gateway", True)) and not net.internal,
                mtu=net.mtu)
            undo.push_async_callback(self._run, delete_link, host_if)
            ports: dict[str, list[dict[str, str]]] = {}
            records = []
            for p in proxies:
                b = p.binding
                await self._run(iptables.add_dnat, net.bridge, b.proto, b.host_ip, p.host_port,
                                ip, b.port, loopback=bool(net.localnet))
                undo.push_async_callback(self._run, iptables.remove_dnat, net.bridge, b.proto,
                                         b.host_ip, p.host_port, ip, b.port)
                await p.serve()
                ports.setdefault(b.key, []).append(
                    {"HostIp": b.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
                records.append({"proto": b.proto, "port": b.port, "host_ip": b.host_ip,
                                "host_port": p.host_port})
            names = [n.lower() for n in options.get("names") or [] if n]
            await self._run(write_json, self._ep_file(endpoint_id), {
                "network": network.id, "ip": ip, "veth": host_if, "ports": records,
                "names": names, "netns": sandbox.netns_path, "container": sandbox.container_id,
                "dns_servers": list(options.get("dns_servers") or [])})
            await self._run(self._save_net, net)
            undo.pop_all()
        net.names[endpoint_id] = {n: ip for n in names}
        if options.get("dns_servers"):
            net.upstreams[ip] = [str(x) for x in options["dns_servers"]]
        self.proxies[endpoint_id] = proxies
        return EndpointInfo(
            ip_address=ip, ip_prefix_len=net.pool.prefixlen, gateway=net.pool.gateway,
            mac_address=mac, ports=ports, interface=ifname,
            dns=[] if net.default_bridge else [net.pool.gateway])

    def _allocate(self, net: _Network, endpoint_id: str, wanted: str, netns: str) -> str:
        """An address from the pool that no other daemon's endpoint holds on the same
        bridge (see :class:`Leases`)."""
        foreign: list[str] = []
        try:
            while True:
                ip = net.pool.allocate(endpoint_id, wanted)
                if self.leases.take(net.bridge, ip, endpoint_id, netns):
                    return ip
                net.pool.release(ip)
                if wanted:
                    raise Conflict(f"Address already in use: {wanted}")
                net.pool.allocated[ip] = "foreign"   # skip it in this search only
                foreign.append(ip)
        finally:
            for ip in foreign:
                net.pool.release(ip)

    def _ensure_network(self, net: _Network) -> None:
        """Set the bridge and its rules up again if something removed them (another
        daemon sharing the default bridge stopped; an administrator flushed rules)."""
        create_bridge(net.bridge, net.pool.gateway, net.pool.prefixlen, net.mtu)
        if not iptables.exists("filter", iptables.FORWARD_CHAIN,
                               ["-i", net.bridge, "-o", net.bridge, "-j", "ACCEPT"]):
            iptables.enable_forwarding()
            iptables.add_network(net.bridge, net.pool.subnet, net.internal, net.masquerade)
        self._route_localnet(net)   # after the network's guard rule

    @staticmethod
    def _route_localnet(net: _Network) -> None:
        """Let the bridge route loopback sources, so that 127.0.0.1 ports use the
        kernel's DNAT; where that cannot be set, the proxy serves them (logged once)."""
        ok = iptables.enable_route_localnet(net.bridge)
        if not ok and net.localnet is not False:
            log.warning("cannot set route_localnet on %s: ports on 127.0.0.1 of network %s "
                        "go through the userland proxy", net.bridge, net.spec.name)
        net.localnet = ok

    async def leave(self, network: NetworkSpec, endpoint_id: str, sandbox: Sandbox) -> None:
        f = self._ep_file(endpoint_id)
        try:
            ep = json.loads(f.read_text())
        except FileNotFoundError:
            return
        async with self.lock:
            await self._release(endpoint_id, ep)

    async def _release(self, endpoint_id: str, ep: dict) -> None:
        """Undo an endpoint from its persisted record; every step tolerates 'gone'."""
        for p in self.proxies.pop(endpoint_id, []):
            await p.close()
        net = self.networks.get(ep.get("network", ""))
        bridge = net.bridge if net else ""
        if net is not None:
            for b in ep.get("ports", []):
                await self._run(iptables.remove_dnat, bridge, b["proto"], b["host_ip"],
                                b["host_port"], ep["ip"], b["port"])
            net.names.pop(endpoint_id, None)
            net.upstreams.pop(ep.get("ip", ""), None)
        await self._run(delete_link, ep.get("veth") or veth_name(endpoint_id))
        if net is not None:
            net.pool.release(ep.get("ip", ""))
            await self._run(self.leases.drop, net.bridge, ep.get("ip", ""), endpoint_id)
            await self._run(self._save_net, net)
        self._ep_file(endpoint_id).unlink(missing_ok=True)


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_network_driver(BridgeNetworkDriver)
