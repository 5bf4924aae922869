"""Networks: persisted records, their lifecycle, and containers' endpoints on them.

A network is a record (Docker's Network object) plus whatever its driver made for it.
The daemon keeps the records under ``<data-root>/networks`` and makes sure the
predefined networks exist at start: ``bridge`` (the default, bridge device ``engine0``),
``host`` and ``none``. Containers join networks through :meth:`NetworkService.join_container`
when they start and leave them in :meth:`NetworkService.leave_container` when they stop;
``connect`` and ``disconnect`` do the same for one network of a running container.

Subnets: a network created without one gets the first of Docker's default pools that
overlaps neither another network nor a route of the host (so that we never clash with
``docker0`` when dockerd runs on the same machine).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.sdk.drivers import NetworkSpec, Sandbox
from engine.sdk.errors import (
    Conflict,
    DriverError,
    EngineError,
    Forbidden,
    InvalidArgument,
    NotFound,
)

from . import netns as netns_mod
from .util import atomic_write, new_id, parse_since, parse_time, rfc3339

if TYPE_CHECKING:
    from .events import Events
    from .models import Container
    from .plugins import PluginHost

log = logging.getLogger("engine.networks")

DEFAULT_BRIDGE = "engine0"
DEFAULT_SUBNET = "172.30.0.0/16"
PREDEFINED = ("bridge", "host", "none")
DRIVER_ALIASES = {"none": "null"}

# the runtime fields of an EndpointSettings, cleared when the container stops
_RUNTIME_FIELDS = {
    "NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
    "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "MacAddress": "",
}


class NetworkRecord(msgspec.Struct, kw_only=True):
    """One network, as persisted; :meth:`to_api` gives Docker's Network object."""

    id: str
    name: str
    driver: str
    created: str
    scope: str = "local"
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    ipam: dict[str, Any] = {}
    options: dict[str, str] = {}
    labels: dict[str, str] = {}

    def spec(self) -> NetworkSpec:
        return NetworkSpec(id=self.id, name=self.name, options=dict(self.options),
                           ipam=self.ipam, internal=self.internal, labels=dict(self.labels))

    @property
    def subnets(self) -> list[str]:
        return [c["Subnet"] for c in self.ipam.get("Config") or [] if c.get("Subnet")]

    def to_api(self, containers: dict[str, dict] | None = None) -> dict:
        return {
            "Name": self.name, "Id": self.id, "Created": self.created, "Scope": self.scope,
            "Driver": self.driver, "EnableIPv6": self.enable_ipv6,
            "IPAM": {"Driver": self.ipam.get("Driver") or "default",
                     "Options": self.ipam.get("Options"),
                     "Config": list(self.ipam.get("Config") or [])},
            "Internal": self.internal, "Attachable": self.attachable, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
            "Containers": containers if containers is not None else {},
            "Options": dict(self.options), "Labels": dict(self.labels),
        }


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(NetworkRecord)


