"""Docker's out-of-process plugin protocol: discovery and a small async client.

A legacy ("v1") Docker plugin is a separate process that serves JSON over HTTP, usually
on a unix socket. The daemon finds it by name:

- ``<dir>/<name>.sock`` or ``<dir>/<name>/<name>.sock`` in ``/run/docker/plugins``;
- ``<dir>/<name>.spec`` (one line: ``unix:///path`` or ``tcp://host:port``) or
  ``<dir>/<name>.json`` (``{"Name": ..., "Addr": ...}``) in ``/etc/docker/plugins``
  and ``/usr/lib/docker/plugins``.

The search path can be replaced with the ``ENGINE_PLUGIN_PATH`` environment variable
(directories separated by ``:``), or given to :func:`discover` directly.

Every request is a ``POST /<Interface>.<Method>`` with a JSON body and the content type
``application/vnd.docker.plugins.v1.2+json``; the first is ``/Plugin.Activate``, which
answers ``{"Implements": ["VolumeDriver", ...]}``. A failed call answers
``{"Err": "message"}``. Each call opens its own connection and runs under a timeout, so
a plugin that hangs or dies costs the callers that use it that timeout and nothing
else: it never blocks the event loop or the daemon's other work.

The drivers that speak this protocol (``engine.plugins.volume.remote``,
``engine.plugins.network.remote``) are made here, one class per plugin:
:func:`register_remote_drivers` registers one for every plugin on the search path when
the daemon starts, and :func:`find_remote_driver` makes one for a plugin whose socket
appeared later, when the daemon is first asked for it by name (the
``engine_find_driver`` hook), as Docker looks v1 plugins up lazily.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Mapping, TypeVar
from urllib.parse import urlsplit

from .errors import DriverError, EngineError, NotFound, Unavailable

if TYPE_CHECKING:  # pragma: no cover
    from .drivers import Registrar

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
DEFAULT_PATH = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")
PATH_ENV = "ENGINE_PLUGIN_PATH"
CALL_TIMEOUT = 10.0       # seconds, one method call
ACTIVATE_TIMEOUT = 5.0    # seconds, the Plugin.Activate handshake
HOLD_OFF = 5.0            # seconds a plugin that timed out is not asked again
MAX_RESPONSE = 16 << 20   # a plugin answering more than this is broken

__all__ = [
    "PluginSpec", "PluginClient", "PluginUnavailable", "PluginCallError",
    "search_path", "discover", "find_plugin", "CONTENT_TYPE",
    "plugin_client", "remote_driver_class", "register_remote_drivers", "find_remote_driver",
]

D = TypeVar("D", bound=type)


class PluginUnavailable(Unavailable):
    """The plugin cannot be reached, or did not answer in time."""


class PluginCallError(DriverError):
    """The plugin answered with an error of its own (``{"Err": ...}``)."""


@dataclass(frozen=True)
class PluginSpec:
    """Where a plugin listens: ``address`` is ``unix:///path`` or ``tcp://host:port``."""

    name: str
    address: str
    source: str = ""  # the file it was found through

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix://")


# ---------------------------------------------------------------- discovery


def search_path(option: str | None = None) -> list[str]:
    """The directories to search: ``option`` (``dir:dir``) when given, else
    ``$ENGINE_PLUGIN_PATH``, else Docker's three directories."""
    value = option if option else os.environ.get(PATH_ENV, "")
    if value:
        return [p for p in value.split(":") if p]
    return list(DEFAULT_PATH)


