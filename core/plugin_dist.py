"""Plugins in a registry: references, and the transfer of plugin artifacts.

Two kinds of plugin travel through a distribution registry, both as a manifest with a
config blob and one layer; the config's media type says which:

* an engine (Python) plugin, :data:`PY_CONFIG_MEDIA_TYPE`: an OCI image manifest
  whose config holds the distribution's name, version, entry points and its
  ``engine-plugin.json`` manifest (so privileges are known from the config alone),
  and whose layer (:data:`WHEEL_MEDIA_TYPE`) is the wheel;
* a Docker managed plugin, ``application/vnd.docker.plugin.v1+json``: a Docker
  schema 2 manifest whose config is the plugin's ``config.json`` (with
  ``rootfs.diff_ids``) and whose layer is the rootfs as a gzipped tar.

Anything else (an ordinary image) is refused with a message that says so.

Short names resolve against the daemon's plugin registry setting the way image names
resolve against Docker Hub: with ``plugin-registry`` set to ``127.0.0.1:5000/plugins``,
``net-dummy`` is ``127.0.0.1:5000/plugins/net-dummy:latest``; without it Docker's
normalisation applies (``weave-net`` -> ``docker.io/library/weave-net:latest``).
A name with a registry of its own (``localhost:5000/x``) is used as it is.

Network I/O is asyncio, through the image client's authenticated connection
(:mod:`engine.registry.client`), so credentials come from ``X-Registry-Auth`` or
Docker's ``config.json`` exactly as for image pulls and pushes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from engine.registry import spec
from engine.sdk.errors import InvalidArgument, NotFound

from .managed import CONFIG_MEDIA_TYPE as MANAGED_CONFIG_MEDIA_TYPE
from .managed import LAYER_MEDIA_TYPE as MANAGED_LAYER_MEDIA_TYPE
from .managed import local_name
from .store import reference

PY_CONFIG_MEDIA_TYPE = "application/vnd.engine.plugin.config.v1+json"
WHEEL_MEDIA_TYPE = "application/vnd.engine.plugin.wheel.v1+zip"
OCI_MANIFEST = spec.MT_OCI_MANIFEST
DOCKER_MANIFEST = spec.MT_DOCKER_MANIFEST
_IMAGE_CONFIGS = (spec.MT_DOCKER_CONFIG, spec.MT_OCI_CONFIG)
_CONFIG_LIMIT = spec.MANIFEST_LIMIT
_READ = 1 << 20

Progress = Callable[[dict[str, Any]], Awaitable[None]]


async def _quiet(_msg: dict[str, Any]) -> None:
    return None


# ---------------------------------------------------------------- references


def _has_domain(name: str) -> bool:
    first, slash, _ = name.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def resolve(name: str, plugin_registry: str = "") -> tuple[str, str]:
    """``(full reference, local plugin name)`` for a name given to install or push.

    The local name is what the user typed with Docker's default tag (``net-dummy`` ->
    ``net-dummy:latest``); names on Docker Hub are shown in their familiar form.

    The docker CLI normalises what the user typed before sending it (``net-dummy``
    arrives as ``docker.io/library/net-dummy:latest``), so with a plugin registry
    configured a Docker Hub name is taken as the short name it came from: the plugin
    registry stands in for Docker Hub, as a mirror would."""
    name = name.strip()
    if not name:
        raise InvalidArgument("a plugin reference is required")
    registry = plugin_registry.strip().rstrip("/")
    if registry and registry != reference.DEFAULT_DOMAIN:
        for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/",
                       "index.docker.io/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
    local = local_name(name)
    if _has_domain(name) or registry in ("", reference.DEFAULT_DOMAIN):
        full = reference.normalize(local)
        return full, local if _has_domain(name) else reference.familiar(full)
    try:
        full = reference.normalize(f"{registry}/{local}")
    except InvalidArgument as e:
        raise InvalidArgument(f"{e.message} (plugin registry {registry})") from None
    return full, local


# ---------------------------------------------------------------- artifacts


@dataclass
class Artifact:
    """A plugin found in a registry: its manifest and config, nothing more fetched."""

    reference: str                 # the full reference it was fetched by
    kind: str                      # "python" or "managed"
    digest: str                    # of the manifest
    config: dict[str, Any]
    layer: dict[str, Any] = field(default_factory=dict)   # the one layer's descriptor


def classify(ref: str, manifest: dict[str, Any], media_type: str) -> tuple[str, dict[str, Any]]:
    """``(kind, layer descriptor)`` of a manifest, or a clear refusal when it is not
    a plugin (an image, an index, or a plugin of an unknown shape)."""
    shown = reference.familiar(ref)
    if media_type in spec.INDEX_MANIFESTS:
        raise InvalidArgument(f"{shown} is not a plugin: it is a multi-platform image "
                              "index (plugins are a single manifest)")
    config_type = str((manifest.get("config") or {}).get("mediaType") or "")
    if config_type == PY_CONFIG_MEDIA_TYPE:
        kind = "python"
    elif config_type == MANAGED_CONFIG_MEDIA_TYPE:
        kind = "managed"
    elif config_type in _IMAGE_CONFIGS:
        raise InvalidArgument(f"{shown} is not a plugin: it is a container image (config "
                              f"media type {config_type}); pull it with docker pull")
    else:
        raise InvalidArgument(f"{shown} is not a plugin: its config has media type "
                              f"{config_type or 'none'}")
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise InvalidArgument(f"{shown}: a plugin has exactly one layer, this one has "
                              f"{len(layers)}")
    layer = layers[0]
    if not spec.valid_digest(str(layer.get("digest", ""))):
        raise InvalidArgument(f"{shown}: invalid layer digest {layer.get('digest')!r}")
    return kind, layer


class PluginDistribution:
    """Fetch and push plugin artifacts. ``hosts`` is the daemon's
    :class:`~engine.registry.client.RegistryHosts` (TLS and insecure registries)."""

    def __init__(self, hosts: Any = None) -> None:
        if hosts is None:
            from engine.registry.client import RegistryHosts

            hosts = RegistryHosts()
        self.hosts = hosts

    @contextlib.asynccontextmanager
    async def _connect(self, ref: str, creds: Any, actions: str):  # type: ignore[no-untyped-def]
        """An authenticated connection to the repository of ``ref``."""
        import aiohttp

        from engine.registry import auth
        from engine.registry.client import _Conn, registry_host

        r = reference.parse(ref)
        if creds is None or creds.empty:
            creds = auth.from_config(r.domain)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            yield _Conn(http, self.hosts, registry_host(r.domain), creds,
                        [f"repository:{r.path}:{actions}"]), r

    # -------------------------------------------------------------- fetch

    async def fetch(self, ref: str, creds: Any = None) -> Artifact:
        """The manifest and config of the plugin ``ref`` (a full reference); the layer
        is not downloaded. Digests are verified."""
        from engine.registry.client import fetch_manifest, fetch_small_blob

        async with self._connect(ref, creds, "pull") as (conn, r):
            target = r.digest or r.tag or reference.DEFAULT_TAG
            try:
                _, manifest, media_type, digest = await fetch_manifest(
                    conn, r.path, target, error=InvalidArgument)
            except NotFound:
                raise NotFound(f"plugin {reference.familiar(ref)} not found in its "
                               f"registry ({r.domain})") from None
            kind, layer = classify(ref, manifest, media_type)
            cdesc = manifest["config"]
            if not spec.valid_digest(str(cdesc.get("digest", ""))):
                raise InvalidArgument(f"{ref}: invalid config digest")
            raw = await fetch_small_blob(conn, r.path, cdesc["digest"], _CONFIG_LIMIT,
                                         error=InvalidArgument)
            try:
                config = json.loads(raw)
            except ValueError:
                raise InvalidArgument(f"{ref}: the plugin config is not JSON") from None
            if not isinstance(config, dict):
                raise InvalidArgument(f"{ref}: the plugin config is not a JSON object")
        return Artifact(reference=ref, kind=kind, digest=digest, config=config, layer=layer)

    async def download_layer(self, art: Artifact, dest: Path, creds: Any = None,
                             progress: Progress = _quiet) -> None:
        """The artifact's layer into ``dest``, verified against its digest (a file
        that does not match is deleted)."""
        import asyncio

        loop = asyncio.get_running_loop()
        want, size = str(art.layer["digest"]), int(art.layer.get("size") or 0)
        h = hashlib.sha256()
        have = 0
        async with self._connect(art.reference, creds, "pull") as (conn, r):
            resp = await conn.request("GET", f"/v2/{r.path}/blobs/{want}")
            f = await loop.run_in_executor(None, open, dest, "wb")
            try:
                async with resp:
                    while chunk := await resp.content.read(_READ):
                        h.update(chunk)
                        have += len(chunk)
                        if size and have > size:
                            raise InvalidArgument(f"{art.reference}: layer larger than "
                                                  f"its descriptor's {size} bytes")
                        await loop.run_in_executor(None, f.write, chunk)
                        await progress({"status": "Downloading", "id": want[7:19],
                                        "progressDetail": {"current": have, "total": size}})
            except BaseException:
                f.close()
                dest.unlink(missing_ok=True)
                raise
            f.close()
        if "sha256:" + h.hexdigest() != want:
            dest.unlink(missing_ok=True)
            raise InvalidArgument(f"{art.reference}: layer failed verification: expected "
                                  f"{want}, got sha256:{h.hexdigest()}")
        await progress({"status": "Download complete", "id": want[7:19]})

    # -------------------------------------------------------------- push

    async def push(self, ref: str, *, config: bytes, config_media_type: str,
                   layer_path: Path, layer_digest: str, layer_size: int,
                   layer_media_type: str, manifest_media_type: str,
                   layer_annotations: dict[str, str] | None = None, creds: Any = None,
                   progress: Progress = _quiet) -> str:
        """Upload the layer and config blobs (unless the registry has them) and put
        the manifest under the reference's tag; return the manifest digest."""
        import asyncio

        loop = asyncio.get_running_loop()
        r0 = reference.parse(ref)
        if r0.digest:
            raise InvalidArgument(f"cannot push a digest reference: {ref}")
        async with self._connect(ref, creds, "pull,push") as (conn, r):
            await progress({"status": f"The push refers to repository [{r.name}]"})
            resp = await conn.request("GET", "/v2/")
            resp.release()
            data = await loop.run_in_executor(None, layer_path.read_bytes)
            await self._upload(conn, r.path, layer_digest, data, progress, show=True)
            config_digest = spec.sha256(config)
            await self._upload(conn, r.path, config_digest, config, progress, show=False)
            layer = {"mediaType": layer_media_type, "size": layer_size,
                     "digest": layer_digest}
            if layer_annotations:
                layer["annotations"] = dict(layer_annotations)
            manifest = {"schemaVersion": 2, "mediaType": manifest_media_type,
                        "config": {"mediaType": config_media_type, "size": len(config),
                                   "digest": config_digest},
                        "layers": [layer]}
            body = json.dumps(manifest, indent=2).encode()
            digest = spec.sha256(body)
            tag = r.tag or reference.DEFAULT_TAG
            resp = await conn.request("PUT", f"/v2/{r.path}/manifests/{tag}", data=body,
                                      headers={"Content-Type": manifest_media_type},
                                      ok=(200, 201, 202))
            resp.release()
        await progress({"status": f"{tag}: digest: {digest} size: {len(body)}"})
        await progress({"progressDetail": {},
                        "aux": {"Tag": tag, "Digest": digest, "Size": len(body)}})
        return digest

    @staticmethod
    async def _upload(conn: Any, path: str, digest: str, data: bytes, progress: Progress,
                      *, show: bool) -> None:
        ident = digest[7:19]
        resp = await conn.request("HEAD", f"/v2/{path}/blobs/{digest}", ok=(200, 404))
        resp.release()
        if resp.status == 200:
            if show:
                await progress({"status": "Layer already exists", "id": ident})
            return
        if show:
            await progress({"status": "Pushing", "id": ident,
                            "progressDetail": {"current": 0, "total": len(data)}})
        resp = await conn.request("POST", f"/v2/{path}/blobs/uploads/", ok=(202,))
        resp.release()
        location = resp.headers.get("Location")
        if not location:
            raise InvalidArgument("the registry started an upload without a Location")
        url = conn.url(location).update_query({"digest": digest})
        resp = await conn.request("PUT", url, data=data,
                                  headers={"Content-Type": "application/octet-stream"},
                                  ok=(201, 204))
        resp.release()
        if show:
            await progress({"status": "Pushed", "id": ident})


def python_config(name: str, version: str, entry_points: dict[str, str],
                  manifest: dict[str, Any], wheel: str) -> bytes:
    """The config blob of an engine plugin artifact."""
    return json.dumps({"name": name, "version": version, "entryPoints": entry_points,
                       "manifest": manifest, "wheel": wheel}, indent=1,
                      sort_keys=True).encode()


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``(sha256 digest, size)`` of a file. Blocks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


__all__ = ["Artifact", "PluginDistribution", "PY_CONFIG_MEDIA_TYPE", "WHEEL_MEDIA_TYPE",
           "MANAGED_CONFIG_MEDIA_TYPE", "MANAGED_LAYER_MEDIA_TYPE", "OCI_MANIFEST",
           "DOCKER_MANIFEST", "classify", "file_digest", "python_config", "resolve"]
