"""The aiohttp application: routes per resource, errors mapped in one middleware.

Every route answers both versioned (``/v1.41/containers/json``) and unversioned paths.
Handlers are thin: decode the request, call a service, encode the answer.
"""
from __future__ import annotations

import logging

import msgspec
from aiohttp import web

from engine.sdk.errors import EngineError

from . import containers, distribution, execs, images, networks, plugins, system, volumes
from .keys import API_VERSION, MIN_API_VERSION
from .util import json_response, path_version

log = logging.getLogger("engine.api")


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except EngineError as e:
        if e.status == 304:
            return web.Response(status=304)
        if e.status >= 500:
            log.error("%s %s: %s", request.method, request.path, e)
        return json_response({"message": e.message}, status=e.status)
    except (msgspec.DecodeError, ValueError, UnicodeDecodeError) as e:
        return json_response({"message": f"invalid request: {e}"}, status=400)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return json_response({"message": e.reason if e.status != 404 else
                                      f"page not found: {request.path}"}, status=e.status)
        raise
    except ConnectionResetError:
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return json_response({"message": f"{type(e).__name__}: {e}"}, status=500)


#: every route starts with an optional ``v<API version>/``
VERSION_PREFIX = "/{version:(?:v[0-9.]+/)?}"


@web.middleware
async def version(request: web.Request, handler):
    v = path_version(request)
    if v is not None:
        try:
            tup = tuple(int(x) for x in v.split("."))
        except ValueError:
            tup = (0,)
        if tup < tuple(int(x) for x in MIN_API_VERSION.split(".")):
            return json_response(
                {"message": f"client version {v} is too old. Minimum supported API version is "
                            f"{MIN_API_VERSION}, please upgrade your client to a newer version"},
                status=400)
    resp = await handler(request)
    if isinstance(resp, web.StreamResponse) and not resp.prepared:
        resp.headers.setdefault("Api-Version", API_VERSION)
        resp.headers.setdefault("Server", "engine")
    return resp


def make_app(services) -> web.Application:
    app = web.Application(middlewares=[errors, version], client_max_size=1 << 40)
    from .keys import SERVICES

    app[SERVICES] = services
    table: list[tuple[str, str, object]] = []
    for mod in (system, containers, execs, images, distribution, volumes, networks, plugins):
        table.extend(mod.ROUTES)
    for method, path, handler in table:
        # one route for both /v1.41/containers/json and /containers/json: half the
        # routes to build and keep, and the versioned ones (what clients send) are
        # matched exactly as before
        app.router.add_route(method, VERSION_PREFIX + path[1:], handler)
    return app
