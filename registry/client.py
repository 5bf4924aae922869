"""Pull, push and login against a distribution registry, for the daemon.

:class:`RegistryClient` works on the daemon's content and image stores. Network I/O is
asyncio (one ``aiohttp.ClientSession`` per operation); file work (hashing, ingesting,
compressing, creating the image) runs in the default executor.

* Pull: resolve the reference (``busybox`` -> ``registry-1.docker.io/library/busybox:
  latest``), fetch the manifest (Docker schema 2, OCI, manifest list or OCI index), pick
  the platform, then fetch the config and the layers not yet in the content store, three
  at a time. Each layer is written to a partial file (which survives a daemon kill and
  is resumed with a ``Range`` request) and hashed by a worker thread as it arrives; the
  file is moved into the content store only complete and verified against its digest.
  Each layer is unpacked (and checked against its diff id) while it downloads; with
  the overlay driver all layers at the same time, each made visible once the layers
  below it are, with vfs each after the one below it. Tags are set only once the image
  exists; a failed pull drops the layers it unpacked.
* Push: upload each layer unless the registry has it (``HEAD``), mounting it from another
  repository of the same registry when we know one holds it. A layer stored
  uncompressed is gzip-compressed (in parallel pieces, see
  :class:`~engine.core.store.compression.GzipEncoder`) while it uploads, as one streamed
  ``PATCH``; the compressed blob is kept, so every later push of the layer, to any
  registry, sends the same bytes without compressing again. Then the config and a
  Docker schema 2 manifest.
* Auth: anonymous, basic, or Docker's bearer token flow, with credentials from
  ``X-Registry-Auth`` or Docker's ``config.json``.
* TLS: the system CAs plus ``<certs_dir>/<host:port>/*.crt`` (client certificates as
  ``*.cert`` + ``*.key``). Plain HTTP only for insecure registries (loopback addresses
  and ``localhost`` by default, like Docker); there it is tried after HTTPS fails.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import ipaddress
import json
import logging
import os
import platform as _platform
import queue
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import yarl
from engine.core.config import insecure_registry
from engine.core.store import reference
from engine.core.store.compression import GZIP_LEVEL, GzipEncoder, detect
from engine.core.store.content import ContentStore
from engine.core.store.images import Image, ImageStore
from engine.core.store.layers import Unpacked, chain_ids
from engine.sdk.errors import EngineError, Forbidden, InvalidArgument, NotFound

from . import spec
from .auth import (
    DOCKER_HUB,
    DOCKER_HUB_REGISTRY,
    Challenge,
    Credentials,
    from_config,
    parse_challenge,
    server_host,
)
from .storage import atomic_write

log = logging.getLogger("engine.registry.client")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
DEFAULT_CERTS_DIR = "/etc/engine/certs.d"
#: Layers downloaded (and uploaded) at the same time, as Docker's default.
CONCURRENCY = 3
#: Upload chunk size: blobs up to this size go in one PUT, larger ones in PATCH chunks.
CHUNK = 16 << 20
_READ = 1 << 20
#: Chunks a download may queue ahead of the thread storing it (each up to ``_READ``).
_SPOOL_CHUNKS = 16
#: Layers of one pull unpacked at the same time where the layer store allows it.
UNPACKERS = max(2, os.cpu_count() or 1)


class RegistryError(EngineError):
    """The registry could not be reached or answered something unexpected."""

    status = 500


class Unauthorized(RegistryError):
    """The registry refused the credentials (or wants some)."""

    status = 401


async def _quiet(_msg: dict[str, Any]) -> None:
    return None


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def host_platform() -> tuple[str, str, str]:
    """``(os, architecture, variant)`` of this machine in OCI terms."""
    machine = _platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""),
        "arm64": ("arm64", ""), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
        "i686": ("386", ""), "i386": ("386", ""), "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return "linux", arch, variant


def parse_platform(value: str) -> tuple[str, str, str]:
    """``linux/arm64/v8`` -> ``("linux", "arm64", "v8")``; empty means this machine."""
    if not value:
        return host_platform()
    parts = value.lower().split("/")
    if len(parts) == 1:
        return "linux", parts[0], ""
    if len(parts) > 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {value!r}: want os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def select_platform(manifests: list[dict[str, Any]], want: tuple[str, str, str]) -> dict[str, Any]:
    """The entry of an index that runs on ``want`` (variant optional, like Docker)."""
    os_name, arch, variant = want
    candidates = []
    for entry in manifests:
        p = entry.get("platform") or {}
        if p.get("os") != os_name or p.get("architecture") != arch:
            continue
        if variant and p.get("variant") and p["variant"] != variant:
            continue
        candidates.append(entry)
    if not candidates:
        wanted = "/".join(x for x in want if x)
        raise NotFound(f"no matching manifest for {wanted} in the manifest list entries")
    # an exact variant match first, then entries without a variant
    candidates.sort(key=lambda e: (e.get("platform") or {}).get("variant", "") != variant)
    return candidates[0]


def registry_host(domain: str) -> str:
    """Where a reference's domain serves the registry API."""
    return DOCKER_HUB_REGISTRY if domain == DOCKER_HUB else domain


class RegistryHosts:
    """Per-host transport settings: insecure registries and TLS material."""

    def __init__(self, insecure: Iterable[str] = (), certs_dir: str | Path = DEFAULT_CERTS_DIR,
                 *, loopback_insecure: bool = True) -> None:
        """``insecure`` holds dockerd's ``insecure-registries`` entries: ``host[:port]``
        names, or CIDR networks that cover registries given by IP address."""
        self.insecure: set[str] = set()
        self.insecure_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in insecure:
            try:
                parsed = insecure_registry(entry)
            except ValueError:
                raise InvalidArgument(f"insecure registry {entry!r} is neither host[:port] "
                                      "nor a CIDR network") from None
            if isinstance(parsed, str):
                self.insecure.add(parsed)
            else:
                self.insecure_networks.append(parsed)
        self.certs_dir = Path(certs_dir)
        self.loopback_insecure = loopback_insecure
        self._schemes: dict[str, str] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}

    def known_scheme(self, host: str) -> str | None:
        """``https`` or ``http``, once an insecure registry answered on it."""
        return self._schemes.get(host)

    def remember_scheme(self, host: str, scheme: str) -> None:
        self._schemes[host] = scheme

    def is_insecure(self, host: str) -> bool:
        """Plain HTTP (and unverified TLS) allowed for ``host`` (``name[:port]``)?"""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        if host in self.insecure:
            return True
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = \
                ipaddress.ip_address(name)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in self.insecure_networks):
            return True
        if not self.loopback_insecure:
            return False
        return name == "localhost" or (address is not None and address.is_loopback)

    def ssl_context(self, host: str, *, verify: bool = True) -> ssl.SSLContext:
        """System CAs plus the host's own CAs and client certificate from ``certs_dir``."""
        key = f"{host}|{verify}"
        ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        if verify:
            ctx = ssl.create_default_context()
        else:  # nothing is verified: no need to load the system's CA store (tens of ms)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        d = self.certs_dir / host
        if d.is_dir():
            for crt in sorted(d.glob("*.crt")):
                ctx.load_verify_locations(cafile=str(crt))
            for cert in sorted(d.glob("*.cert")):
                key_file = cert.with_suffix(".key")
                if not key_file.exists():
                    raise RegistryError(f"client certificate {cert} has no key {key_file}")
                ctx.load_cert_chain(str(cert), str(key_file))
        self._contexts[key] = ctx
        return ctx


