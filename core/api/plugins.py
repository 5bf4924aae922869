"""/plugins: the plugin host as Docker's plugin API shows it.

Install sources are given in ``remote``: the absolute path of a wheel file or of a
plugin directory on the daemon's machine, or a registry reference (an engine plugin
artifact or a Docker managed plugin; short names resolve against the daemon's
``plugin-registry``). The granted privileges travel as the JSON body of ``pull`` and
``upgrade``, and must match what ``/plugins/privileges`` answered. Registry
credentials come in ``X-Registry-Auth``, as for image pulls and pushes.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from aiohttp import web

from engine.core.managed import ManagedPlugin
from engine.sdk.errors import InvalidArgument

from .util import (ProgressStream, encode, json_response, json_stream, qbool, qfilters,
                   registry_creds, svc)


def _remote(request: web.Request) -> str:
    remote = request.query.get("remote", "")
    if not remote:
        raise InvalidArgument("remote is required: a wheel file or a plugin directory")
    return remote


async def _granted(request: web.Request) -> list:
    """The JSON list in the request body (granted privileges, settings)."""
    data = await request.read()
    if not data.strip():
        return []
    try:
        granted = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if granted is None:
        return []
    if not isinstance(granted, list):
        raise InvalidArgument("the request body must be a JSON list")
    return granted


def _matches(p: dict, filters: dict) -> bool:
    for value in filters.get("enabled") or {}:
        if str(p["Enabled"]).lower() != str(value).lower():
            return False
    caps = list(filters.get("capability") or {})
    if caps:
        types = [t.split(".", 1)[-1].split("/")[0] for t in p["Config"]["Interface"]["Types"]]
        if not any(c.lower() in types or f"{c.lower()}driver" in types for c in caps):
            return False
    return True


async def list_(request: web.Request) -> web.Response:
    host = svc(request).plugins
    filters = {k: (dict.fromkeys(v, True) if isinstance(v, list) else v)
               for k, v in qfilters(request).items()}
    return json_response([p.to_api() for p in host.all() if _matches(p.to_api(), filters)])


async def inspect(request: web.Request) -> web.Response:
    return json_response(svc(request).plugins.get(request.match_info["name"]).to_api())


async def enable(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    await s.plugins.enable(name)
    s.events.emit("plugin", "enable", name, {"name": name})
    return web.Response(status=200)


def _in_use(s: Any) -> Callable[[str, str], str]:
    """What uses a driver: a container, or (network drivers) a network made with it."""
    def check(kind: str, name: str) -> str:
        user = s.containers.driver_in_use(kind, name)
        if user or kind != "network" or s.networks is None:
            return user
        for n in s.networks.networks.values():
            if n.driver == name:
                return f"network {n.name}"
        return ""
    return check


async def disable(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    await s.plugins.disable(name, _in_use(s), force=qbool(request, "force"))
    s.events.emit("plugin", "disable", name, {"name": name})
    return web.Response(status=200)


async def privileges(request: web.Request) -> web.Response:
    remote = _remote(request)
    return json_response(await svc(request).plugins.privileges_of(remote, registry_creds(request)))


async def _progress(request: web.Request, lines: list[dict],
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
    resp = await json_stream(request, headers)
    for line in lines:
        await resp.write(encode(line) + b"\n")
    await resp.write_eof()
    return resp


async def pull(request: web.Request) -> web.StreamResponse:
    """Docker's ``plugin install``. The plugin's name goes back in the
    ``Docker-Plugin-Name`` header: the docker CLI enables the plugin by that name."""
    s = svc(request)
    remote = _remote(request)
    alias = request.query.get("name", "")
    if alias == remote:
        alias = ""  # Docker's CLI sends the remote as the name when there is no alias
    names = await s.plugins.install(remote, alias, await _granted(request),
                                    creds=registry_creds(request))
    for name in names:
        s.events.emit("plugin", "pull", name, {"name": name})
    return await _progress(request, [{"status": f"Installing {remote}"},
                                     {"aux": {"Plugins": names}}],
                           {"Docker-Plugin-Name": names[0]} if len(names) == 1 else None)


async def upgrade(request: web.Request) -> web.StreamResponse:
    s = svc(request)
    name = request.match_info["name"]
    remote = _remote(request)
    await s.plugins.upgrade(name, remote, await _granted(request), creds=registry_creds(request))
    s.events.emit("plugin", "upgrade", name, {"name": name})
    return await _progress(request, [{"status": f"Upgraded plugin {name} from {remote}"}])


async def remove(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    await s.plugins.remove(name, _in_use(s), force=qbool(request, "force"))
    s.events.emit("plugin", "remove", name, {"name": name})
    return web.Response(status=200)


async def create(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.query.get("name", "")
    names = await s.plugins.create(name, await request.read())
    for n in names:
        s.events.emit("plugin", "create", n, {"name": n})
    return web.Response(status=204)


async def set_(request: web.Request) -> web.Response:
    """Docker's ``plugin set KEY=VALUE``: a managed plugin's settable env, args, mount
    sources and device paths; engine plugins have none (they take driver options)."""
    s = svc(request)
    rec = s.plugins.get(request.match_info["name"])
    settings = await _granted(request)
    if settings or isinstance(rec, ManagedPlugin):
        await s.plugins.set_managed(rec.name, settings)
    return web.Response(status=204)


async def push(request: web.Request) -> web.StreamResponse:
    """Docker's ``plugin push``: the plugin goes to the registry its name resolves
    to. Errors before the upload starts are plain HTTP errors; later ones end the
    progress stream, as Docker writes them."""
    s = svc(request)
    name = request.match_info["name"]
    stream = ProgressStream(request)
    try:
        await s.plugins.push(name, registry_creds(request), stream)
    except Exception as exc:
        if stream.resp is None:
            raise
        await stream.fail(exc)
    else:
        s.events.emit("plugin", "push", name, {"name": name})
    return await stream.close()


ROUTES = [
    ("GET", "/plugins", list_),
    ("GET", "/plugins/privileges", privileges),
    ("POST", "/plugins/pull", pull),
    ("POST", "/plugins/create", create),
    ("GET", "/plugins/{name:.+}/json", inspect),
    ("POST", "/plugins/{name:.+}/enable", enable),
    ("POST", "/plugins/{name:.+}/disable", disable),
    ("POST", "/plugins/{name:.+}/upgrade", upgrade),
    ("POST", "/plugins/{name:.+}/set", set_),
    ("POST", "/plugins/{name:.+}/push", push),
    ("DELETE", "/plugins/{name:.+}", remove),
]
