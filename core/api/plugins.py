"""/plugins: the plugin host as Docker's plugin API shows it."""
from __future__ import annotations

from aiohttp import web

from .util import json_response, svc


async def list_(request: web.Request) -> web.Response:
    host = svc(request).plugins
    return json_response([p.to_api() for p in host.plugins.values()])


async def inspect(request: web.Request) -> web.Response:
    return json_response(svc(request).plugins.get(request.match_info["name"]).to_api())


async def enable(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    await s.plugins.enable(name)
    s.events.emit("plugin", "enable", name, {"name": name})
    return web.Response(status=200)


async def disable(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    await s.plugins.disable(name, s.containers.driver_in_use)
    s.events.emit("plugin", "disable", name, {"name": name})
    return web.Response(status=200)


ROUTES = [
    ("GET", "/plugins", list_),
    ("GET", "/plugins/{name}/json", inspect),
    ("POST", "/plugins/{name}/enable", enable),
    ("POST", "/plugins/{name}/disable", disable),
]
