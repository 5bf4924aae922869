"""/containers/{id}/exec and /exec/{id}/..."""
from __future__ import annotations

from aiohttp import web

from .util import body_json, hijack, json_response, qint, splice, svc


async def create(request: web.Request) -> web.Response:
    body = await body_json(request)
    eid = svc(request).containers.exec_create(request.match_info["id"], body)
    return json_response({"Id": eid}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    cs = svc(request).containers
    eid = request.match_info["id"]
    body = await body_json(request, optional=True)
    detach = bool(body.get("Detach"))
    x = cs.get_exec(eid)
    tty = bool(body.get("Tty", x.config.get("Tty")))
    # start before hijacking: a command that cannot run is an ordinary HTTP error
    stream = await cs.exec_start(eid, detach, tty)
    if detach or stream is None:
        return web.Response(status=200)
    client = await hijack(request, multiplexed=not tty)
    await splice(client, stream[:2], stdin=bool(x.config.get("AttachStdin")))
    return web.Response()


async def resize(request: web.Request) -> web.Response:
    await svc(request).containers.exec_resize(request.match_info["id"], qint(request, "h", 0),
                                              qint(request, "w", 0))
    return web.Response(status=200)


async def inspect(request: web.Request) -> web.Response:
    return json_response(svc(request).containers.exec_inspect(request.match_info["id"]))


ROUTES = [
    ("POST", "/containers/{id}/exec", create),
    ("POST", "/exec/{id}/start", start),
    ("POST", "/exec/{id}/resize", resize),
    ("GET", "/exec/{id}/json", inspect),
]
