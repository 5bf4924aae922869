"""Registry routes: pull (``POST /images/create?fromImage=``), push, ``/auth`` and
``/distribution/{name}/json``.

Pull and push answer with Docker's JSON progress lines. The stream starts with the first
progress message, so errors found before it (an unknown image, refused credentials) get
a plain error status; later errors are the stream's last line, as Docker writes them.
"""
from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web
from engine.core.store import reference
from engine.registry import auth
from engine.sdk.errors import InvalidArgument, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from engine.registry.client import RegistryClient

from .util import ProgressStream, body_json, json_response, registry_creds, svc

# One client per daemon (it shares downloads between concurrent pulls): keyed by the
# services object, which lives as long as the application.
_clients: dict[int, tuple[Any, RegistryClient]] = {}


def registry_client(s: Any) -> RegistryClient:
    """The daemon's registry client, made on first use."""
    entry = _clients.get(id(s))
    if entry is None or entry[0] is not s:
        # imported here: a daemon that never pulls or pushes never loads the client
        from engine.registry.client import RegistryClient, RegistryHosts

        hosts = RegistryHosts(insecure=getattr(s.config, "insecure_registries", None) or ())
        client = RegistryClient(s.content, s.images,
                                os.path.join(s.config.data_root, "registry"), hosts)
        entry = _clients[id(s)] = (s, client)
    return entry[1]


def pull_reference(image: str, tag: str) -> str:
    """``fromImage`` and ``tag`` as one reference (the tag may be a digest)."""
    if not image:
        raise InvalidArgument("fromImage must not be empty")
    if not tag:
        return image
    r = reference.parse(image)
    if r.tag or r.digest:
        return image
    return f"{image}@{tag}" if tag.startswith("sha256:") else f"{image}:{tag}"


async def pull(request: web.Request) -> web.StreamResponse:
    """``POST /images/create?fromImage=NAME&tag=TAG[&platform=os/arch]``."""
    s = svc(request)
    ref = pull_reference(request.query.get("fromImage") or "", request.query.get("tag") or "")
    stream = ProgressStream(request)
    try:
        img = await registry_client(s).pull(ref, platform=request.query.get("platform") or "",
                                            creds=registry_creds(request), progress=stream)
    except Exception as exc:
        if stream.resp is None:
            raise
        await stream.fail(exc)
    else:
        name = reference.familiar(reference.normalize(ref))
        s.events.emit("image", "pull", name, {"name": name, "id": img.id})
    return await stream.close()


def _tags_of(s: Any, name: str) -> list[str]:
    """Every local ``name:tag`` of repository ``name`` (a push without tag pushes all)."""
    repo = reference.parse(name)
    want = f"{repo.name}:"
    out = []
    for img in s.images.list():
        for t in img.repo_tags:
            full = reference.normalize(t)
            if full.startswith(want) and "/" not in full[len(want):]:
                out.append(full)
    return sorted(set(out))


async def push(request: web.Request) -> web.StreamResponse:
    """``POST /images/{name}/push?tag=TAG`` with ``X-Registry-Auth``."""
    s = svc(request)
    name = request.match_info["name"]
    tag = request.query.get("tag") or ""
    r = reference.parse(name)
    loop = asyncio.get_running_loop()
    if tag or r.tag:
        refs = [f"{name}:{tag}" if tag and not r.tag else name]
        await loop.run_in_executor(None, s.images.get, refs[0])  # 404 before the stream
    else:
        refs = await loop.run_in_executor(None, _tags_of, s, name)
        if not refs:
            raise NotFound(f"An image does not exist locally with the tag: "
                           f"{reference.familiar_name(r)}")
    client = registry_client(s)
    stream = ProgressStream(request)
    creds = registry_creds(request)
    try:
        for ref in refs:
            await client.push(ref, creds=creds, progress=stream)
            s.events.emit("image", "push", reference.familiar(reference.normalize(ref)),
                          {"name": reference.familiar(reference.normalize(ref))})
    except Exception as exc:
        if stream.resp is None:
            raise
        await stream.fail(exc)
    return await stream.close()


async def login(request: web.Request) -> web.Response:
    """``POST /auth``: check credentials against a registry, as ``docker login`` does."""
    s = svc(request)
    creds = auth.from_json(await body_json(request))
    if creds.empty:
        raise InvalidArgument("username and password are required")
    token = await registry_client(s).login(creds.server, creds)
    return json_response({"Status": "Login Succeeded", "IdentityToken": token})


async def distribution(request: web.Request) -> web.Response:
    """``GET /distribution/{name}/json``: the registry's descriptor of an image."""
    s = svc(request)
    info = await registry_client(s).distribution(request.match_info["name"], registry_creds(request))
    return json_response(info)


ROUTES = [
    ("POST", "/images/{name:.+}/push", push),
    ("POST", "/auth", login),
    ("GET", "/distribution/{name:.+}/json", distribution),
]
