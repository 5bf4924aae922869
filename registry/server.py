"""``engine registry serve``: an OCI distribution (registry API v2) server.

One aiohttp application over :class:`~engine.registry.storage.Storage`. The request path
after ``/v2/`` is matched against the spec's endpoints here (repository names contain
slashes, so aiohttp's router cannot split them); handlers decode the request, call the
storage in an executor and encode the answer. Errors are the spec's JSON documents.

Access control: none, basic auth (``--htpasswd``, with ``--access`` rules per user and
repository), or bearer tokens from the server's own token service (``--token``; see
:mod:`engine.registry.token`), where the credentials and rules are checked once per
token and each request against the token's grants. By default the challenge names this
server's ``/token`` at the address the client used (its ``Host``), so the client only
ever sends its credentials where it already connects; ``--token-realm`` sets another.

Entry points: ``python -m engine.registry serve --addr 127.0.0.1:5000 --root DIR`` and
:func:`main`, which the ``engine`` CLI calls for ``engine registry ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import sys
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import hdrs, web

from . import spec
from .htpasswd import Access, Htpasswd
from .storage import DistributionError, Storage, check_name
from .token import Scope, TokenService, parse_scopes

log = logging.getLogger("engine.registry")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
#: what a blob sent by copying is read in
_COPY_CHUNK = 256 << 10
_CONTENT_RANGE = re.compile(r"^(?:bytes )?(\d+)-(\d+)(?:/\d+|/\*)?$")
_ROUTES = [
    ("tags", re.compile(r"^(?P<name>.+)/tags/list$")),
    ("manifest", re.compile(r"^(?P<name>.+)/manifests/(?P<ref>[^/]+)$")),
    ("upload", re.compile(r"^(?P<name>.+)/blobs/uploads/?(?P<uuid>[^/]*)$")),
    ("blob", re.compile(r"^(?P<name>.+)/blobs/(?P<digest>[^/]+)$")),
    ("referrers", re.compile(r"^(?P<name>.+)/referrers/(?P<digest>[^/]+)$")),
]


class Settings:
    """What a server instance was started with."""

    def __init__(
        self,
        root: str | Path,
        *,
        htpasswd: Htpasswd | None = None,
        access: Access | None = None,
        read_only: bool = False,
        realm: str = "engine-registry",
        tokens: TokenService | None = None,
    ) -> None:
        self.storage = Storage(root)
        self.htpasswd = htpasswd
        self.access = access or Access()
        self.read_only = read_only
        self.realm = realm
        #: the token service: clients then bring bearer tokens from ``/token``
        self.tokens = tokens
        # one writer per upload session at a time (concurrent PATCHes would interleave)
        self._upload_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = \
            weakref.WeakValueDictionary()

    def upload_lock(self, ident: str) -> asyncio.Lock:
        lock = self._upload_locks.get(ident)
        if lock is None:
            lock = self._upload_locks[ident] = asyncio.Lock()
        return lock


SETTINGS: web.AppKey[Settings] = web.AppKey("registry-settings", Settings)
#: The authenticated user of a request (None: anonymous). RequestKey came with aiohttp 3.12.
USER: Any = (web.RequestKey("registry-user", object) if hasattr(web, "RequestKey")
             else "registry-user")
#: With the token service: the grants of the request's token.
GRANTS: Any = (web.RequestKey("registry-grants", object) if hasattr(web, "RequestKey")
               else "registry-grants")


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _error(exc: DistributionError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=headers)


# -- authentication ------------------------------------------------------------------


async def _basic_user(request: web.Request, settings: Settings) -> str | None:
    """The user of the request's basic credentials, None without any; 401 for wrong
    ones (or any, with no htpasswd file)."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and settings.htpasswd is not None:
        try:
            user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if sep:
            valid: bool = await _run(settings.htpasswd.check, user, password)
            if valid:
                return user
    raise DistributionError("UNAUTHORIZED", "authentication required")


async def _user(request: web.Request, settings: Settings) -> str | None:
    """The authenticated user, None for anonymous; 401 for wrong credentials. With the
    token service, only its bearer tokens count (their grants go to ``GRANTS``)."""
    if settings.tokens is not None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        grants = settings.tokens.verify(value)
        request[GRANTS] = grants
        return grants.subject
    if settings.htpasswd is None:
        return None
    return await _basic_user(request, settings)


