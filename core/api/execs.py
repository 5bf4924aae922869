"""/containers/{id}/exec and /exec/{id}/..."""
from __future__ import annotations

from aiohttp import web

from engine.sdk.errors import Conflict, EngineError

from .util import body_json, frame, hijack, json_response, qint, splice, svc


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
    if detach:
        await cs.exec_start(eid, True, tty)
        return web.Response(status=200)
    if x.running or x.exit_code is not None:
        raise Conflict(f"Error: Exec command {eid} has already run")
    c = cs.get(x.container_id)
    if not c.state.running:
        raise Conflict(f"Container {c.id} is not running")
    # Like Docker, hijack first: a command that cannot run is reported on the stream
    # (its exit code, 126 or 127, is in the exec's inspect), not as an HTTP error.
    client = await hijack(request, multiplexed=not tty)
    try:
        stream = await cs.exec_start(eid, False, tty)
    except EngineError as e:
        msg = f"{e.message}\r\n".encode()
        client[1].write(msg if tty else frame(1, msg))
        try:
            await client[1].drain()
        except ConnectionError:
            pass
        client[1].close()
        return web.Response()
    await splice(client, stream[:2], stdin=bool(x.config.get("AttachStdin")),
                 before_close=lambda: cs.exec_wait(eid))
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