class _Conn:
    """A connection to one repository of one registry, with its auth state."""

    def __init__(self, http: aiohttp.ClientSession, hosts: RegistryHosts, host: str,
                 creds: Credentials | None, scopes: list[str]) -> None:
        self.http = http
        self.hosts = hosts
        self.host = host
        self.creds = creds
        self.scopes = scopes
        self.base: yarl.URL | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._authorization: str | None = None
        self._lock = asyncio.Lock()
        #: a refresh token the token server handed out (Docker's identity token)
        self.refresh_token = ""

    async def _connect(self) -> None:
        """Pick the scheme: HTTPS, or for an insecure registry HTTP after HTTPS failed."""
        if self.base is not None:
            return
        insecure = self.hosts.is_insecure(self.host)
        https = yarl.URL(f"https://{self.host}")
        ctx = self.hosts.ssl_context(self.host, verify=not insecure)
        if not insecure:
            self.base, self._ssl = https, ctx
            return
        known = self.hosts.known_scheme(self.host)
        if known == "http":
            self.base, self._ssl = yarl.URL(f"http://{self.host}"), False
            return
        if known == "https":
            self.base, self._ssl = https, ctx
            return
        try:
            async with self.http.get(https / "v2/", ssl=ctx, allow_redirects=False,
                                     timeout=aiohttp.ClientTimeout(total=10)):
                pass
            self.base, self._ssl = https, ctx
            self.hosts.remember_scheme(self.host, "https")
        except (TimeoutError, aiohttp.ClientConnectionError, ssl.SSLError):
            # remembered only once the registry answers over HTTP (see request())
            self.base, self._ssl = yarl.URL(f"http://{self.host}"), False

    def url(self, path: str) -> yarl.URL:
        assert self.base is not None
        return self.base.join(yarl.URL(path, encoded=True))

    async def request(self, method: str, target: str | yarl.URL, *,
                      headers: dict[str, str] | None = None, data: bytes | None = None,
                      params: dict[str, str] | None = None,
                      ok: Iterable[int] = (200,)) -> aiohttp.ClientResponse:
        """Send a request, answering one auth challenge; raise unless the status is ``ok``.

        The caller releases the response (``async with`` or ``release()``).
        """
        await self._connect()
        url = target if isinstance(target, yarl.URL) else self.url(target)
        if params:
            url = url.update_query(params)
        for attempt in range(2):
            hdrs = dict(headers or {})
            if self._authorization:
                hdrs["Authorization"] = self._authorization
            try:
                resp = await self.http.request(method, url, headers=hdrs, data=data,
                                               ssl=self._ssl if url.scheme == "https" else False)
            except aiohttp.ClientConnectorCertificateError as exc:
                raise RegistryError(f"TLS certificate of {self.host} not trusted: {exc}") from None
            except aiohttp.ClientConnectorError as exc:
                reason = exc.os_error.strerror or str(exc.os_error)
                raise RegistryError(f"{method} {url}: cannot connect to {url.host}:{url.port}: "
                                    f"{reason}") from None
            except (TimeoutError, aiohttp.ClientError, ssl.SSLError) as exc:
                raise RegistryError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
            if url.scheme == "http" and self.base is not None and self.base.scheme == "http":
                self.hosts.remember_scheme(self.host, "http")
            if resp.status == 401 and attempt == 0:
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                resp.release()
                await self._authenticate(challenge)
                continue
            if resp.status in ok:
                return resp
            await _raise_for(resp, method, url)
        raise AssertionError("unreachable")

    async def _authenticate(self, challenge: Challenge | None) -> None:
        """Answer a challenge: basic credentials, or a bearer token from the realm."""
        creds = self.creds
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise Unauthorized(f"{self.host}: authentication required")
        async with self._lock:
            if challenge.scheme == "basic":
                if creds is None or not creds.username:
                    raise Unauthorized(f"{self.host}: authentication required")
                self._authorization = _basic(creds)
                return
            if creds is not None and creds.registry_token:
                self._authorization = "Bearer " + creds.registry_token
                return
            self._authorization = "Bearer " + await self._token(challenge)

    async def _token(self, challenge: Challenge) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise Unauthorized(f"{self.host}: bearer challenge without realm")
        scopes = list(self.scopes)
        if challenge.params.get("scope"):
            for s in challenge.params["scope"].split(" "):
                if s not in scopes:
                    scopes.append(s)
        service = challenge.params.get("service", "")
        creds = self.creds
        realm_url = yarl.URL(realm)
        tls = self.hosts.ssl_context(realm_url.host or "",
                                     verify=not self.hosts.is_insecure(realm_url.host or ""))
        try:
            if creds is not None and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "service": service, "client_id": "engine", "scope": " ".join(scopes)}
                resp = await self.http.post(realm_url, data=form,
                                            ssl=tls if realm_url.scheme == "https" else False)
            else:
                query = [("service", service)] if service else []
                query += [("scope", s) for s in scopes]
                headers = ({"Authorization": _basic(creds)}
                           if creds is not None and creds.username else {})
                resp = await self.http.get(realm_url.update_query(query), headers=headers,
                                           ssl=tls if realm_url.scheme == "https" else False)
            async with resp:
                if resp.status in (401, 403):
                    raise Unauthorized(f"{self.host}: token request refused "
                                       f"({resp.status}): {await _error_text(resp)}")
                if resp.status != 200:
                    raise RegistryError(f"token server {realm}: HTTP {resp.status}")
                doc = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise RegistryError(f"token server {realm}: {exc}") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not token:
            raise RegistryError(f"token server {realm} returned no token")
        if isinstance(doc, dict) and doc.get("refresh_token"):
            self.refresh_token = str(doc["refresh_token"])
        return str(token)


def _basic(creds: Credentials) -> str:
    pair = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """The messages of a distribution error document, or the raw body."""
    try:
        body = await resp.content.read(64 * 1024)
    except aiohttp.ClientError:
        return resp.reason or ""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}"
                         for e in errors) or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip() or (resp.reason or "")


