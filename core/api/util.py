"""Helpers shared by the route modules: query parsing, JSON bodies, stream framing."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from engine.registry import auth
from engine.sdk.errors import EngineError, InvalidArgument

from .keys import API_VERSION, SERVICES

_enc = msgspec.json.Encoder()


def path_version(request: web.Request) -> str | None:
    """The API version in the request's path (``/v1.41/...`` -> ``"1.41"``), or None
    for an unversioned path."""
    v = request.match_info.get("version")
    return v.strip("v/") if v else None


def svc(request: web.Request):
    return request.app[SERVICES]


def qbool(request: web.Request, name: str, default: bool = False) -> bool:
    v = request.query.get(name)
    if v is None:
        return default
    return v.lower() not in ("", "0", "false", "no")


def qint(request: web.Request, name: str, default: int | None = None) -> int | None:
    v = request.query.get(name)
    if v in (None, ""):
        return default
    try:
        return int(v)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {v!r}") from None


def qfilters(request: web.Request) -> dict:
    raw = request.query.get("filters")
    if not raw:
        return {}
    try:
        f = json.loads(raw)
    except ValueError:
        raise InvalidArgument(f"invalid filters: {raw!r}") from None
    if not isinstance(f, dict):
        raise InvalidArgument("invalid filters: expected an object")
    return f


async def body_json(request: web.Request, optional: bool = False) -> dict:
    data = await request.read()
    if not data.strip():
        if optional:
            return {}
        raise InvalidArgument("request body must not be empty")
    try:
        v = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if v is None and optional:
        return {}
    if not isinstance(v, dict):
        raise InvalidArgument("request body must be a JSON object")
    return v


def json_response(obj, status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(obj), status=status, content_type="application/json")


def frame(stream: int, data: bytes) -> bytes:
    """Docker's stdcopy framing: stream byte, three zeros, big-endian length."""
    return struct.pack(">BxxxI", stream, len(data)) + data


async def hijack(request: web.Request, *, multiplexed: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Take the client's connection over for a raw bidirectional stream (attach, exec).

    The socket is duplicated and aiohttp's own transport is closed, so from here on the
    stream belongs to us: half-closes pass through, and nothing else is written on it.
    """
    upgrade = "upgrade" in request.headers.get("Connection", "").lower()
    ctype = ("application/vnd.docker.multiplexed-stream" if multiplexed
             else "application/vnd.docker.raw-stream")
    tr = request.transport
    sock = tr.get_extra_info("socket")
    dup = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
    dup.setblocking(False)
    tr.abort()
    reader, writer = await asyncio.open_connection(sock=dup, limit=1 << 20)
    if upgrade:
        head = (f"HTTP/1.1 101 UPGRADED\r\nContent-Type: {ctype}\r\nConnection: Upgrade\r\n"
                f"Upgrade: tcp\r\nApi-Version: {API_VERSION}\r\n\r\n")
    else:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nApi-Version: {API_VERSION}\r\n\r\n"
    writer.write(head.encode())
    return reader, writer


async def splice(client: tuple, backend: tuple, *, stdin: bool,
                 before_close: Callable[[], Awaitable[None]] | None = None) -> None:
    """Copy backend -> client until the backend ends, and client -> backend (stdin)
    until the client half-closes, passing the half-close on. ``before_close`` is
    awaited once the backend is closed and before the client's connection is."""
    cr, cw = client
    br, bw = backend

    async def up() -> None:
        try:
            while True:
                data = await cr.read(65536)
                if not data:
                    break
                if stdin:
                    bw.write(data)
                    await bw.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if stdin and bw.can_write_eof():
                try:
                    bw.write_eof()
                except (OSError, RuntimeError):
                    pass

    task = asyncio.create_task(up())
    try:
        while True:
            data = await br.read(65536)
            if not data:
                break
            cw.write(data)
            await cw.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        task.cancel()
        try:
            bw.close()
        except (OSError, RuntimeError):
            pass
        if before_close is not None:
            await before_close()
        try:
            if cw.can_write_eof():
                cw.write_eof()
            cw.close()
        except (OSError, RuntimeError):
            pass


async def json_stream(request: web.Request,
                      headers: dict[str, str] | None = None) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json", **(headers or {})})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


class ProgressStream:
    """Docker's JSON progress lines (pull, push, plugin push), the response prepared
    lazily on the first one: an error before it can still be a plain HTTP error."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp: web.StreamResponse | None = None

    async def __call__(self, msg: dict) -> None:
        if self.resp is None:
            self.resp = await json_stream(self.request)
        await self.resp.write(encode(msg) + b"\n")

    async def fail(self, exc: Exception) -> None:
        """End the stream with ``exc`` as Docker writes errors there."""
        message = exc.message if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        await self({"errorDetail": {"message": message}, "error": message})

    async def close(self) -> web.StreamResponse:
        if self.resp is None:
            self.resp = await json_stream(self.request)
        await self.resp.write_eof()
        return self.resp


def registry_creds(request: web.Request) -> auth.Credentials | None:
    """The registry credentials the client sent (``X-Registry-Auth``)."""
    return auth.decode_header(request.headers.get("X-Registry-Auth"))


def encode(obj) -> bytes:
    return _enc.encode(obj)