def host_routes(path: str = "/proc/net/route") -> list[tuple[str, str]]:
    """The host's IPv4 routes as (device, CIDR) pairs (the default route excluded)."""
    out: list[tuple[str, str]] = []
    try:
        lines = Path(path).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 8:
            continue
        dest = socket.inet_ntoa(struct.pack("<I", int(f[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<I", int(f[7], 16)))
        if mask == "0.0.0.0":
            continue
        out.append((f[0], str(ipaddress.ip_network(f"{dest}/{mask}", strict=False))))
    return out


def _candidates() -> list[str]:
    return ([f"172.{i}.0.0/16" for i in range(17, 32)]
            + [f"192.168.{i}.0/20" for i in range(0, 256, 16)])


def _overlap(subnet: str, others: list[str]) -> str:
    net = ipaddress.ip_network(subnet, strict=False)
    for o in others:
        if net.overlaps(ipaddress.ip_network(o, strict=False)):
            return o
    return ""


def clean_endpoint(ep: dict) -> dict:
    """An EndpointSettings as the API shows it (our private keys dropped)."""
    return {k: v for k, v in ep.items() if not k.startswith("_")}


class NetworkService:
    """Owns the network records and every container's endpoints."""

    def __init__(self, *, data_root: str, exec_root: str, plugins: "PluginHost",
                 events: "Events") -> None:
        self.root = Path(data_root, "networks")
        self.exec_root = Path(exec_root)
        self.plugins = plugins
        self.events = events
        self.networks: dict[str, NetworkRecord] = {}
        self.containers = None   # the ContainerService, set by the daemon after building it
        self.lock = asyncio.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ records

    def _save(self, n: NetworkRecord) -> None:
        atomic_write(self.root / f"{n.id}.json", _ENC.encode(n))

    def _driver(self, name: str):
        return self.plugins.network(DRIVER_ALIASES.get(name, name))

    async def start(self) -> None:
        """Load the records, set every network up again (drivers are idempotent) and
        make sure the predefined networks exist."""
        for f in sorted(self.root.glob("*.json")):
            try:
                n = _DEC.decode(f.read_bytes())
            except msgspec.DecodeError as e:
                log.error("network record %s unreadable: %s", f.name, e)
                continue
            self.networks[n.id] = n
        # Bringing existing networks back (bridges, iptables rules, proxies) takes a
        # while; it runs in the background so the API answers at once. Everything that
        # needs a network set up waits for it (``_setup_done``).
        self._setup_task = asyncio.create_task(self._setup(list(self.networks.values())))
        names = {n.name for n in self.networks.values()}
        drivers = self.plugins.drivers["network"]
        if "bridge" not in names and "bridge" in drivers:
            subnet = self._default_subnet()
            if not subnet:
                log.error("no free subnet for the default bridge network")
            else:
                try:
                    await self._create(
                        "bridge", "bridge", ipam_config=[{"Subnet": subnet}],
                        options={"com.docker.network.bridge.default_bridge": "true",
                                 "com.docker.network.bridge.enable_icc": "true",
                                 "com.docker.network.bridge.enable_ip_masquerade": "true",
                                 "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                                 "com.docker.network.bridge.name": DEFAULT_BRIDGE,
                                 "com.docker.network.driver.mtu": "1500"})
                except Exception as e:
                    log.error("default bridge network not created: %s", e)
        for name, drv in (("host", "host"), ("none", "null")):
            if name not in names and drv in drivers:
                await self._create(name, drv)

    async def _setup(self, records: list[NetworkRecord]) -> None:
        for n in records:
            try:
                await self._driver(n.driver).create_network(n.spec())
            except Exception as e:
                log.error("network %s (%s driver) not set up: %s", n.name, n.driver, e)

    async def _setup_done(self) -> None:
        task = getattr(self, "_setup_task", None)
        if task is not None and not task.done():
            await asyncio.shield(task)

    def _default_subnet(self) -> str:
        """172.30.0.0/16, or the subnet the default bridge device already has (another
        daemon on this host made it), or the first free /16 of 172.17-31."""
        routes = host_routes()
        mine = [cidr for dev, cidr in routes if dev == DEFAULT_BRIDGE]
        used = [cidr for dev, cidr in routes if dev != DEFAULT_BRIDGE] + self._used_subnets()
        preferred = ([DEFAULT_SUBNET] if DEFAULT_SUBNET in mine else []) + mine + [DEFAULT_SUBNET]
        for cand in preferred:
            if not _overlap(cand, used):
                return cand
        return next((c for c in _candidates()[:15] if not _overlap(c, used + mine)), "")

    def _used_subnets(self) -> list[str]:
        return [s for n in self.networks.values() for s in n.subnets]

    def get(self, ref: str) -> NetworkRecord:
        """By full id, then name, then unique id prefix (Docker's order)."""
        if not ref:
            raise NotFound("network  not found")
        n = self.networks.get(ref)
        if n is not None:
            return n
        for n in self.networks.values():
            if n.name == ref:
                return n
        matches = [n for i, n in self.networks.items() if i.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"network {ref} is ambiguous ({len(matches)} matches found "
                                  "based on ID prefix)")
        raise NotFound(f"network {ref} not found")

    # ------------------------------------------------------------ create / remove

    async def create(self, body: dict) -> dict:
        """POST /networks/create."""
        await self._setup_done()
        name = body.get("Name") or ""
        if not name:
            raise InvalidArgument("network name must not be empty")
        driver = body.get("Driver") or "bridge"
        if name in PREDEFINED:
            raise Forbidden(f"{name} is a pre-defined network and cannot be created")
        if driver in ("host", "null", "none"):
            raise Forbidden(f'only one instance of "{driver}" network is allowed')
        if body.get("EnableIPv6"):
            raise InvalidArgument("IPv6 networks are not supported")
        ipam = body.get("IPAM") or {}
        ipam_driver = ipam.get("Driver") or "default"
        # a network plugin may be its own IPAM driver (--ipam-driver weave with -d weave):
        # the remote network driver then asks the plugin for pools and addresses
        if ipam_driver != "default" and (ipam_driver != driver or driver == "bridge"):
            raise NotFound(f"IPAM driver {ipam['Driver']!r} not found")
        configs = [dict(c) for c in ipam.get("Config") or []]
        n = await self._create(name, driver, ipam_config=configs, ipam_driver=ipam_driver,
                               internal=bool(body.get("Internal")),
                               attachable=bool(body.get("Attachable")),
                               options=body.get("Options") or {}, labels=body.get("Labels") or {})
        return {"Id": n.id, "Warning": ""}

    async def _create(self, name: str, driver: str, *, ipam_config: list[dict] | None = None,
                      ipam_driver: str = "default", internal: bool = False, attachable: bool = False,
                      options: dict[str, str] | None = None,
                      labels: dict[str, str] | None = None) -> NetworkRecord:
        async with self.lock:
            if any(n.name == name for n in self.networks.values()):
                raise Conflict(f"network with name {name} already exists")
            drv = self._driver(driver)
            configs = [dict(c) for c in ipam_config or []]
            if drv.name == "bridge":
                configs = self._plan_subnets(configs)
            n = NetworkRecord(id=new_id(), name=name, driver=drv.name,
                              created=rfc3339(), scope=drv.scope, internal=internal,
                              attachable=attachable,
                              ipam={"Driver": ipam_driver, "Options": None,
                                    "Config": configs},
                              options={str(k): str(v) for k, v in (options or {}).items()},
                              labels=dict(labels or {}))
            await drv.create_network(n.spec())
            try:
                self._save(n)
            except BaseException:
                await drv.delete_network(n.spec())
                raise
            self.networks[n.id] = n
        self.events.emit("network", "create", n.id, {"name": name, "type": n.driver})
        return n

    def _plan_subnets(self, configs: list[dict]) -> list[dict]:
        """Check the requested subnets against the other networks, or pick one."""
        used = self._used_subnets()
        for c in configs:
            sub = c.get("Subnet") or ""
            if not sub:
                continue
            try:
                net = ipaddress.ip_network(sub, strict=False)
            except ValueError:
                raise InvalidArgument(f"invalid subnet {sub}") from None
            if str(net) != sub:
                raise InvalidArgument(f"invalid subnet {sub} : it should be {net}")
            if not isinstance(net, ipaddress.IPv4Network):
                raise InvalidArgument("IPv6 subnets are not supported")
            if _overlap(sub, used):
                raise Forbidden("Pool overlaps with other one on this address space")
            gw = c.get("Gateway")
            if gw:
                try:
                    ok = ipaddress.ip_address(gw) in net
                except ValueError:
                    ok = False
                if not ok:
                    raise InvalidArgument(f"invalid gateway {gw} for subnet {sub}")
            else:
                c["Gateway"] = str(net.network_address + 1)
            used.append(sub)
        if not any(c.get("Subnet") for c in configs):
            avoid = used + [cidr for _, cidr in host_routes()]
            sub = next((s for s in _candidates() if not _overlap(s, avoid)), "")
            if not sub:
                raise Forbidden("could not find an available, non-overlapping IPv4 address "
                                "pool among the defaults to assign to the network")
            net = ipaddress.ip_network(sub)
            configs = [{"Subnet": sub, "Gateway": str(net.network_address + 1)}]
        return configs

    def endpoints(self, n: NetworkRecord) -> dict[str, dict]:
        """Docker's ``Containers`` map: running containers with an endpoint on ``n``."""
        out: dict[str, dict] = {}
        if self.containers is None:
            return out
        for c in self.containers.containers.values():
            for ep in c.networks.values():
                if ep.get("NetworkID") == n.id and ep.get("EndpointID"):
                    out[c.id] = {
                        "Name": c.name.lstrip("/"), "EndpointID": ep["EndpointID"],
                        "MacAddress": ep.get("MacAddress") or "",
                        "IPv4Address": (f"{ep['IPAddress']}/{ep.get('IPPrefixLen', 0)}"
                                        if ep.get("IPAddress") else ""),
                        "IPv6Address": "",
                    }
        return out

    def inspect(self, ref: str) -> dict:
        n = self.get(ref)
        return n.to_api(self.endpoints(n))

    def list(self, filters: dict | None = None) -> list[dict]:
        out = []
        for n in sorted(self.networks.values(), key=lambda n: n.created):
            if filters and not self._matches(n, filters):
                continue
            out.append(n.to_api())
        return out

    def _matches(self, n: NetworkRecord, filters: dict) -> bool:
        for key, vals in filters.items():
            vals = list(vals) if not isinstance(vals, dict) else [k for k, v in vals.items() if v]
            if key == "name" and not any(v in n.name for v in vals):
                return False
            if key == "id" and not any(n.id.startswith(v) for v in vals):
                return False
            if key == "driver" and n.driver not in vals:
                return False
            if key == "scope" and n.scope not in vals:
                return False
            if key == "type":
                kind = "builtin" if n.name in PREDEFINED else "custom"
                if kind not in vals:
                    return False
            if key == "dangling":
                want = vals[0] in ("true", "1")
                if want != (not self.endpoints(n) and n.name not in PREDEFINED):
                    return False
            if key == "label":
                for v in vals:
                    k, eq, val = v.partition("=")
                    if k not in n.labels or (eq and n.labels[k] != val):
                        return False
            if key == "until":
                if parse_time(n.created) >= parse_since(vals[0]):
                    return False
        return True

    async def remove(self, ref: str) -> None:
        await self._setup_done()
        n = self.get(ref)
        if n.name in PREDEFINED:
            raise Forbidden(f"{n.name} is a pre-defined network and cannot be removed")
        async with self.lock:
            if self.endpoints(n) or self._configured_users(n):
                raise Forbidden(f"error while removing network: network {n.name} id {n.id} "
                                "has active endpoints")
            await self._driver(n.driver).delete_network(n.spec())
            (self.root / f"{n.id}.json").unlink(missing_ok=True)
            self.networks.pop(n.id, None)
        self.events.emit("network", "destroy", n.id, {"name": n.name, "type": n.driver})

    def _configured_users(self, n: NetworkRecord) -> list[str]:
        """Running containers that use ``n`` (also those between start and join)."""
        if self.containers is None:
            return []
        return [c.id for c in self.containers.containers.values() if c.state.running and any(
            ep.get("NetworkID") == n.id for ep in c.networks.values())]

    async def prune(self, filters: dict | None = None) -> list[str]:
        await self._setup_done()
        deleted = []
        for n in list(self.networks.values()):
            if n.name in PREDEFINED or self.endpoints(n) or self._configured_users(n):
                continue
            if filters and not self._matches(n, {k: v for k, v in filters.items()
                                                 if k in ("label", "until")}):
                continue
            try:
                await self.remove(n.id)
                deleted.append(n.name)
            except (Forbidden, NotFound):
                continue
        return deleted

    # ------------------------------------------------------------ containers

    def resolve_mode(self, mode: str, default_network: str = "") -> NetworkRecord:
        """The network a container's ``HostConfig.NetworkMode`` names."""
        if not mode or mode == "default":
            mode = default_network or ("bridge" if any(
                n.name == "bridge" for n in self.networks.values()) else "none")
        if mode.startswith("container:"):
            raise InvalidArgument("network mode container:<id> is not supported yet")
        return self.get(mode)

    def plan(self, host_config: dict, networking_config: dict | None,
             default_network: str = "") -> dict[str, dict]:
        """The EndpointSettings a new container starts with: its NetworkMode's network,
        with what ``NetworkingConfig.EndpointsConfig`` asks for it (aliases, address)."""
        n = self.resolve_mode(host_config.get("NetworkMode") or "default", default_network)
        eps = (networking_config or {}).get("EndpointsConfig") or {}
        cfg: dict = {}
        for key, val in eps.items():
            try:
                if self.get(key).id == n.id:
                    cfg = val or {}
            except NotFound:
                continue
        return {n.name: self._endpoint_config(n, cfg)}

    def _endpoint_config(self, n: NetworkRecord, cfg: dict) -> dict:
        aliases = cfg.get("Aliases")
        ipam = {k: v for k, v in (cfg.get("IPAMConfig") or {}).items() if v} or None
        if (aliases or ipam) and n.name in PREDEFINED:
            raise InvalidArgument("network-scoped alias and static addresses are supported "
                                  "only for containers in user defined networks")
        if ipam and ipam.get("IPv4Address"):
            try:
                ok = any(ipaddress.ip_address(ipam["IPv4Address"]) in ipaddress.ip_network(s)
                         for s in n.subnets)
            except ValueError:
                ok = False
            if not ok:
                raise InvalidArgument(f"no configured subnet or ip-range contain the IP "
                                      f"address {ipam['IPv4Address']}")
        return {"IPAMConfig": ipam, "Links": cfg.get("Links"), "Aliases": aliases,
                **_RUNTIME_FIELDS, "NetworkID": n.id, "DriverOpts": cfg.get("DriverOpts"),
                "Driver": n.driver}

    async def join_container(self, c: "Container", undo: AsyncExitStack,
                             default_network: str = "") -> tuple[str | None, bool]:
        """Join every network of a starting container. Returns the namespace path
        (None for the host's) and whether the container uses the host's network."""
        await self._setup_done()
        if not c.networks:
            c.networks = self.plan(c.host_config, None, default_network)
        primary = self.resolve_mode(c.host_config.get("NetworkMode") or "default", default_network)
        order = sorted(c.networks, key=lambda k: not self._ref_is(k, c.networks[k], primary))
        # check everything before making anything
        nets = []
        for key in order:
            ep = c.networks[key]
            try:
                n = self.get(ep.get("NetworkID") or key)
            except NotFound:
                n = self.get(key)
            nets.append((key, n, self._driver(n.driver)))
        first_drv = nets[0][2]
        ns_path = None
        if first_drv.needs_netns:
            ns_path = str(self.exec_root / "netns" / c.id[:16])
            await asyncio.get_running_loop().run_in_executor(None, netns_mod.delete, ns_path)
            await asyncio.get_running_loop().run_in_executor(None, netns_mod.create, ns_path)
            undo.push_async_callback(asyncio.get_running_loop().run_in_executor, None,
                                     netns_mod.delete, ns_path)
        elif len(nets) > 1:
            raise InvalidArgument("container sharing network namespace with another container "
                                  "or host cannot be connected to any other network")
        joined: dict[str, dict] = {}
        for i, (key, n, drv) in enumerate(nets):
            ep = await self._join(c, n, drv, c.networks[key], ns_path, primary=(i == 0))
            undo.push_async_callback(self._leave, c, n, drv, ep, ns_path)
            joined[n.name] = ep
        c.networks = joined
        for _, n, _ in nets:
            self._emit("connect", n, c)
        return ns_path, not first_drv.needs_netns

    def _ref_is(self, key: str, ep: dict, n: NetworkRecord) -> bool:
        return ep.get("NetworkID") == n.id or key in (n.name, n.id)

    async def _join(self, c: "Container", n: NetworkRecord, drv, cfg: dict,
                    ns_path: str | None, *, primary: bool) -> dict:
        user_net = n.name not in PREDEFINED
        aliases = list(cfg.get("Aliases") or [])
        names = [c.name.lstrip("/"), c.id[:12]] + aliases if user_net else []
        hc = c.host_config
        options: dict[str, Any] = {
            "names": names, "gateway": primary,
            "ipv4_address": (cfg.get("IPAMConfig") or {}).get("IPv4Address") or "",
            "dns_servers": list(hc.get("Dns") or []),
        }
        if primary:
            options.update(port_bindings=hc.get("PortBindings") or {},
                           exposed_ports=c.config.get("ExposedPorts") or {},
                           publish_all=bool(hc.get("PublishAllPorts")))
        ep_id = new_id()
        sandbox = Sandbox(container_id=c.id, netns_path=ns_path,
                          hostname=c.config.get("Hostname") or "")
        try:
            info = await drv.join(n.spec(), ep_id, sandbox, options)
        except EngineError:
            raise
        except Exception as e:  # a driver's raw error, named for the user
            raise DriverError(f"network driver {drv.name}: {type(e).__name__}: {e}") from e
        if user_net and c.id[:12] not in aliases:
            aliases.append(c.id[:12])
        ep = dict(cfg)
        ep.update({
            "NetworkID": n.id, "EndpointID": ep_id, "Gateway": info.gateway,
            "IPAddress": info.ip_address, "IPPrefixLen": info.ip_prefix_len,
            "IPv6Gateway": "", "GlobalIPv6Address": info.ipv6_address, "GlobalIPv6PrefixLen": 0,
            "MacAddress": info.mac_address, "Driver": drv.name, "Aliases": aliases or None,
            "_dns": list(info.dns), "_ports": dict(info.ports) if primary else {},
        })
        for key in ("IPAMConfig", "Links", "DriverOpts"):
            ep.setdefault(key, None)
        return ep

    async def _leave(self, c: "Container", n: NetworkRecord | None, drv, ep: dict,
                     ns_path: str | None) -> None:
        if not ep.get("EndpointID"):
            return
        spec = n.spec() if n is not None else NetworkSpec(id=ep.get("NetworkID", ""), name="")
        await drv.leave(spec, ep["EndpointID"], Sandbox(container_id=c.id, netns_path=ns_path))

    async def leave_container(self, c: "Container") -> None:
        """Leave every network of a stopped container (best effort, logged); keep the
        endpoints' configuration (aliases, address) for the next start."""
        for key, ep in list(c.networks.items()):
            n = self.networks.get(ep.get("NetworkID") or "")
            try:
                drv = self._driver(ep.get("Driver") or (n.driver if n else key))
                await self._leave(c, n, drv, ep, c.netns or None)
            except Exception as e:
                log.warning("container %s: leaving network %s failed: %s", c.id[:12], key, e)
            if n is not None and ep.get("EndpointID"):
                self._emit("disconnect", n, c)
            c.networks[key] = self._stopped(ep)

    def _emit(self, action: str, n: NetworkRecord, c: "Container") -> None:
        self.events.emit("network", action, n.id, {"container": c.id, "name": n.name,
                                                   "type": n.driver})

    @staticmethod
    def _stopped(ep: dict) -> dict:
        """An endpoint's settings once its container stopped: configuration only."""
        out = {k: v for k, v in ep.items() if not k.startswith("_")}
        out.update({k: v for k, v in _RUNTIME_FIELDS.items() if k != "NetworkID"})
        return out

    async def connect(self, ref: str, container_ref: str, cfg: dict | None) -> None:
        """POST /networks/{id}/connect: a running container gets one more interface."""
        await self._setup_done()
        n = self.get(ref)
        svc = self.containers
        c = svc.get(container_ref)
        if n.driver in ("host", "null"):
            raise Forbidden(f"container cannot be connected to the {n.name} network")
        mode = c.host_config.get("NetworkMode") or "default"
        if mode in ("host", "none") or mode.startswith("container:"):
            raise Forbidden("container sharing network namespace with another container or "
                            "host cannot be connected to any other network")
        if any(ep.get("NetworkID") == n.id or k == n.name for k, ep in c.networks.items()):
            raise Forbidden(f"endpoint with name {c.name.lstrip('/')} already exists in "
                            f"network {n.name}")
        conf = self._endpoint_config(n, cfg or {})
        rt = svc.runtime(c)
        async with rt.lock:
            if c.state.running and c.netns:
                drv = self._driver(n.driver)
                conf = await self._join(c, n, drv, conf, c.netns, primary=False)
            c.networks[n.name] = conf
            await svc.save(c)
        self._emit("connect", n, c)

    async def disconnect(self, ref: str, container_ref: str, force: bool = False) -> None:
        await self._setup_done()
        n = self.get(ref)
        svc = self.containers
        try:
            c = svc.get(container_ref)
        except NotFound:
            if force:
                return
            raise
        key = next((k for k, ep in c.networks.items()
                    if ep.get("NetworkID") == n.id or k == n.name), None)
        if key is None:
            raise Forbidden(f"container {c.id} is not connected to network {n.name}")
        if n.name in ("host",):
            raise Forbidden("container cannot be disconnected from host network or connected "
                            "to host network")
        rt = svc.runtime(c)
        async with rt.lock:
            ep = c.networks.pop(key)
            if ep.get("EndpointID"):
                try:
                    await self._leave(c, n, self._driver(n.driver), ep, c.netns or None)
                except Exception:
                    c.networks[key] = ep
                    raise
            await svc.save(c)
        self._emit("disconnect", n, c)


def ports_view(c: "Container") -> dict[str, list[dict] | None]:
    """Docker's NetworkSettings.Ports: published ports, and exposed ones as ``None``."""
    out: dict[str, list[dict] | None] = {}
    if not c.state.running:
        return out
    for key in c.config.get("ExposedPorts") or {}:
        out[key if "/" in key else f"{key}/tcp"] = None
    for ep in c.networks.values():
        for key, binds in (ep.get("_ports") or {}).items():
            out[key] = list(binds)
    return out


def ports_summary(c: "Container") -> list[dict]:
    """Docker's ``Ports`` of a container list entry."""
    out: list[dict] = []
    for key, binds in ports_view(c).items():
        port_s, _, proto = key.partition("/")
        if binds is None:
            out.append({"PrivatePort": int(port_s), "Type": proto or "tcp"})
            continue
        for b in binds:
            out.append({"IP": b.get("HostIp") or "0.0.0.0", "PrivatePort": int(port_s),
                        "PublicPort": int(b["HostPort"]), "Type": proto or "tcp"})
    return out