def _challenge(request: web.Request, settings: Settings,
               exc: DistributionError) -> dict[str, str]:
    if settings.tokens is None:
        return {"WWW-Authenticate": f'Basic realm="{settings.realm}"'}
    realm = settings.tokens.realm or f"{request.scheme}://{request.host}/token"
    value = f'Bearer realm="{realm}",service="{settings.tokens.service}"'
    wanted = exc.detail if isinstance(exc.detail, list) else []
    scopes = [f"repository:{d['Name']}:{d['Action']}" for d in wanted
              if isinstance(d, dict) and d.get("Type") == "repository"]
    if request.path.rstrip("/") == "/v2/_catalog":
        scopes.append("registry:catalog:*")
    if scopes:
        value += f',scope="{" ".join(scopes)}"'
        if request.get(GRANTS) is not None:
            value += ',error="insufficient_scope"'
    return {"WWW-Authenticate": value}


def _needs(method: str) -> str:
    return "pull" if method in ("GET", "HEAD") else "push"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    try:
        if request.path == "/token":
            resp = await handler(request)
        else:
            user = await _user(request, settings)
            request[USER] = user
            if request.path.rstrip("/") == "/v2" and (
                    settings.tokens is not None and request.get(GRANTS) is None
                    or settings.tokens is None and settings.htpasswd is not None
                    and user is None):
                raise DistributionError("UNAUTHORIZED", "authentication required")
            resp = await handler(request)
    except DistributionError as exc:
        resp = _error(exc, _challenge(request, settings, exc) if exc.status == 401 else None)
    except web.HTTPNotFound:
        resp = _error(DistributionError("UNSUPPORTED", "no such endpoint", status=404))
    except web.HTTPException as exc:
        resp = web.json_response({"errors": [{"code": "UNSUPPORTED", "message": exc.reason}]},
                                 status=exc.status)
    if not resp.prepared:
        resp.headers.update(API_HEADER)
    return resp


def _may(request: web.Request, action: str, name: str) -> bool:
    """Whether the request's user, or token, may ``action`` (pull or push) ``name``."""
    settings = request.app[SETTINGS]
    if settings.tokens is not None:
        grants = request.get(GRANTS)
        return grants is not None and (
            grants.allows("repository", name, action)
            or request.method == "DELETE" and grants.allows("repository", name, "delete"))
    return settings.access.allowed(request.get(USER), action, name,
                                   auth_enabled=settings.htpasswd is not None)


def _authorize(request: web.Request, action: str, name: str) -> None:
    if _may(request, action, name):
        return
    if request.get(USER) is None or request.app[SETTINGS].tokens is not None:
        # (with tokens: the client asks the token service again, for this scope)
        raise DistributionError("UNAUTHORIZED", "authentication required",
                                detail=[{"Type": "repository", "Name": name, "Action": action}])
    raise DistributionError("DENIED", f"requested access to {name} ({action}) is denied",
                            status=403)


def _writable(request: web.Request) -> None:
    if request.app[SETTINGS].read_only:
        raise DistributionError("UNSUPPORTED", "the registry is read-only", status=405)


# -- dispatch --------------------------------------------------------------------------


async def base(request: web.Request) -> web.Response:
    return web.json_response({})


async def dispatch(request: web.Request) -> web.StreamResponse:
    tail = request.match_info["tail"]
    if tail == "_catalog":
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        return await catalog(request)
    for kind, pattern in _ROUTES:
        m = pattern.match(tail)
        if m is None:
            continue
        name = m.group("name")
        check_name(name)
        if request.method not in ("GET", "HEAD"):
            _writable(request)
        _authorize(request, _needs(request.method), name)
        handler = _HANDLERS.get((kind, request.method))
        if handler is None:
            raise DistributionError("UNSUPPORTED", f"{request.method} not allowed here",
                                    status=405)
        return await handler(request, name, m.groupdict())
    raise web.HTTPNotFound()


# -- blobs ---------------------------------------------------------------------------


