"""/networks: user-defined and predefined networks, connect and disconnect."""
from __future__ import annotations

from aiohttp import web

from engine.sdk.errors import InvalidArgument, NotFound

from .util import body_json, json_response, qfilters, svc


def _networks(request: web.Request):
    s = svc(request)
    if getattr(s, "networks", None) is None:
        raise NotFound("networking is not available in this daemon")
    return s.networks


async def list_(request: web.Request) -> web.Response:
    return json_response(_networks(request).list(qfilters(request)))


async def inspect(request: web.Request) -> web.Response:
    return json_response(_networks(request).inspect(request.match_info["id"]))


async def create(request: web.Request) -> web.Response:
    body = await body_json(request)
    return json_response(await _networks(request).create(body), status=201)


async def remove(request: web.Request) -> web.Response:
    await _networks(request).remove(request.match_info["id"])
    return web.Response(status=204)


async def connect(request: web.Request) -> web.Response:
    body = await body_json(request)
    container = body.get("Container") or ""
    if not container:
        raise InvalidArgument("Container must be given")
    await _networks(request).connect(request.match_info["id"], container,
                                     body.get("EndpointConfig"))
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    body = await body_json(request)
    container = body.get("Container") or ""
    if not container:
        raise InvalidArgument("Container must be given")
    await _networks(request).disconnect(request.match_info["id"], container,
                                        bool(body.get("Force")))
    return web.Response(status=200)


async def prune(request: web.Request) -> web.Response:
    deleted = await _networks(request).prune(qfilters(request))
    return json_response({"NetworksDeleted": deleted or None})


ROUTES = [
    ("GET", "/networks", list_),
    ("POST", "/networks/create", create),
    ("POST", "/networks/prune", prune),
    ("GET", "/networks/{id}", inspect),
    ("DELETE", "/networks/{id}", remove),
    ("POST", "/networks/{id}/connect", connect),
    ("POST", "/networks/{id}/disconnect", disconnect),
]