async def _raise_for(resp: aiohttp.ClientResponse, method: str, url: yarl.URL) -> None:
    text = await _error_text(resp)
    resp.release()
    status = resp.status
    if status == 401:
        raise Unauthorized(f"unauthorized: {text or 'authentication required'}")
    if status == 403:
        raise Forbidden(f"denied: {text}")
    if status == 404:
        raise NotFound(text or f"{url.path}: not found")
    if status == 400:
        raise InvalidArgument(f"{method} {url.path}: {text}")
    raise RegistryError(f"{method} {url.path}: HTTP {status}: {text}")


class _State:
    """What the client remembers between operations, under ``state_dir``.

    ``compressed.json``: uncompressed layer blob -> the gzip blob pushed for it.
    ``sources.json``: blob -> repositories (``host/path``) known to hold it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _load(self, name: str) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def compressed(self, digest: str) -> str | None:
        value = self._load("compressed.json").get(digest)
        return value if isinstance(value, str) else None

    def compressed_all(self) -> dict[str, str]:
        return {k: v for k, v in self._load("compressed.json").items() if isinstance(v, str)}

    def forget_compressed(self, digests: Iterable[str]) -> None:
        with self._lock:
            doc = self._load("compressed.json")
            for d in digests:
                doc.pop(d, None)
            atomic_write(self.dir / "compressed.json", json.dumps(doc, sort_keys=True).encode())

    def set_compressed(self, digest: str, gz: str) -> None:
        with self._lock:
            doc = self._load("compressed.json")
            doc[digest] = gz
            atomic_write(self.dir / "compressed.json", json.dumps(doc, sort_keys=True).encode())

    def sources(self, digest: str) -> list[str]:
        value = self._load("sources.json").get(digest)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    def add_sources(self, digests: Iterable[str], repo: str) -> None:
        with self._lock:
            doc = self._load("sources.json")
            for d in digests:
                known = doc.setdefault(d, [])
                if repo in known:
                    known.remove(repo)
                known.insert(0, repo)
                del known[8:]
            atomic_write(self.dir / "sources.json", json.dumps(doc, sort_keys=True).encode())


class _Spool:
    """The reading side of a download, for the worker thread that hashes it: the
    partial file's bytes from an earlier attempt first, then the chunks the
    event loop hands over with :meth:`put`, each appended to the partial file before it
    is returned. At most :data:`_SPOOL_CHUNKS` chunks wait in between."""

    def __init__(self, partial: Path, have: int) -> None:
        self.partial = partial
        self._queue: queue.Queue[bytes | Exception | None] = queue.Queue(_SPOOL_CHUNKS)
        self._prefix = open(partial, "rb") if have else None
        self._prefix_left = have
        self._out = open(partial, "ab" if have else "wb")
        self._buf = b""
        self._eof = False
        #: set once the reader stopped (done, failed or closed): puts are dropped
        self.stopped = False
        # what the partial file holds, for followers (see follow())
        self._grown = threading.Condition()
        self._written = have

    # event loop side

    async def put(self, item: bytes | Exception | None) -> bool:
        """Queue a chunk (or the end: None, or an error); False once the reader stopped."""
        while not self.stopped:
            try:
                self._queue.put_nowait(item)
                return True
            except queue.Full:
                await asyncio.sleep(0.002)
        return False

    async def finish(self, error: Exception | None = None) -> None:
        """Mark the end of the body, or abort the reader with ``error``."""
        await self.put(error)

    # worker thread side

    def read(self, n: int = -1) -> bytes:
        if self._prefix is not None and self._prefix_left:
            data = self._prefix.read(min(n, self._prefix_left) if n >= 0 else self._prefix_left)
            if not data:
                raise RegistryError("partial download shrank while resuming")
            self._prefix_left -= len(data)
            return data
        if not self._buf:
            if self._eof:
                return b""
            item = self._queue.get()
            if item is None:
                self._eof = True
                return b""
            if isinstance(item, Exception):
                raise item
            self._out.write(item)
            self._out.flush()
            with self._grown:
                self._written += len(item)
                self._grown.notify_all()
            self._buf = item
        if n < 0 or n >= len(self._buf):
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def flush(self) -> None:
        """Hand what is buffered to the partial file (before the content store adopts
        it: adopting fsyncs it)."""
        self._out.flush()

    def close(self) -> None:
        self.stopped = True
        for f in (self._prefix, self._out):
            if f is not None:
                f.close()
        with self._grown:
            self._grown.notify_all()

    def follow(self) -> _Follower:
        """A reader of the partial file from its start that waits for the bytes still
        to come, until the download ends (FileNotFoundError once it is gone)."""
        return _Follower(self)

    def wait_beyond(self, size: int, timeout: float = 0.5) -> bool:
        """Wait until the partial file holds more than ``size`` bytes; False once it
        never will (the download stopped), True when there may be more to read."""
        with self._grown:
            if size < self._written:
                return True
            if self.stopped:
                return False
            self._grown.wait(timeout)
            return size < self._written or not self.stopped


class _Follower(io.RawIOBase):
    """Reads a growing partial file (see :meth:`_Spool.follow`): at its current end it
    waits until the spool appends more or stops; then the end is the end."""

    def __init__(self, spool: _Spool) -> None:
        self._spool = spool
        self._file = open(spool.partial, "rb", buffering=0)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while True:
            n = self._file.readinto(buf)
            if n:
                self._pos += n
                return n
            if not self._spool.wait_beyond(self._pos):
                # stopped: what the file holds now is all there will be
                n = self._file.readinto(buf)
                self._pos += n
                return n

    def close(self) -> None:
        self._file.close()
        super().close()


class _Pipe:
    """Pieces of a blob from a worker thread to the event loop, at most ``depth`` in
    flight. The thread calls :meth:`put` then :meth:`end` or :meth:`fail`; the loop
    :meth:`get` s them (None at the end) and :meth:`close` s the pipe when it stops
    reading, which makes a blocked :meth:`put` raise."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = _SPOOL_CHUNKS) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._closed = False

    # worker thread side

    def put(self, chunk: bytes) -> None:
        while not self._slots.acquire(timeout=0.2):
            if self._closed:
                raise RegistryError("upload stopped")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    def fail(self, exc: Exception) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, exc)

    # event loop side

    async def get(self) -> bytes | None:
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        if item is not None:
            self._slots.release()
        return item

    def close(self) -> None:
        self._closed = True


class _Tee:
    """A readable stream that hands what it returns to a :class:`_Pipe` as well."""

    def __init__(self, source: BinaryIO, pipe: _Pipe) -> None:
        self._source = source
        self._pipe = pipe

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        if data:
            self._pipe.put(data)
        return data