async def get_blob(request: web.Request, name: str, m: dict[str, str]) -> web.StreamResponse:
    storage = request.app[SETTINGS].storage
    digest = m["digest"]
    path = await _run(storage.repo_blob, name, digest)
    headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
               "Accept-Ranges": "bytes"}
    if request.method == "HEAD":
        size = (await _run(path.stat)).st_size
        return web.Response(headers={**headers, "Content-Length": str(size)})
    if _local_peer(request) and hdrs.RANGE not in request.headers:
        return await _copy_out(request, path, headers)
    return web.FileResponse(path, headers=headers)


def _local_peer(request: web.Request) -> bool:
    """Whether the client runs on this machine (loopback or a unix socket)."""
    if request.transport is None:
        return False
    peer = request.transport.get_extra_info("peername")
    if not isinstance(peer, tuple):
        return True  # a unix socket
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


async def _copy_out(request: web.Request, path: Path,
                    headers: dict[str, str]) -> web.StreamResponse:
    """Send a blob by reading and writing it, not with ``sendfile``: for a client on
    this machine. Over loopback, ``sendfile`` hands the client's kernel the page-cache
    pages themselves, which the client then copies out cold, on its own CPU: skopeo
    pulling 120 MB from this server spent a fifth more system time and ran 5-10 %
    slower than with the bytes copied here, into socket buffers still warm when it
    reads them (its copy is the pull's bottleneck; this side has CPU to spare).
    Remote clients, and ranges, still get ``sendfile``, where it saves a copy.
    """
    loop = asyncio.get_running_loop()
    f = await _run(open, path, "rb")
    try:
        left = os.fstat(f.fileno()).st_size
        resp = web.StreamResponse(headers=headers)
        resp.content_length = left
        await resp.prepare(request)
        while left:
            chunk = await loop.run_in_executor(None, f.read, min(_COPY_CHUNK, left))
            if not chunk:
                raise ConnectionResetError(f"{path.name} shrank while it was sent")
            await resp.write(chunk)
            left -= len(chunk)
        await resp.write_eof()
        return resp
    finally:
        f.close()


async def delete_blob(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    await _run(request.app[SETTINGS].storage.delete_blob, name, m["digest"])
    return web.Response(status=202)


# -- uploads ---------------------------------------------------------------------------


def _upload_headers(name: str, ident: str, size: int) -> dict[str, str]:
    return {"Location": f"/v2/{name}/blobs/uploads/{ident}",
            "Range": f"0-{max(size - 1, 0)}", "Docker-Upload-UUID": ident}


async def _receive(request: web.Request, storage: Storage, name: str, ident: str,
                   start: int | None, length: int | None) -> int:
    """Append the request body to an upload; return the upload's new size."""
    with storage.append(name, ident, start) as f:
        got = 0
        while chunk := await request.content.read(1 << 20):
            got += len(chunk)
            await _run(f.write, chunk)
        if length is not None and got != length:
            raise DistributionError("BLOB_UPLOAD_INVALID", f"chunk has {got} bytes, Content-"
                                    f"Range announced {length}", status=416)
    return await _run(storage.upload_size, name, ident)


def _content_range(request: web.Request) -> tuple[int | None, int | None]:
    value = request.headers.get("Content-Range")
    if not value:
        return None, None
    m = _CONTENT_RANGE.match(value.strip())
    if m is None or int(m.group(2)) < int(m.group(1)):
        raise DistributionError("BLOB_UPLOAD_INVALID", f"invalid Content-Range {value!r}",
                                status=416)
    start, end = int(m.group(1)), int(m.group(2))
    return start, end - start + 1


async def start_upload(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    storage = request.app[SETTINGS].storage
    if m["uuid"]:
        raise DistributionError("UNSUPPORTED", "POST to an upload session", status=405)
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount and source:
        check_name(source)
        if _may(request, "pull", source):
            if await _run(storage.mount, name, mount, source):
                return web.Response(status=201, headers={
                    "Location": f"/v2/{name}/blobs/{mount}", "Docker-Content-Digest": mount})
    ident = await _run(storage.start_upload, name)
    digest = request.query.get("digest")
    if digest is None:
        return web.Response(status=202, headers=_upload_headers(name, ident, 0))
    try:
        await _receive(request, storage, name, ident, None, None)
        await _run(storage.finish_upload, name, ident, digest)
    except BaseException:
        await _run(_cancel_quietly, storage, name, ident)
        raise
    return web.Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                             "Docker-Content-Digest": digest})