def _spec_from_file(name: str, path: str) -> PluginSpec | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    if path.endswith(".json"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        addr = str(doc.get("Addr") or "") if isinstance(doc, dict) else ""
        name = str(doc.get("Name") or name) if isinstance(doc, dict) else name
    else:
        addr = text.strip()
    if not addr:
        return None
    scheme = urlsplit(addr).scheme
    if scheme not in ("unix", "tcp", "http"):
        return None
    return PluginSpec(name=name, address=addr, source=path)


def discover(paths: list[str] | None = None) -> dict[str, PluginSpec]:
    """Every plugin found in ``paths`` (default :func:`search_path`), by name. The
    first directory that names a plugin wins, as in Docker."""
    found: dict[str, PluginSpec] = {}
    for d in search_path() if paths is None else paths:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            name, ext = os.path.splitext(e.name)
            spec: PluginSpec | None = None
            if ext == ".sock":
                spec = PluginSpec(name=name, address=f"unix://{e.path}", source=e.path)
            elif ext in (".spec", ".json"):
                spec = _spec_from_file(name, e.path)
            elif e.is_dir(follow_symlinks=False):
                inner = os.path.join(e.path, f"{e.name}.sock")
                if os.path.exists(inner):
                    spec = PluginSpec(name=e.name, address=f"unix://{inner}", source=inner)
            if spec is not None and spec.name not in found:
                found[spec.name] = spec
    return found


def find_plugin(name: str, paths: list[str] | None = None) -> PluginSpec | None:
    """The plugin called ``name``, or None."""
    return discover(paths).get(name)


# ---------------------------------------------------------------- one driver class per plugin


def remote_driver_class(spec: PluginSpec, base: D) -> D:
    """A subclass of ``base`` (a remote driver class with a ``plugin`` class attribute)
    named like the plugin ``spec``: ``RemoteVolume_myplug`` for ``RemoteVolumeDriver``."""
    label = base.__name__.removesuffix("Driver")
    safe = "".join(ch if ch.isalnum() else "_" for ch in spec.name)
    return type(f"{label}_{safe}", (base,), {
        "name": spec.name, "plugin": spec, "__module__": base.__module__,
        "__doc__": f"{label} plugin {spec.name} ({spec.address})"})


def plugin_client(spec: PluginSpec | None, role: str, options: Mapping[str, str]) -> PluginClient:
    """The client a remote driver of ``role`` ("volume", "network") uses to reach its
    plugin; the driver option ``timeout`` (seconds) replaces :data:`CALL_TIMEOUT`."""
    if spec is None:
        raise TypeError(f"a remote {role} driver needs a plugin: make its class with "
                        "remote_driver_class(spec, base)")
    return PluginClient(spec, role=role, timeout=float(options.get("timeout", CALL_TIMEOUT)))


def register_remote_drivers(registrar: "Registrar", kind: str, base: type, *,
                            reserved: Collection[str] = (),
                            paths: list[str] | None = None) -> list[str]:
    """Add to ``registrar`` one ``kind`` driver (a subclass of ``base``) per plugin on
    the search path, except those named like a built-in driver (``reserved``); return
    their names. Plugins are not contacted: each activates on its first call."""
    add = getattr(registrar, f"add_{kind}_driver")
    names = []
    for name, spec in sorted(discover(paths).items()):
        if name not in reserved:
            add(remote_driver_class(spec, base))
            names.append(name)
    return names


def find_remote_driver(name: str, base: D, *, reserved: Collection[str] = (),
                       paths: list[str] | None = None) -> D | None:
    """A driver class (a subclass of ``base``) for the plugin called ``name`` if one is
    on the search path now, else None: what a remote plugin answers to
    ``engine_find_driver`` for a plugin that appeared after the daemon started. Only
    the file system is read; the plugin itself is contacted on the driver's first call."""
    if name in reserved:
        return None
    spec = find_plugin(name, paths)
    return None if spec is None else remote_driver_class(spec, base)


# ---------------------------------------------------------------- the client


class PluginClient:
    """Calls one plugin. ``role`` ("volume", "network") only shapes error messages.

    The client activates the plugin on first use and remembers what it implements;
    after a connection failure it activates again, since a plugin that restarted has
    forgotten its state. A plugin that timed out is not asked again for ``hold_off``
    seconds: calls fail at once instead of each waiting for the timeout (a ``volume ls``
    must not take ten seconds per hung plugin every time).
    """

    def __init__(self, spec: PluginSpec, *, role: str = "", timeout: float = CALL_TIMEOUT,
                 activate_timeout: float = ACTIVATE_TIMEOUT, hold_off: float = HOLD_OFF) -> None:
        self.spec = spec
        self.role = role
        self.timeout = timeout
        self.activate_timeout = activate_timeout
        self.hold_off = hold_off
        self.implements: list[str] | None = None
        self._activating: asyncio.Lock | None = None
        self._hung_until = 0.0
        self._hung_reason = ""

    @property
    def label(self) -> str:
        return f"{self.role} plugin {self.spec.name}" if self.role else f"plugin {self.spec.name}"

    async def activate(self) -> list[str]:
        """``Plugin.Activate``, once; returns the interfaces the plugin implements."""
        if self.implements is not None:
            return self.implements
        if self._activating is None:
            self._activating = asyncio.Lock()
        async with self._activating:
            if self.implements is None:
                doc = await self._request("Plugin.Activate", {}, self.activate_timeout)
                impl = doc.get("Implements") if isinstance(doc, dict) else None
                if not isinstance(impl, list):
                    raise PluginCallError(f"{self.label}: invalid activation answer: {doc!r}")
                self.implements = [str(i) for i in impl]
        return self.implements

    async def require(self, interface: str) -> None:
        """Activate and check that the plugin implements ``interface``."""
        if interface not in await self.activate():
            raise NotFound(f"{self.label} does not implement {interface} "
                           f"(it implements {', '.join(self.implements or []) or 'nothing'})")

    async def call(self, method: str, args: dict[str, Any] | None = None, *,
                   interface: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Call ``method`` (``"VolumeDriver.Mount"``) and return the decoded answer.

        Raises :class:`PluginUnavailable` when the plugin cannot be reached or does
        not answer within ``timeout``; :class:`NotFound` or :class:`PluginCallError`
        when it answers with an error."""
        await self.require(interface or method.partition(".")[0])
        try:
            return await self._request(method, args or {}, timeout or self.timeout)
        except PluginUnavailable:
            self.implements = None  # activate again next time: it may have restarted
            raise

    async def _request(self, method: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        if time.monotonic() < self._hung_until:
            raise PluginUnavailable(f"{self.label} is not responding: {self._hung_reason} "
                                    f"(not asked again for {self.hold_off:g}s)")
        body = json.dumps(args).encode()
        try:
            status, payload = await asyncio.wait_for(self._roundtrip(method, body), timeout)
        except asyncio.TimeoutError:
            self._hung_reason = f"{method} timed out after {timeout:g}s"
            self._hung_until = time.monotonic() + self.hold_off
            raise PluginUnavailable(f"{self.label} is not responding: {self._hung_reason}"
                                    ) from None
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as e:
            raise PluginUnavailable(f"{self.label} is not responding: {method}: "
                                    f"{e.strerror if isinstance(e, OSError) and e.strerror else e}"
                                    ) from None
        try:
            doc = json.loads(payload) if payload.strip() else {}
        except ValueError:
            raise PluginCallError(f"{self.label}: {method}: invalid JSON answer "
                                  f"(HTTP {status}): {payload[:200]!r}") from None
        err = doc.get("Err") if isinstance(doc, dict) else None
        if err:
            raise _error_kind(str(err))(f"{self.label}: {method}: {err}")
        if status != 200:
            raise PluginCallError(f"{self.label}: {method}: HTTP {status}: "
                                  f"{payload[:200].decode('utf-8', 'replace')}")
        if not isinstance(doc, dict):
            raise PluginCallError(f"{self.label}: {method}: expected a JSON object")
        return doc

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        u = urlsplit(self.spec.address)
        if u.scheme == "unix":
            return await asyncio.open_unix_connection(u.path)
        if u.scheme in ("tcp", "http"):
            return await asyncio.open_connection(u.hostname, u.port or 80)
        raise ValueError(f"unsupported plugin address {self.spec.address!r}")

    async def _roundtrip(self, method: str, body: bytes) -> tuple[int, bytes]:
        """One HTTP/1.1 exchange on a fresh connection."""
        reader, writer = await self._open()
        try:
            head = (f"POST /{method} HTTP/1.1\r\nHost: plugin\r\n"
                    f"Accept: {CONTENT_TYPE}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read an HTTP/1.1 response: status and body (content-length, chunked, or EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                break
            out += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(out) > MAX_RESPONSE:
                raise ValueError("plugin answer too large")
        return status, bytes(out)
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n > MAX_RESPONSE:
            raise ValueError("plugin answer too large")
        return status, await reader.readexactly(n)
    return status, await reader.read(MAX_RESPONSE)


def _error_kind(message: str) -> type[EngineError]:
    low = message.lower()
    if "no such" in low or "not found" in low or "does not exist" in low:
        return NotFound
    return PluginCallError
