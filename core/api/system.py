"""/_ping, /version, /info, /events, /system/df."""
from __future__ import annotations

import asyncio
import os
import platform
import time

from aiohttp import web

from ..config import insecure_registry
from .keys import API_VERSION, ENGINE_VERSION, MIN_API_VERSION
from .util import encode, json_response, qfilters, svc

PING_HEADERS = {"Api-Version": API_VERSION, "Builder-Version": "1", "Docker-Experimental": "false",
                "Ostype": "linux", "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache", "Server": "engine"}


async def ping(request: web.Request) -> web.Response:
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, headers=PING_HEADERS, content_type="text/plain")


def _version() -> dict:
    u = os.uname()
    return {
        "Platform": {"Name": "engine"},
        "Components": [{"Name": "Engine", "Version": ENGINE_VERSION,
                        "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                    "Os": "linux", "Arch": _arch(), "KernelVersion": u.release}}],
        "Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "", "GoVersion": "python" + platform.python_version(), "Os": "linux",
        "Arch": _arch(), "KernelVersion": u.release, "BuildTime": "",
    }


def _arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


async def version(request: web.Request) -> web.Response:
    return json_response(_version())


async def info(request: web.Request) -> web.Response:
    s = svc(request)
    cs = list(s.containers.containers.values())
    running = sum(1 for c in cs if c.state.status == "running")
    paused = sum(1 for c in cs if c.state.status == "paused")
    from ..runtime import cgroups

    try:
        cgv = str(cgroups.version())
    except Exception:
        cgv = "1"
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    drivers = s.plugins.drivers
    return json_response({
        "ID": s.daemon_id, "Containers": len(cs), "ContainersRunning": running,
        "ContainersPaused": paused, "ContainersStopped": len(cs) - running - paused,
        "Images": len(s.images.list()), "Driver": getattr(s.layers, "driver_name", "overlay2"),
        "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": {"Volume": sorted(drivers["volume"]), "Network": sorted(drivers["network"]),
                    "Authorization": None, "Log": sorted(drivers["log"])},
        "MemoryLimit": True, "SwapLimit": True, "KernelMemory": False, "CpuCfsPeriod": True,
        "CpuCfsQuota": True, "CPUShares": True, "CPUSet": True, "PidsLimit": True,
        "IPv4Forwarding": True, "BridgeNfIptables": True, "BridgeNfIp6tables": True,
        "Debug": s.config.debug, "NFd": len(os.listdir("/proc/self/fd")),
        "OomKillDisable": True, "NGoroutines": len(asyncio.all_tasks()),
        "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
        "LoggingDriver": s.config.log_driver, "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgv, "NEventsListener": len(s.events.subscribers),
        "KernelVersion": os.uname().release, "OperatingSystem": _os_name(), "OSVersion": "",
        "OSType": "linux", "Architecture": os.uname().machine, "IndexServerAddress":
        "https://index.docker.io/v1/", "RegistryConfig": registry_config(s.config),
        "NCPU": os.cpu_count() or 1, "MemTotal": mem, "GenericResources": None,
        "DockerRootDir": s.config.data_root, "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Name": os.uname().nodename, "Labels": [], "ExperimentalBuild": False,
        "ServerVersion": ENGINE_VERSION, "Runtimes": {"builtin": {"path": "engine"},
                                                      "runc": {"path": "runc"}},
        "DefaultRuntime": s.config.default_runtime, "Swarm": {"LocalNodeState": "inactive"},
        "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""}, "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""}, "SecurityOptions": ["name=cgroupns"] if cgv == "2" else [],
        "Warnings": None,
    })


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _strip_tag(ref: str) -> str:
    """``busybox:latest`` -> ``busybox`` (a registry port or a digest is kept)."""
    if "@" in ref:
        return ref
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref


def _event_matches(ev: dict, filters: dict) -> bool:
    def vals(key):
        v = filters.get(key) or []
        return list(v) if isinstance(v, list) else [k for k, on in v.items() if on]

    for key in filters:
        want = vals(key)
        if not want:
            continue
        attrs = ev["Actor"]["Attributes"]
        if key == "type" and ev["Type"] not in want:
            return False
        if key == "event" and ev["Action"].split(":")[0] not in want:
            return False
        if key == "image":
            # as Docker: an image event by its id or name, any other event by the
            # image attribute it carries (a container's); tags optional
            name = attrs.get("name" if ev["Type"] == "image" else "image", "")
            cands = {ev["Actor"]["ID"], name, _strip_tag(ev["Actor"]["ID"]), _strip_tag(name)}
            if not any(w in cands for w in want):
                return False
        elif key in ("container", "volume", "network", "plugin"):
            if ev["Type"] != key:
                return False
            ident = ev["Actor"]["ID"]
            if not any(ident.startswith(w) or attrs.get("name") == w for w in want):
                return False
        if key == "label":
            for w in want:
                k, eq, v = w.partition("=")
                if k not in attrs or (eq and attrs[k] != v):
                    return False
    return True


async def events(request: web.Request) -> web.StreamResponse:
    from ..util import parse_since

    s = svc(request)
    since = parse_since(request.query.get("since"))
    until = parse_since(request.query.get("until"))
    filters = qfilters(request)
    q = s.events.subscribe()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        if since:
            for ev in list(s.events.history):
                if ev["timeNano"] / 1e9 >= since and (not until or ev["timeNano"] / 1e9 <= until) \
                        and _event_matches(ev, filters):
                    await resp.write(encode(ev) + b"\n")
        while True:
            timeout = None
            if until:
                timeout = until - time.time()
                if timeout <= 0:
                    break
            try:
                ev = await asyncio.wait_for(q.get(), timeout)
            except asyncio.TimeoutError:
                break
            if until and ev["timeNano"] / 1e9 > until:
                break
            if _event_matches(ev, filters):
                await resp.write(encode(ev) + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        s.events.unsubscribe(q)
    return resp


async def system_df(request: web.Request) -> web.Response:
    s = svc(request)
    imgs = s.images.list()
    in_use: dict[str, int] = {}
    for c in s.containers.containers.values():
        in_use[c.image] = in_use.get(c.image, 0) + 1
    from .images import summary

    images = []
    for im in imgs:
        d = summary(s, im)
        d["Containers"] = in_use.get(im.id, 0)
        images.append(d)
    containers = [s.containers.summary(c, size=True) for c in s.containers.containers.values()]
    vols = []
    for name, drv in s.plugins.drivers["volume"].items():
        if name == "bind":
            continue
        for v in await drv.list():
            used = sum(1 for c in s.containers.containers.values()
                       for m in c.mounts if m.get("Name") == v.name)
            vols.append({"Name": v.name, "Driver": name, "Mountpoint": v.mountpoint,
                         "CreatedAt": v.created_at, "Labels": v.labels, "Scope": "local",
                         "Options": v.options,
                         "UsageData": {"Size": await _du(v.mountpoint), "RefCount": used}})
    layers_size = sum(i.get("Size", 0) for i in images)
    return json_response({"LayersSize": layers_size, "Images": images, "Containers": containers,
                          "Volumes": vols, "BuildCache": []})


async def _du(path: str) -> int:
    def walk() -> int:
        total = 0
        for root, dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total

    return await asyncio.get_running_loop().run_in_executor(None, walk)


async def build_prune(request: web.Request) -> web.Response:
    """There is no build cache (no builder yet): nothing to prune. ``docker system
    prune`` calls this after the containers, images and networks."""
    return json_response({"CachesDeleted": None, "SpaceReclaimed": 0})


ROUTES = [
    ("GET", "/_ping", ping),
    ("POST", "/build/prune", build_prune),
    ("HEAD", "/_ping", ping),
    ("GET", "/version", version),
    ("GET", "/info", info),
    ("GET", "/events", events),
    ("GET", "/system/df", system_df),
]


def registry_config(cfg) -> dict:
    """``/info``'s RegistryConfig as dockerd fills it: loopback and the configured
    networks as insecure CIDRs, the configured hosts as insecure index configs beside
    Docker Hub's."""
    cidrs, hosts = ["127.0.0.0/8"], []
    for entry in getattr(cfg, "insecure_registries", None) or ():
        parsed = insecure_registry(entry)  # checked when the config was read
        if isinstance(parsed, str):
            hosts.append(parsed)
        else:
            cidrs.append(str(parsed))
    index = {"docker.io": {"Name": "docker.io", "Mirrors": [], "Secure": True,
                           "Official": True}}
    for host in hosts:
        index[host] = {"Name": host, "Mirrors": [], "Secure": False, "Official": False}
    return {"AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": list(dict.fromkeys(cidrs)), "IndexConfigs": index,
            "Mirrors": []}