def _cancel_quietly(storage: Storage, name: str, ident: str) -> None:
    try:
        storage.cancel_upload(name, ident)
    except DistributionError:
        pass


async def patch_upload(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    settings = request.app[SETTINGS]
    start, length = _content_range(request)
    async with settings.upload_lock(m["uuid"]):
        size = await _receive(request, settings.storage, name, m["uuid"], start, length)
    return web.Response(status=202, headers=_upload_headers(name, m["uuid"], size))


async def put_upload(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    settings = request.app[SETTINGS]
    digest = request.query.get("digest")
    if not digest:
        raise DistributionError("DIGEST_INVALID", "closing an upload needs ?digest=")
    start, length = _content_range(request)
    async with settings.upload_lock(m["uuid"]):
        await _receive(request, settings.storage, name, m["uuid"], start, length)
        await _run(settings.storage.finish_upload, name, m["uuid"], digest)
    return web.Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                             "Docker-Content-Digest": digest})


async def upload_status(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    size = await _run(request.app[SETTINGS].storage.upload_size, name, m["uuid"])
    return web.Response(status=204, headers=_upload_headers(name, m["uuid"], size))


async def cancel_upload(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    settings = request.app[SETTINGS]
    async with settings.upload_lock(m["uuid"]):
        await _run(settings.storage.upload_size, name, m["uuid"])  # BLOB_UPLOAD_UNKNOWN
        await _run(settings.storage.cancel_upload, name, m["uuid"])
    return web.Response(status=204)


# -- manifests ---------------------------------------------------------------------------


def _accepts(request: web.Request, media_type: str) -> bool:
    accepted = [a.split(";")[0].strip() for h in request.headers.getall("Accept", [])
                for a in h.split(",")]
    accepted = [a for a in accepted if a]
    return not accepted or media_type in accepted or "*/*" in accepted or \
        "application/*" in accepted


async def get_manifest(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    storage = request.app[SETTINGS].storage
    data, media_type, digest = await _run(storage.get_manifest, name, m["ref"])
    if not _accepts(request, media_type):
        raise DistributionError("MANIFEST_UNKNOWN", f"manifest of type {media_type} is not "
                                "among the accepted types", detail={"mediaType": media_type},
                                status=404)
    headers = {"Docker-Content-Digest": digest, "Content-Type": media_type,
               "ETag": f'"{digest}"'}
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Length": str(len(data))})
    return web.Response(body=data, headers=headers)


async def put_manifest(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    storage = request.app[SETTINGS].storage
    if (request.content_length or 0) > spec.MANIFEST_LIMIT:
        raise DistributionError("SIZE_INVALID", "manifest is larger than "
                                f"{spec.MANIFEST_LIMIT} bytes", status=413)
    data = bytearray()
    while chunk := await request.content.read(1 << 16):
        data += chunk
        if len(data) > spec.MANIFEST_LIMIT:
            raise DistributionError("SIZE_INVALID", "manifest is larger than "
                                    f"{spec.MANIFEST_LIMIT} bytes", status=413)
    doc_type = request.headers.get("Content-Type", "")
    digest = await _run(storage.put_manifest, name, m["ref"], bytes(data), doc_type)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    try:
        subject = json.loads(data).get("subject")
    except (ValueError, AttributeError):
        subject = None
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        headers["OCI-Subject"] = subject["digest"]
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    await _run(request.app[SETTINGS].storage.delete_manifest, name, m["ref"])
    return web.Response(status=202)


# -- listings ----------------------------------------------------------------------------


def _page(request: web.Request, items: list[str], path: str) -> tuple[list[str], dict[str, str]]:
    """Apply the spec's ``n`` and ``last`` parameters; add a ``Link`` to the next page."""
    last = request.query.get("last")
    if last:
        items = [i for i in items if i > last]
    n_raw = request.query.get("n")
    if n_raw is None or n_raw == "":
        return items, {}
    try:
        n = int(n_raw)
    except ValueError:
        raise DistributionError("PAGINATION_NUMBER_INVALID", f"invalid n={n_raw!r}",
                                status=400) from None
    if n < 0:
        raise DistributionError("PAGINATION_NUMBER_INVALID", f"invalid n={n_raw!r}", status=400)
    page = items[:n]
    headers = {}
    if n and len(items) > n:
        headers["Link"] = f'<{path}?n={n}&last={page[-1]}>; rel="next"'
    return page, headers


async def tags_list(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    tags = await _run(request.app[SETTINGS].storage.tags, name)
    page, headers = _page(request, tags, f"/v2/{name}/tags/list")
    return web.json_response({"name": name, "tags": page}, headers=headers)


async def catalog(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if settings.tokens is not None:
        grants = request.get(GRANTS)
        if grants is None or not grants.allows("registry", "catalog", "*"):
            raise DistributionError("UNAUTHORIZED", "authentication required")
    elif settings.htpasswd is not None and request.get(USER) is None:
        raise DistributionError("UNAUTHORIZED", "authentication required")
    repos = await _run(settings.storage.catalog)
    repos = [r for r in repos if settings.access.allowed(
        request.get(USER), "pull", r,
        auth_enabled=settings.htpasswd is not None or settings.tokens is not None)]
    page, headers = _page(request, repos, "/v2/_catalog")
    return web.json_response({"repositories": page}, headers=headers)


async def referrers(request: web.Request, name: str, m: dict[str, str]) -> web.Response:
    storage = request.app[SETTINGS].storage
    artifact_type = request.query.get("artifactType", "")
    found = await _run(storage.referrers, name, m["digest"], artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    body = {"schemaVersion": 2, "mediaType": spec.MT_OCI_INDEX, "manifests": found}
    return web.json_response(body, headers=headers, content_type=spec.MT_OCI_INDEX)


_HANDLERS: dict[tuple[str, str], Callable[..., Awaitable[web.StreamResponse]]] = {
    ("blob", "GET"): get_blob,
    ("blob", "HEAD"): get_blob,
    ("blob", "DELETE"): delete_blob,
    ("upload", "POST"): start_upload,
    ("upload", "PATCH"): patch_upload,
    ("upload", "PUT"): put_upload,
    ("upload", "GET"): upload_status,
    ("upload", "DELETE"): cancel_upload,
    ("manifest", "GET"): get_manifest,
    ("manifest", "HEAD"): get_manifest,
    ("manifest", "PUT"): put_manifest,
    ("manifest", "DELETE"): delete_manifest,
    ("tags", "GET"): tags_list,
    ("referrers", "GET"): referrers,
}


async def token(request: web.Request) -> web.Response:
    """``GET /token?service=S&scope=repository:NAME:pull,push`` with basic credentials
    (or none: anonymous), and the OAuth2 form (``POST``, ``grant_type=password``) that
    containerd uses: a token granting what was asked and the access rules allow."""
    settings = request.app[SETTINGS]
    tokens = settings.tokens
    if tokens is None:
        raise web.HTTPNotFound()
    if request.method == "POST":
        form = await request.post()
        if form.get("grant_type") != "password":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        user: str | None = str(form.get("username") or "")
        password = str(form.get("password") or "")
        if settings.htpasswd is None or not await _run(settings.htpasswd.check, user,
                                                       password):
            return web.json_response({"error": "invalid_grant"}, status=401)
        scopes = parse_scopes([str(v) for v in form.getall("scope", [])])
    else:
        user = await _basic_user(request, settings)
        scopes = parse_scopes(request.query.getall("scope", []))
    service = request.query.get("service") if request.method == "GET" else None
    if service and service != tokens.service:
        return web.json_response({"error": "invalid_request",
                                  "error_description": f"unknown service {service}"},
                                 status=400)
    granted = []
    for sc in scopes:
        if sc.type == "registry":
            acts = sc.actions if sc.name == "catalog" and user is not None else ()
        else:
            asked = ("pull", "push", "delete") if "*" in sc.actions else sc.actions
            acts = tuple(a for a in asked if settings.access.allowed(
                user, "pull" if a == "pull" else "push", sc.name, auth_enabled=True))
        if acts:
            granted.append(Scope(sc.type, sc.name, acts))
    body = tokens.issue(user, granted)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def make_app(settings: Settings) -> web.Application:
    """The registry's aiohttp application."""
    app = web.Application(middlewares=[middleware], client_max_size=1 << 40)
    app[SETTINGS] = settings
    app.router.add_get("/v2/", base)
    app.router.add_get("/v2", base)
    app.router.add_route("*", "/v2/{tail:.+}", dispatch)
    if settings.tokens is not None:
        app.router.add_route("GET", "/token", token)
        app.router.add_route("POST", "/token", token)
    return app


# -- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine registry", description="An OCI registry server.")
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the distribution API")
    serve.add_argument("--addr", default="127.0.0.1:5000", help="HOST:PORT to listen on "
                       "(port 0 picks a free one)")
    serve.add_argument("--root", required=True, help="storage directory")
    serve.add_argument("--htpasswd", help="bcrypt htpasswd file: require basic auth")
    serve.add_argument("--access", help="JSON file of per-repository pull/push rules")
    serve.add_argument("--token", action="store_true",
                       help="bearer tokens from this server's /token (Docker's token flow): "
                       "the credentials of --htpasswd and the rules of --access are checked "
                       "there, each request against its token")
    serve.add_argument("--token-realm", default="",
                       help="the token URL announced to clients (default: this server's "
                       "/token at the address the client used)")
    serve.add_argument("--token-ttl", type=int, default=300, help="token lifetime, seconds")
    serve.add_argument("--token-secret-file",
                       help="the HMAC key (32 bytes or more), for registries sharing tokens "
                       "(default: random per start)")
    serve.add_argument("--tls-cert", help="certificate (PEM) to serve HTTPS with")
    serve.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    serve.add_argument("--read-only", action="store_true", help="refuse every write")
    serve.add_argument("--gc", action="store_true", help="collect garbage before serving")
    gc = sub.add_parser("gc", help="delete blobs no manifest refers to and uploads idle for "
                        "a day (run it with the server stopped)")
    gc.add_argument("--root", required=True)
    gc.add_argument("--dry-run", action="store_true")
    gc.add_argument("--delete-untagged", action="store_true",
                    help="also delete manifests no tag reaches")
    return p


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"engine registry: invalid --addr {addr!r} (want HOST:PORT)")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(settings: Settings, host: str, port: int,
                tls: ssl.SSLContext | None = None) -> None:
    """Serve until SIGTERM or SIGINT; print the address once listening."""
    runner = web.AppRunner(make_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    scheme = "https" if tls else "http"
    print(f"engine registry listening on {scheme}://{host}:{actual}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``engine registry serve|gc ...``; ``serve`` is the default command."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] not in ("serve", "gc", "-h", "--help"):
        args_in.insert(0, "serve")
    args = _parser().parse_args(args_in)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "gc" or getattr(args, "gc", False):
        storage = Storage(args.root)
        if not getattr(args, "dry_run", False):
            storage.purge_uploads()
        removed = storage.gc(dry_run=getattr(args, "dry_run", False),
                             delete_untagged=getattr(args, "delete_untagged", False))
        for digest in removed:
            print(f"deleted {digest}" if not getattr(args, "dry_run", False)
                  else f"would delete {digest}")
        if args.command == "gc":
            return 0
    htpasswd = Htpasswd(args.htpasswd) if args.htpasswd else None
    access = Access.load(args.access) if args.access else None
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("engine registry: --tls-cert and --tls-key go together")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    tokens = None
    if args.token:
        if htpasswd is None and access is None:
            raise SystemExit("engine registry: --token needs --htpasswd (and/or --access "
                             "rules for anonymous users)")
        if args.token_ttl <= 0:
            raise SystemExit("engine registry: --token-ttl must be positive")
        try:
            secret = (TokenService.secret_from(args.token_secret_file)
                      if args.token_secret_file else None)
        except (OSError, ValueError) as e:
            raise SystemExit(f"engine registry: {e}") from None
        tokens = TokenService(ttl=args.token_ttl, secret=secret, realm=args.token_realm)
    settings = Settings(args.root, htpasswd=htpasswd, access=access, read_only=args.read_only,
                        tokens=tokens)
    host, port = _split_addr(args.addr)
    asyncio.run(serve(settings, host, port, tls))
    return 0


__all__ = ["Settings", "make_app", "main", "serve"]
