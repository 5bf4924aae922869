"""/volumes: named volumes through the volume drivers."""
from __future__ import annotations

from aiohttp import web

from engine.sdk.errors import Conflict, NotFound

from .keys import API_VERSION
from .util import body_json, json_response, path_version, qbool, qfilters, svc


def _in_use(s, name: str) -> list[str]:
    return [c.id for c in s.containers.containers.values()
            if any(m.get("Type") == "volume" and m.get("Name") == name for m in c.mounts)]


def _api(v, driver: str) -> dict:
    return {"Name": v.name, "Driver": driver, "Mountpoint": v.mountpoint,
            "CreatedAt": v.created_at, "Labels": v.labels or None, "Scope": "local",
            "Options": v.options or None, "Status": v.status or None}


async def _all(s):
    out = []
    for name, drv in s.plugins.drivers["volume"].items():
        if name == "bind":
            continue
        for v in await drv.list():
            out.append((name, v))
    return out


async def _find(s, name: str):
    for dname, drv in s.plugins.drivers["volume"].items():
        if dname == "bind":
            continue
        try:
            return dname, await drv.get(name)
        except NotFound:
            continue
    raise NotFound(f"get {name}: no such volume")


def _labels_match(labels: dict | None, wanted: list[str]) -> bool:
    """Docker's label filter: every ``key`` present, every ``key=value`` equal."""
    labels = labels or {}
    for w in wanted:
        k, eq, v = w.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


async def list_(request: web.Request) -> web.Response:
    s = svc(request)
    filters = qfilters(request)
    vols = []
    for dname, v in await _all(s):
        if "dangling" in filters:
            want = list(filters["dangling"])[0] in ("true", "1")
            if (not _in_use(s, v.name)) != want:
                continue
        if "name" in filters and not any(n in v.name for n in filters["name"]):
            continue
        if "driver" in filters and dname not in filters["driver"]:
            continue
        if "label" in filters and not _labels_match(v.labels, list(filters["label"])):
            continue
        vols.append(_api(v, dname))
    return json_response({"Volumes": vols, "Warnings": None})


async def create(request: web.Request) -> web.Response:
    s = svc(request)
    body = await body_json(request, optional=True)
    from ..util import new_id

    name = body.get("Name") or new_id()
    dname = body.get("Driver") or "local"
    drv = s.plugins.volume(dname)
    v = await drv.create(name, body.get("DriverOpts") or {}, body.get("Labels") or {})
    s.events.emit("volume", "create", name, {"driver": dname})
    return json_response(_api(v, dname), status=201)


async def inspect(request: web.Request) -> web.Response:
    s = svc(request)
    dname, v = await _find(s, request.match_info["name"])
    return json_response(_api(v, dname))


async def remove(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    try:
        dname, v = await _find(s, name)
    except NotFound:
        if qbool(request, "force"):
            return web.Response(status=204)
        raise
    users = _in_use(s, name)
    if users:
        raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
    await s.plugins.volume(dname).remove(name)
    s.events.emit("volume", "destroy", name, {"driver": dname})
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    s = svc(request)
    filters = qfilters(request)
    # Before API 1.42 a prune removed named volumes too; "all" asks for it since.
    version = path_version(request) or API_VERSION
    old_api = tuple(int(x) for x in version.split(".")) < (1, 42)
    all_ = old_api or ("all" in filters and list(filters["all"])[0] in ("true", "1"))
    deleted = []
    for dname, v in await _all(s):
        if _in_use(s, v.name):
            continue
        if "label" in filters and not _labels_match(v.labels, list(filters["label"])):
            continue
        anonymous = len(v.name) == 64 and all(ch in "0123456789abcdef" for ch in v.name)
        if not all_ and not anonymous:
            continue
        await s.plugins.volume(dname).remove(v.name)
        s.events.emit("volume", "destroy", v.name, {"driver": dname})
        deleted.append(v.name)
    return json_response({"VolumesDeleted": deleted or None, "SpaceReclaimed": 0})


ROUTES = [
    ("GET", "/volumes", list_),
    ("POST", "/volumes/create", create),
    ("POST", "/volumes/prune", prune),
    ("GET", "/volumes/{name}", inspect),
    ("DELETE", "/volumes/{name}", remove),
]