async def fetch_manifest(conn: _Conn, path: str, ref: str, *,
                         error: type[EngineError] = RegistryError
                         ) -> tuple[bytes, dict[str, Any], str, str]:
    """Fetch a manifest (or index) of repository ``path`` by tag or digest; return
    ``(bytes, document, media type, digest)``, its digest verified (against the digest
    asked for, and the one the registry announces) and its size bounded. What the
    registry sent that is wrong raises ``error``."""
    accept = ", ".join(spec.MANIFEST_TYPES)
    resp = await conn.request("GET", f"/v2/{path}/manifests/{ref}",
                              headers={"Accept": accept})
    async with resp:
        if (resp.content_length or 0) > spec.MANIFEST_LIMIT:
            raise error(f"manifest {ref} is larger than {spec.MANIFEST_LIMIT} bytes")
        data = await resp.content.read(spec.MANIFEST_LIMIT + 1)
        if len(data) > spec.MANIFEST_LIMIT:
            raise error(f"manifest {ref} is larger than {spec.MANIFEST_LIMIT} bytes")
        content_type = resp.headers.get("Content-Type", "")
        header_digest = resp.headers.get("Docker-Content-Digest", "")
    digest = spec.sha256(data)
    if ref.startswith("sha256:") and digest != ref:
        raise error(f"manifest digest mismatch: asked for {ref}, got {digest}")
    if header_digest.startswith("sha256:") and header_digest != digest:
        raise error(f"manifest digest mismatch: registry says {header_digest}, "
                    f"content is {digest}")
    try:
        doc = json.loads(data)
    except ValueError:
        raise error(f"manifest {ref} is not JSON") from None
    if not isinstance(doc, dict):
        raise error(f"manifest {ref} is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise InvalidArgument("Docker image manifests of schema 1 are not supported")
    return data, doc, spec.media_type_of(doc, content_type), digest


async def fetch_small_blob(conn: _Conn, path: str, digest: str,
                           limit: int = spec.MANIFEST_LIMIT * 4, *,
                           error: type[EngineError] = RegistryError) -> bytes:
    """A small blob (a config) of repository ``path``, at most ``limit`` bytes,
    verified; kept in memory. What the registry sent that is wrong raises ``error``."""
    resp = await conn.request("GET", f"/v2/{path}/blobs/{digest}")
    async with resp:
        data = await resp.content.read(limit + 1)
    if len(data) > limit:
        raise error(f"config blob {digest} is too large")
    if spec.sha256(data) != digest:
        raise error(f"config blob digest mismatch: expected {digest}, got "
                    f"{spec.sha256(data)}")
    return data


class _Resolved:
    """A manifest fetched and verified: where it came from and what it lists."""

    def __init__(self, ref: reference.Reference, digest: str, media_type: str,
                 doc: dict[str, Any], index_digest: str = "") -> None:
        self.ref = ref
        self.digest = digest
        self.media_type = media_type
        self.doc = doc
        self.index_digest = index_digest


class RegistryClient:
    """Pull, push and login for one daemon's content and image stores."""

    def __init__(self, content: ContentStore, images: ImageStore, state_dir: str | Path,
                 hosts: RegistryHosts | None = None, *, concurrency: int = CONCURRENCY,
                 config_dir: str | Path | None = None, gzip_level: int = GZIP_LEVEL) -> None:
        self.content = content
        self.images = images
        self.hosts = hosts or RegistryHosts()
        self.state = _State(Path(state_dir))
        # partial downloads live beside the content store, not in its tmp dir (which the
        # store empties when it opens), so a restarted daemon resumes them
        self.downloads = Path(state_dir) / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True)
        for partial in self.downloads.glob("*.partial"):
            # finished by someone else meanwhile (a load, another pull): not needed any more
            if content.has("sha256:" + partial.name.removesuffix(".partial")):
                partial.unlink(missing_ok=True)
        self.config_dir = config_dir
        self._concurrency = concurrency
        #: zlib level for layers stored uncompressed and compressed on their first push
        self.gzip_level = gzip_level
        self._inflight: dict[str, asyncio.Future[None]] = {}
        # threads that store downloads and compress uploads as the bytes flow: they wait
        # on the network for as long as a transfer lasts, so they get threads of their
        # own rather than the default executor's few, which the rest of the daemon uses
        self._streams = concurrent.futures.ThreadPoolExecutor(
            max_workers=4 * max(1, concurrency), thread_name_prefix="registry-stream")

    # -- plumbing ------------------------------------------------------------------------

    @staticmethod
    async def _run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _stream(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on a stream thread (one that follows a transfer to its end)."""
        return await asyncio.get_running_loop().run_in_executor(self._streams, fn, *args)

    def _creds(self, domain: str, creds: Credentials | None) -> Credentials | None:
        if creds is not None and not creds.empty:
            return creds
        return from_config(domain, self.config_dir)

    @contextlib.asynccontextmanager
    async def _session(self):  # type: ignore[no-untyped-def]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         auto_decompress=False) as http:
            yield http

    # -- manifests -----------------------------------------------------------------------

    async def _resolve(self, conn: _Conn, ref: reference.Reference,
                       want: tuple[str, str, str]) -> _Resolved:
        """The image manifest for ``ref`` on platform ``want`` (through an index)."""
        target = ref.digest or ref.tag or reference.DEFAULT_TAG
        try:
            _, doc, media_type, digest = await fetch_manifest(conn, ref.path, target)
        except NotFound:
            raise NotFound(f"manifest for {reference.familiar(str(ref.with_default_tag()))} "
                           "not found: manifest unknown") from None
        if media_type in spec.INDEX_MANIFESTS:
            entry = select_platform(doc.get("manifests") or [], want)
            child = str(entry.get("digest", ""))
            if not spec.valid_digest(child):
                raise RegistryError(f"manifest list entry with invalid digest {child!r}")
            _, cdoc, ctype, cdigest = await fetch_manifest(conn, ref.path, child)
            return _Resolved(ref, cdigest, ctype, cdoc, index_digest=digest)
        if media_type not in spec.IMAGE_MANIFESTS:
            raise InvalidArgument(f"{ref}: unsupported manifest type {media_type}")
        return _Resolved(ref, digest, media_type, doc)

    # -- pull ------------------------------------------------------------------------------

    async def pull(self, ref: str, *, platform: str = "", creds: Credentials | None = None,
                   progress: Progress = _quiet) -> Image:
        """Pull ``ref`` into the stores and tag it; return the image.

        Errors before the first progress message (unknown image, refused credentials)
        let the caller answer with an error status instead of a stream.
        """
        r = reference.parse(ref).with_default_tag()
        want = parse_platform(platform)
        host = registry_host(r.domain)
        creds = await self._run(self._creds, r.domain, creds)
        before = await self._run(self._current, str(r))
        async with self._session() as http:
            conn = _Conn(http, self.hosts, host, creds, [f"repository:{r.path}:pull"])
            resolved = await self._resolve(conn, r, want)
            await progress({"status": f"Pulling from {r.path}",
                            "id": r.digest or r.tag})
            img, fetched = await self._fetch(conn, resolved, progress)
        repo_digest = resolved.index_digest or resolved.digest
        await self._run(self._record_pull, img, r, repo_digest)
        await self._run(self.state.add_sources,
                        [d["digest"] for d in resolved.doc.get("layers") or []],
                        f"{host}/{r.path}")
        await progress({"status": f"Digest: {repo_digest}"})
        shown = reference.familiar(str(r))
        # like Docker: "newer" when layers came in or the name now means another image
        verb = ("Downloaded newer image for" if fetched or before != img.id
                else "Image is up to date for")
        await progress({"status": f"Status: {verb} {shown}"})
        return await self._run(self.images.get, img.id)

    def _current(self, ref: str) -> str | None:
        """The id of the image ``ref`` names now (None when it names none)."""
        try:
            return self.images.get(ref).id
        except (NotFound, InvalidArgument):
            return None

    def _record_pull(self, img: Image, r: reference.Reference, digest: str) -> None:
        if r.tag and not r.digest:
            self.images.tag(img.id, str(r))
        self.images.add_digest(img.id, r.name, digest)

    async def _fetch(self, conn: _Conn, resolved: _Resolved,
                     progress: Progress) -> tuple[Image, bool]:
        doc = resolved.doc
        config = doc.get("config") or {}
        layers = [d for d in doc.get("layers") or []
                  if d.get("mediaType") not in spec.FOREIGN_LAYERS]
        for desc in [config, *layers]:
            if not spec.valid_digest(str(desc.get("digest", ""))):
                raise RegistryError(f"manifest has an invalid digest {desc.get('digest')!r}")
        config_bytes = await fetch_small_blob(conn, resolved.ref.path, config["digest"])
        config_id = spec.sha256(config_bytes)
        if await self._run(self.images.exists, config_id):
            existing = await self._run(self.images.get, config_id)
            if all(self.content.has(d["digest"]) for d in layers):
                for d in layers:
                    await progress({"status": "Already exists", "progressDetail": {},
                                    "id": _short(d["digest"])})
                return existing, False
        missing = [d for d in layers if not self.content.has(d["digest"])]
        for d in layers:
            status = "Pulling fs layer" if d in missing else "Already exists"
            await progress({"status": status, "progressDetail": {}, "id": _short(d["digest"])})
        sem = asyncio.Semaphore(self._concurrency)

        loop = asyncio.get_running_loop()
        # each download's spool once it runs (None when it runs elsewhere): the layer
        # next to unpack reads its partial file as it grows
        spools: dict[str, asyncio.Future[_Spool | None]] = {
            d["digest"]: loop.create_future() for d in missing}

        async def one(desc: dict[str, Any]) -> None:
            slot = spools[desc["digest"]]
            try:
                if sem.locked():
                    await progress({"status": "Waiting", "progressDetail": {},
                                    "id": _short(desc["digest"])})
                async with sem:
                    await self._download(conn, resolved.ref.path, desc, progress, slot)
            finally:
                if not slot.done():
                    slot.set_result(None)

        downloads = {d["digest"]: asyncio.ensure_future(one(d)) for d in missing}
        unpacked: list[str] = []
        blobs = [(d["digest"], str(d.get("mediaType") or spec.MT_OCI_LAYER_GZIP))
                 for d in layers]
        try:
            await self._unpack(layers, _diff_ids(config_bytes), downloads, spools, progress,
                               unpacked)
            await asyncio.gather(*downloads.values())
            img = await self._run(self.images.create, config_bytes, blobs)
        except BaseException:
            for t in downloads.values():
                t.cancel()
            await asyncio.gather(*downloads.values(), return_exceptions=True)
            if unpacked:
                await self._run(self.images.release_unused_layers, unpacked[-1])
            raise
        return img, True

    async def _unpack(self, layers: list[dict[str, Any]], diff_ids: list[str] | None,
                      downloads: dict[str, asyncio.Future[None]],
                      spools: dict[str, asyncio.Future[_Spool | None]], progress: Progress,
                      unpacked: list[str]) -> None:
        """Unpack the layers while they download; ``unpacked`` collects the chain ids.

        A layer whose turn comes while it still downloads is read from its partial file
        as it grows; one downloaded already, from the content store. Where the layer
        store can unpack a layer without its parent (overlay), all layers unpack at the
        same time, up to :data:`UNPACKERS` at once, and are committed in order;
        otherwise (vfs) each waits for the one below it. The layer store checks every
        layer against its diff id (the config, verified by digest, lists them) before it
        becomes visible, and the layer is reported complete only once its blob matched
        its digest too. :meth:`ImageStore.create` then finds the layers ready. Without
        usable diff ids nothing is unpacked here: ``create`` reports it.
        """
        if diff_ids is None or len(diff_ids) != len(layers):
            return
        store = self.images.layers
        if not store.unpacks_alone:
            parent: str | None = None
            for desc, diff_id in zip(layers, diff_ids, strict=True):
                source = await self._layer_source(desc["digest"], downloads, spools, progress)
                layer = await self._unpack_job(
                    desc["digest"], downloads, source,
                    functools.partial(store.register, source, parent, diff_id=diff_id))
                parent = layer.chain_id
                unpacked.append(parent)
                await self._unpacked(desc["digest"], downloads,
                                     isinstance(source, _Follower), progress)
            return
        chains = chain_ids(diff_ids)
        slots = asyncio.Semaphore(UNPACKERS)

        async def alone(digest: str, diff_id: str, chain: str) -> tuple[Unpacked | None, bool]:
            """The layer unpacked (None when it exists), and whether it was read from its
            download as it arrived."""
            async with slots:
                source = await self._layer_source(digest, downloads, spools, progress)
                if store.exists(chain):
                    if isinstance(source, _Follower):
                        source.close()
                        return None, True
                    return None, False
                job = functools.partial(store.unpack, source, diff_id=diff_id)
                return (await self._unpack_job(digest, downloads, source, job),
                        isinstance(source, _Follower))

        jobs = [asyncio.ensure_future(alone(desc["digest"], diff_id, chain))
                for desc, diff_id, chain in zip(layers, diff_ids, chains, strict=True)]
        try:
            parent = None
            for desc, diff_id, job in zip(layers, diff_ids, jobs, strict=True):
                ready, followed = await job
                if ready is None:  # known already: register finds it without reading
                    if desc["digest"] in downloads:
                        await downloads[desc["digest"]]
                    layer = await self._run(functools.partial(
                        store.register, self.content.path(desc["digest"]), parent,
                        diff_id=diff_id))
                else:
                    layer = await self._run(store.commit, ready, parent)
                parent = layer.chain_id
                unpacked.append(parent)
                await self._unpacked(desc["digest"], downloads, followed, progress)
        except BaseException:
            for job in jobs:
                job.cancel()
            for result in await asyncio.gather(*jobs, return_exceptions=True):
                if isinstance(result, tuple) and result[0] is not None:
                    result[0].discard()  # unpacked, never committed
            raise

    async def _layer_source(self, digest: str, downloads: dict[str, asyncio.Future[None]],
                            spools: dict[str, asyncio.Future[_Spool | None]],
                            progress: Progress) -> Path | _Follower:
        """Where to read a layer from: its blob, or its partial file while it downloads.
        Reports "Extracting" for a layer read from its blob."""
        download = downloads.get(digest)
        if download is None:
            return self.content.path(digest)
        slot = spools[digest]
        await asyncio.wait([download, slot], return_when=asyncio.FIRST_COMPLETED)
        spool = slot.result() if slot.done() and not download.done() else None
        if spool is not None:
            try:
                return await self._run(spool.follow)
            except FileNotFoundError:  # finished meanwhile
                pass
        await download
        await progress({"status": "Extracting", "progressDetail": {}, "id": _short(digest)})
        return self.content.path(digest)

    async def _unpack_job(self, digest: str, downloads: dict[str, asyncio.Future[None]],
                          source: Path | _Follower, job: Callable[[], Any]) -> Any:
        """Run ``job`` (unpacking ``source``) on a stream thread, closing a follower
        after it. Cancelled, it lets the job run to its end and discards an
        :class:`~engine.core.store.layers.Unpacked` result."""

        def run() -> Any:
            try:
                return job()
            finally:
                if isinstance(source, _Follower):
                    source.close()

        fut = asyncio.get_running_loop().run_in_executor(self._streams, run)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_discard_unpacked)
            raise
        except Exception:
            download = downloads.get(digest)
            if download is not None and isinstance(source, _Follower):
                await download  # a failed download explains a cut stream best
            raise

    async def _unpacked(self, digest: str, downloads: dict[str, asyncio.Future[None]],
                        followed: bool, progress: Progress) -> None:
        """Report a layer unpacked and in place, once its download is verified too."""
        download = downloads.get(digest)
        if download is None:
            return
        if followed:
            await download
            await progress({"status": "Extracting", "progressDetail": {},
                            "id": _short(digest)})
        await progress({"status": "Pull complete", "progressDetail": {}, "id": _short(digest)})

    async def _download(self, conn: _Conn, path: str, desc: dict[str, Any],
                        progress: Progress,
                        slot: asyncio.Future[_Spool | None] | None = None) -> None:
        """One layer into the content store; concurrent pulls of a blob share one download.
        ``slot`` receives the download's spool once it runs here."""
        digest = desc["digest"]
        running = self._inflight.get(digest)
        if running is not None:
            await asyncio.shield(running)
            await progress({"status": "Download complete", "progressDetail": {},
                            "id": _short(digest)})
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        try:
            await self._download_blob(conn, path, digest, int(desc.get("size") or 0), progress,
                                      slot)
            fut.set_result(None)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else RegistryError("cancelled"))
            fut.exception()  # retrieved: waiting pulls see it, nobody else has to
            raise
        finally:
            del self._inflight[digest]

    async def _download_blob(self, conn: _Conn, path: str, digest: str, size: int,
                             progress: Progress,
                             slot: asyncio.Future[_Spool | None] | None = None) -> None:
        """Download one blob, stored and verified as it arrives.

        The chunks go to a :class:`_Spool` that a worker thread drains (see
        :meth:`_ingest`), appending each to the partial file, which keeps what arrived for
        a resume after a kill, and hashing it. The partial file becomes the blob, by
        rename, only once its digest matched.
        """
        ident = _short(digest)
        partial = self.downloads / (digest.removeprefix("sha256:") + ".partial")
        have = partial.stat().st_size if partial.exists() else 0
        if size and have > size:
            have = 0
        resp = None
        if not (size and have == size):
            headers = {"Range": f"bytes={have}-"} if have else {}
            resp = await conn.request("GET", f"/v2/{path}/blobs/{digest}", headers=headers,
                                      ok=(200, 206))
            if resp.status == 200:
                have = 0  # the registry ignored the range: start over
            elif not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                resp.release()
                partial.unlink(missing_ok=True)
                raise RegistryError(f"download of {digest}: asked for bytes from {have}, "
                                    f"got {resp.headers.get('Content-Range')!r}")
        try:
            spool = await self._run(_Spool, partial, have)
        except BaseException:
            if resp is not None:
                resp.release()
            raise
        stored = asyncio.ensure_future(self._stream(self._ingest, spool, digest, size))
        if slot is not None and not slot.done():
            slot.set_result(spool)
        try:
            if resp is not None:
                async with resp:
                    await self._receive(resp, spool, digest, size, have, progress)
            await spool.finish()
        except BaseException as exc:
            await spool.finish(exc if isinstance(exc, Exception) else RegistryError("cancelled"))
            await asyncio.gather(stored, return_exceptions=True)
            raise
        await progress({"status": "Verifying Checksum", "progressDetail": {}, "id": ident})
        try:
            await stored
        except InvalidArgument as exc:
            partial.unlink(missing_ok=True)
            raise RegistryError(f"layer {digest} failed verification: {exc}") from None
        partial.unlink(missing_ok=True)
        await progress({"status": "Download complete", "progressDetail": {}, "id": ident})

    async def _receive(self, resp: aiohttp.ClientResponse, spool: _Spool, digest: str,
                       size: int, have: int, progress: Progress) -> None:
        """Hand the response body to ``spool``, reporting progress every 0.2 s."""
        ident = _short(digest)
        total = size or (have + (resp.content_length or 0))
        last = 0.0
        while chunk := await self._read(resp, digest):
            have += len(chunk)
            if size and have > size:
                raise RegistryError(f"blob {digest} is larger than its descriptor's {size} "
                                    "bytes")
            if not await spool.put(chunk):
                return  # the store stopped reading: its error is reported
            now = time.monotonic()
            if now - last > 0.2 or have == total:
                last = now
                await progress({"status": "Downloading", "id": ident,
                                "progressDetail": {"current": have, "total": total},
                                "progress": _bar(have, total)})

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse, digest: str) -> bytes:
        try:
            return await resp.content.read(_READ)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RegistryError(f"download of {digest} interrupted: {exc or type(exc).__name__}"
                                ) from None

    def _ingest(self, spool: _Spool, digest: str, size: int) -> None:
        """Drain ``spool`` (which appends to the partial file), hashing as it goes, then
        move the partial file into the content store once complete and verified: every
        byte is written once on its way to the store, not twice."""
        try:
            h = hashlib.sha256()
            total = 0
            while chunk := spool.read(_READ):
                h.update(chunk)
                total += len(chunk)
            if size and total != size:
                raise InvalidArgument(f"short blob: expected {size} bytes, got {total}")
            spool.flush()
            self.content.adopt(spool.partial, digest, hashed="sha256:" + h.hexdigest())
        finally:
            spool.close()

    # -- push ------------------------------------------------------------------------------

    async def push(self, ref: str, *, creds: Credentials | None = None,
                   progress: Progress = _quiet) -> str:
        """Push a local image to the registry its name says; return the manifest digest."""
        r = reference.parse(ref).with_default_tag()
        if r.digest:
            raise InvalidArgument(f"cannot push a digest reference: {ref}")
        img = await self._run(self.images.get, str(r))
        host = registry_host(r.domain)
        creds = await self._run(self._creds, r.domain, creds)
        config_bytes = await self._run(self.images.config_bytes, img)
        await self._run(self.prune_compressed)
        # blobs known already (compressed layers, or compressed by an earlier push); the
        # others are compressed while they upload
        known = await asyncio.gather(*(self._run(self._known_blob, layer.digest)
                                       for layer in img.layers))
        blobs: list[tuple[str, int, str] | None] = list(known)
        oci = any(b is not None and b[2] == spec.MT_OCI_LAYER_ZSTD for b in blobs)
        sources = await self._run(self._mount_sources, [b[0] for b in blobs if b], host,
                                  f"{host}/{r.path}")
        scopes = [f"repository:{r.path}:pull,push"]
        for repos in sources.values():
            for s in repos[:1]:
                scope = f"repository:{s.split('/', 1)[1]}:pull"
                if scope not in scopes:
                    scopes.append(scope)
        await progress({"status": f"The push refers to repository [{r.name}]"})
        async with self._session() as http:
            conn = _Conn(http, self.hosts, host, creds, scopes)
            await conn.request("GET", "/v2/")  # authenticate before any upload
            # ids are the layers' diff ids, as docker shows them (known before compressing)
            for layer in reversed(img.layers):
                await progress({"status": "Preparing", "progressDetail": {},
                                "id": _short(layer.diff_id)})
            sem = asyncio.Semaphore(self._concurrency)

            async def one(i: int) -> None:
                layer, blob = img.layers[i], blobs[i]
                ident = _short(layer.diff_id)
                async with sem:
                    if blob is None:
                        blobs[i] = await self._upload_compressing(conn, r.path, layer.digest,
                                                                  ident, progress)
                    else:
                        await self._upload(conn, r.path, blob[0], blob[1], sources[blob[0]],
                                           progress, ident=ident)

            await asyncio.gather(*(one(i) for i in range(len(blobs))))
            pushed = [b for b in blobs if b is not None]
            config_digest = spec.sha256(config_bytes)
            if not self.content.has(config_digest):
                await self._run(self.content.write, config_bytes)
            await self._upload(conn, r.path, config_digest, len(config_bytes), [], progress)
            media_type = spec.MT_OCI_MANIFEST if oci else spec.MT_DOCKER_MANIFEST
            manifest = {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {"mediaType": spec.MT_OCI_CONFIG if oci else spec.MT_DOCKER_CONFIG,
                           "size": len(config_bytes), "digest": config_digest},
                "layers": [{"mediaType": mt, "size": s, "digest": d} for d, s, mt in pushed],
            }
            body = json.dumps(manifest, indent=3).encode()
            digest = spec.sha256(body)
            resp = await conn.request("PUT", f"/v2/{r.path}/manifests/{r.tag}", data=body,
                                      headers={"Content-Type": media_type},
                                      ok=(200, 201, 202))
            returned = resp.headers.get("Docker-Content-Digest", "")
            resp.release()
            if returned and returned != digest:
                raise RegistryError(f"registry stored the manifest as {returned}, not {digest}")
        await self._run(self.images.add_digest, img.id, r.name, digest)
        await self._run(self.state.add_sources, [d for d, _, _ in pushed], f"{host}/{r.path}")
        await progress({"status": f"{r.tag}: digest: {digest} size: {len(body)}"})
        await progress({"progressDetail": {},
                        "aux": {"Tag": r.tag, "Digest": digest, "Size": len(body)}})
        return digest

    def _mount_sources(self, digests: list[str], host: str, target: str) -> dict[str, list[str]]:
        """Per blob, the other repositories of ``host`` known to hold it."""
        return {d: [s for s in self.state.sources(d) if s.startswith(host + "/") and s != target]
                for d in digests}

    def prune_compressed(self) -> list[str]:
        """Delete the gzip blobs made for pushes whose uncompressed layer blob is gone
        (its image was deleted) and that no image uses; return their digests."""
        mapping = self.state.compressed_all()
        stale = {raw: gz for raw, gz in mapping.items() if not self.content.has(raw)}
        if not stale:
            return []
        used = {layer.digest for img in self.images.list() for layer in img.layers}
        still_mapped = {gz for raw, gz in mapping.items() if raw not in stale}
        removed = []
        for gz in set(stale.values()) - used - still_mapped:
            with contextlib.suppress(NotFound):
                self.content.delete(gz)
                removed.append(gz)
        self.state.forget_compressed(stale)
        return sorted(removed)

    def _known_blob(self, digest: str) -> tuple[str, int, str] | None:
        """``(blob digest, size, media type)`` to push for a stored layer blob, or None
        when it is stored uncompressed and was never compressed (or the compressed blob
        is gone): then :meth:`_upload_compressing` makes it."""
        with self.content.open(digest) as f:
            kind = detect(f.read(8))
        if kind == "gzip":
            return digest, self.content.size(digest), spec.MT_DOCKER_LAYER_GZIP
        if kind == "zstd":
            return digest, self.content.size(digest), spec.MT_OCI_LAYER_ZSTD
        if kind != "none":
            raise InvalidArgument(f"layer {digest} is {kind}-compressed, which registries "
                                  "do not accept")
        gz = self.state.compressed(digest)
        if gz is not None and self.content.has(gz):
            return gz, self.content.size(gz), spec.MT_DOCKER_LAYER_GZIP
        return None

    def _compress(self, digest: str, pipe: _Pipe | None) -> tuple[str, int, str]:
        """gzip a stored layer blob into the content store, handing each piece to
        ``pipe`` as well when given; record the mapping so later pushes (to any
        registry) send the same blob without compressing again."""
        try:
            with self.content.open(digest) as src, \
                    GzipEncoder(src, level=self.gzip_level) as enc:
                gz, size = self.content.ingest(enc if pipe is None else _Tee(enc, pipe))
        except BaseException as exc:
            if pipe is not None:
                pipe.fail(exc if isinstance(exc, Exception) else RegistryError("cancelled"))
            raise
        if pipe is not None:
            pipe.end()
        self.state.set_compressed(digest, gz)
        return gz, size, spec.MT_DOCKER_LAYER_GZIP

    async def _upload_compressing(self, conn: _Conn, path: str, digest: str, ident: str,
                                  progress: Progress) -> tuple[str, int, str]:
        """Compress a layer and upload the pieces as they come (one streamed ``PATCH``),
        then close the upload with the digest the content store computed."""
        total = await self._run(self.content.size, digest)
        resp = await conn.request("POST", f"/v2/{path}/blobs/uploads/", ok=(202,))
        resp.release()
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError("registry started an upload without a Location")
        pipe = _Pipe(asyncio.get_running_loop())
        job = asyncio.ensure_future(self._stream(self._compress, digest, pipe))

        async def body() -> AsyncIterator[bytes]:
            sent, last = 0, 0.0
            while (chunk := await pipe.get()) is not None:
                yield chunk
                sent += len(chunk)
                now = time.monotonic()
                if now - last > 0.2:
                    last = now
                    await progress({"status": "Pushing", "id": ident,
                                    "progressDetail": {"current": sent, "total": total},
                                    "progress": _bar(sent, total)})

        await progress({"status": "Pushing", "progressDetail": {"current": 0, "total": total},
                        "id": ident})
        try:
            resp = await conn.request("PATCH", conn.url(location), data=body(),
                                      headers={"Content-Type": "application/octet-stream"},
                                      ok=(202, 204))
            resp.release()
        except BaseException:
            pipe.close()
            await asyncio.gather(job, return_exceptions=True)
            raise
        gz, size, media_type = await job
        url = conn.url(resp.headers.get("Location") or location)
        resp = await conn.request("PUT", url.update_query({"digest": gz}), data=b"",
                                  headers={"Content-Type": "application/octet-stream"},
                                  ok=(201, 204))
        resp.release()
        await progress({"status": "Pushed", "progressDetail": {}, "id": ident})
        return gz, size, media_type

    async def _upload(self, conn: _Conn, path: str, digest: str, size: int,
                      mount_from: list[str], progress: Progress, *, ident: str = "") -> None:
        """Upload a stored blob unless the registry has it or can mount it; progress
        messages under ``ident`` (none without)."""

        async def say(status: str, **extra: Any) -> None:
            if ident:
                await progress({"status": status, "progressDetail": {}, "id": ident, **extra})

        resp = await conn.request("HEAD", f"/v2/{path}/blobs/{digest}", ok=(200, 404))
        resp.release()
        if resp.status == 200:
            await say("Layer already exists")
            return
        location = None
        for source in mount_from[:1]:
            repo = source.split("/", 1)[1]
            resp = await conn.request("POST", f"/v2/{path}/blobs/uploads/",
                                      params={"mount": digest, "from": repo}, ok=(201, 202))
            resp.release()
            if resp.status == 201:
                await say(f"Mounted from {repo}")
                return
            location = resp.headers.get("Location")
        if location is None:
            resp = await conn.request("POST", f"/v2/{path}/blobs/uploads/", ok=(202,))
            resp.release()
            location = resp.headers.get("Location")
        if not location:
            raise RegistryError("registry started an upload without a Location")
        await say("Pushing", progressDetail={"current": 0, "total": size})
        url = conn.url(location)
        f = await self._run(self.content.open, digest)
        with f:
            if size <= CHUNK:
                data = await self._run(f.read)
            else:
                offset = 0
                while offset < size:
                    chunk = await self._run(f.read, CHUNK)
                    if not chunk:
                        raise RegistryError(f"blob {digest} is shorter than {size} bytes")
                    end = offset + len(chunk) - 1
                    resp = await conn.request(
                        "PATCH", url, data=chunk, ok=(202, 204),
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{offset}-{end}"})
                    resp.release()
                    url = conn.url(resp.headers.get("Location") or str(url))
                    offset = end + 1
                    await say("Pushing", progressDetail={"current": offset, "total": size},
                              progress=_bar(offset, size))
                data = b""
        resp = await conn.request("PUT", url.update_query({"digest": digest}), data=data,
                                  headers={"Content-Type": "application/octet-stream"},
                                  ok=(201, 204))
        resp.release()
        await say("Pushed")

    # -- login and inspection ----------------------------------------------------------------

    async def login(self, server: str, creds: Credentials) -> str:
        """Check ``creds`` against the registry at ``server``; return an identity token
        (empty unless the token server handed out a refresh token)."""
        host = registry_host(server_host(server or DOCKER_HUB))
        async with self._session() as http:
            conn = _Conn(http, self.hosts, host, creds, [])
            try:
                resp = await conn.request("GET", "/v2/")
            except Unauthorized as exc:
                scheme = conn.base.scheme if conn.base else "https"
                raise Unauthorized(f"login attempt to {scheme}://{host}/v2/ failed with status: "
                                   f"401 Unauthorized ({exc})") from None
            resp.release()
            return conn.refresh_token

    async def distribution(self, ref: str, creds: Credentials | None = None) -> dict[str, Any]:
        """``GET /distribution/{name}/json``: the manifest descriptor and its platforms."""
        r = reference.parse(ref).with_default_tag()
        host = registry_host(r.domain)
        creds = await self._run(self._creds, r.domain, creds)
        async with self._session() as http:
            conn = _Conn(http, self.hosts, host, creds, [f"repository:{r.path}:pull"])
            data, doc, media_type, digest = await fetch_manifest(conn, r.path,
                                                                 r.digest or r.tag)
            platforms = []
            if media_type in spec.INDEX_MANIFESTS:
                for entry in doc.get("manifests") or []:
                    p = entry.get("platform") or {}
                    if p:
                        platforms.append({k: v for k, v in p.items() if v})
            else:
                cfg = json.loads(await fetch_small_blob(conn, r.path, doc["config"]["digest"]))
                platforms.append({k: cfg[k] for k in ("architecture", "os", "variant")
                                  if cfg.get(k)})
        return {"Descriptor": {"mediaType": media_type, "digest": digest, "size": len(data)},
                "Platforms": platforms}


def _discard_unpacked(fut: asyncio.Future[Any]) -> None:
    """Drop the scratch directory of an unpack whose pull gave up on it."""
    if not fut.cancelled() and fut.exception() is None and isinstance(fut.result(), Unpacked):
        fut.result().discard()


def _diff_ids(config: bytes) -> list[str] | None:
    """The config's ``rootfs.diff_ids`` when they are a list of digests, else None."""
    try:
        ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(ids, list) or not all(isinstance(d, str) and spec.valid_digest(d)
                                            for d in ids):
        return None
    return ids


def _bar(current: int, total: int) -> str:
    """Docker's progress bar text: ``[=====>      ]  1.2MB/3.4MB``."""
    if total <= 0:
        return _size(current)
    width = 50
    filled = min(width, int(width * current / total))
    bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
    return f"[{bar}] {_size(current):>8}/{_size(total)}"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"
