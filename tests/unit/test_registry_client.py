"""The registry client against our own server, in process on loopback: push and pull
round trips, mounts, platform selection, resumed and tampered downloads, basic and
bearer auth, login."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from engine.core.store.content import ContentStore
from engine.core.store.images import ImageStore
from engine.core.store.layers import LayerStore
from engine.registry import spec
from engine.registry.auth import Credentials
from engine.registry.client import RegistryClient, RegistryError, Unauthorized, host_platform
from engine.registry.htpasswd import Htpasswd, bcrypt_hash
from engine.registry.server import Settings, make_app
from engine.sdk.errors import NotFound


def layer_tar(files: dict[str, bytes | None]) -> bytes:
    """A layer tar; a None value makes an empty file (``.wh.`` names are whiteouts)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data or b""), 1_700_000_000
            tf.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def stores(root: Path, driver: str = "vfs") -> tuple[ContentStore, ImageStore]:
    content = ContentStore(root / "content")
    return content, ImageStore(root / "images", content, LayerStore(root / "layers", driver))


def client_for(root: Path, driver: str = "vfs", **kw: Any) -> RegistryClient:
    content, images = stores(root, driver)
    kw.setdefault("config_dir", root / "docker-config")
    return RegistryClient(content, images, root / "registry", **kw)


def image_of(images: ImageStore, tag: str, tars: list[bytes]) -> str:
    """Store ``tars`` as the uncompressed layers of an image for this platform, tagged
    ``tag`` (as ``import`` and ``commit`` store layers); return its id."""
    blobs, diff_ids = [], []
    for tar in tars:
        blobs.append((images.content.write(tar), spec.MT_DOCKER_LAYER))
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    os_name, arch, _ = host_platform()
    config = {"architecture": arch, "os": os_name, "config": {"Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "created": "2024-01-02T03:04:05Z"}
    img = images.create(json.dumps(config).encode(), blobs)
    images.tag(img.id, tag)
    return img.id


def add_image(images: ImageStore, tag: str, sizes: tuple[int, ...] = (3000, 200_000)) -> str:
    """An image of layers of incompressible data (like real layers), one per size."""
    return image_of(images, tag, [layer_tar({f"layer{i}/data": random.Random(i).randbytes(size)})
                                  for i, size in enumerate(sizes)])


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port; yield ``127.0.0.1:PORT``."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


class Recorder:
    """Collects progress messages."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)

    def statuses(self) -> list[str]:
        return [m.get("status", "") for m in self.messages]


def test_push_and_pull_round_trip(tmp_path):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")

    async def go() -> None:
        settings = Settings(tmp_path / "reg")
        async with serving(make_app(settings)) as reg:
            image_id = add_image(a.images, f"{reg}/team/app:v1")
            pushed = Recorder()
            digest = await a.push(f"{reg}/team/app:v1", progress=pushed)
            assert pushed.statuses()[0] == f"The push refers to repository [{reg}/team/app]"
            assert pushed.statuses().count("Pushed") == 2
            assert pushed.messages[-1]["aux"]["Digest"] == digest
            assert a.images.get(image_id).repo_digests == [f"{reg}/team/app@{digest}"]
            # the registry holds exactly the gzip blobs the client kept
            manifest = json.loads(settings.storage.get_manifest("team/app", "v1")[0])
            assert manifest["mediaType"] == spec.MT_DOCKER_MANIFEST
            for layer in manifest["layers"]:
                assert layer["mediaType"] == spec.MT_DOCKER_LAYER_GZIP
                assert settings.storage.blob_path(layer["digest"]).read_bytes() == \
                    a.content.read(layer["digest"])

            pulled = Recorder()
            img = await b.pull(f"{reg}/team/app:v1", progress=pulled)
            assert img.id == image_id
            assert img.repo_tags == [f"{reg}/team/app:v1"]
            assert img.repo_digests == [f"{reg}/team/app@{digest}"]
            assert pulled.statuses()[0] == "Pulling from team/app"
            assert pulled.statuses().count("Pull complete") == 2
            assert pulled.statuses()[-2:] == [
                f"Digest: {digest}", f"Status: Downloaded newer image for {reg}/team/app:v1"]
            for layer in manifest["layers"]:
                assert b.content.read(layer["digest"]) == a.content.read(layer["digest"])
            assert not list(b.downloads.iterdir())

            again = Recorder()
            await b.pull(f"{reg}/team/app:v1", progress=again)
            assert again.statuses()[-1] == f"Status: Image is up to date for {reg}/team/app:v1"
            assert "Already exists" in again.statuses()

            # pushing again uploads nothing; another repository mounts the layers
            repush = Recorder()
            assert await a.push(f"{reg}/team/app:v1", progress=repush) == digest
            assert repush.statuses().count("Layer already exists") == 2
            a.images.tag(image_id, f"{reg}/other/app:v2")
            mounted = Recorder()
            assert await a.push(f"{reg}/other/app:v2", progress=mounted) == digest
            assert mounted.statuses().count("Mounted from team/app") == 2

    asyncio.run(go())


def test_uncompressed_layers_are_compressed_once(tmp_path):
    a = client_for(tmp_path / "a")

    async def go() -> None:
        async with serving(make_app(Settings(tmp_path / "r1"))) as r1, \
                serving(make_app(Settings(tmp_path / "r2"))) as r2:
            image_id = add_image(a.images, f"{r1}/app:v1", sizes=(50_000,))
            a.images.tag(image_id, f"{r2}/app:v1")
            d1 = await a.push(f"{r1}/app:v1")
            d2 = await a.push(f"{r2}/app:v1")
            assert d1 == d2
            raw = a.images.get(image_id).layers[0].digest
            gz = json.loads((a.state.dir / "compressed.json").read_text())[raw]
            assert a.content.read(gz)[:2] == b"\x1f\x8b"

    asyncio.run(go())


def test_pull_by_digest_and_by_platform_from_an_index(tmp_path):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings = Settings(tmp_path / "reg")

    async def go() -> None:
        async with serving(make_app(settings)) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000,))
            child = await a.push(f"{reg}/app:v1")
            os_name, arch, _ = host_platform()
            index = json.dumps({"schemaVersion": 2, "mediaType": spec.MT_OCI_INDEX,
                                "manifests": [
                                    {"mediaType": spec.MT_DOCKER_MANIFEST, "digest": child,
                                     "size": 1, "platform": {"os": os_name,
                                                             "architecture": arch}}]}).encode()
            index_digest = settings.storage.put_manifest("app", "multi", index)
            img = await b.pull(f"{reg}/app:multi")
            assert img.repo_digests == [f"{reg}/app@{index_digest}"]
            progress = Recorder()
            with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
                await b.pull(f"{reg}/app:multi", platform="linux/s390x", progress=progress)
            assert progress.messages == []  # the error comes before any progress
            c = client_for(tmp_path / "c")
            img = await c.pull(f"{reg}/app@{child}")
            assert img.repo_tags == [] and img.repo_digests == [f"{reg}/app@{child}"]
            with pytest.raises(NotFound, match="manifest unknown"):
                await c.pull(f"{reg}/app:nope")

    asyncio.run(go())


def blob_middleware(target: dict[str, Any]) -> Any:
    """Misbehave on GETs of the blob ``target["digest"]``: ``cut`` sends half of it and
    drops the connection, ``tamper`` sends other bytes of the same length. Records the
    Range header of every blob GET."""

    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith(f"/blobs/{target.get('digest')}"):
            target.setdefault("ranges", []).append(request.headers.get("Range"))
            data: bytes = target["data"]
            if target.get("cut"):
                target["cut"] -= 1
                resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                await asyncio.sleep(0.2)  # let the client read it before the connection drops
                assert request.transport is not None
                request.transport.abort()
                return resp
            if target.get("tamper"):
                return web.Response(body=bytes(len(data)))
        return await handler(request)

    return mw


def registry_app(tmp_path: Path, middleware: Any = None,
                 target: dict[str, Any] | None = None
                 ) -> tuple[Settings, web.Application, dict[str, Any]]:
    """A registry app with its storage in ``tmp_path / "reg"``, whose blob GETs the
    test may disturb through ``target`` (see :func:`blob_middleware`, the default)."""
    settings = Settings(tmp_path / "reg")
    target = {} if target is None else target
    app = make_app(settings)
    app.middlewares.append((middleware or blob_middleware)(target))
    return settings, app, target


def disturb(target: dict[str, Any], pusher: RegistryClient, layer: dict[str, Any],
            **how: Any) -> None:
    """Have :func:`blob_middleware` disturb GETs of ``layer``'s blob (``cut=N``,
    ``tamper=True``; neither: only record their ranges), ``pusher`` holding its bytes."""
    target.update(digest=layer["digest"], data=pusher.content.read(layer["digest"]), **how)


def pushed_layers(settings: Settings, repo: str = "app", tag: str = "v1") -> list[dict]:
    """The layer descriptors of the manifest stored for ``repo:tag``."""
    return json.loads(settings.storage.get_manifest(repo, tag)[0])["layers"]


def test_interrupted_pull_resumes_with_a_range_request(tmp_path):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings, app, target = registry_app(tmp_path)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000, 400_000))
            await a.push(f"{reg}/app:v1")
            big = max(pushed_layers(settings),
                      key=lambda layer: layer["size"])
            disturb(target, a, big, cut=1)
            with pytest.raises(RegistryError, match="interrupted"):
                await b.pull(f"{reg}/app:v1")
            assert not b.images.exists(f"{reg}/app:v1")  # no tag without the image
            partial = b.downloads / (big["digest"][7:] + ".partial")
            assert 0 < partial.stat().st_size < big["size"]
            # a restarted daemon opens the stores again: the partial file stays
            b2 = client_for(tmp_path / "b")
            img = await b2.pull(f"{reg}/app:v1")
            assert target["ranges"][-1] == f"bytes={partial_size(target)}-"
            assert img.repo_tags == [f"{reg}/app:v1"]
            assert b2.content.read(big["digest"]) == target["data"]
            assert not partial.exists()

    def partial_size(t: dict[str, Any]) -> int:
        return len(t["data"]) // 2

    asyncio.run(go())


def test_tampered_layer_is_rejected_and_nothing_is_stored(tmp_path):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings, app, target = registry_app(tmp_path)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(5000,))
            await a.push(f"{reg}/app:v1")
            layer = pushed_layers(settings)[0]
            disturb(target, a, layer, tamper=True)
            with pytest.raises(RegistryError, match="failed verification"):
                await b.pull(f"{reg}/app:v1")
            assert not b.content.has(layer["digest"])
            assert b.images.list() == []
            assert not list(b.downloads.iterdir())

    asyncio.run(go())


def basic_ok(header: str, user: str, password: str) -> bool:
    expected = base64.b64encode(f"{user}:{password}".encode()).decode()
    return header == f"Basic {expected}"


def test_bearer_token_flow(tmp_path):
    a = client_for(tmp_path / "a")
    seen: dict[str, Any] = {"scopes": [], "realm": ""}

    async def token(request: web.Request) -> web.Response:
        if not basic_ok(request.headers.get("Authorization", ""), "alice", "secret"):
            return web.json_response({"details": "bad credentials"}, status=401)
        seen["scopes"].append(request.query.getall("scope", []))
        return web.json_response({"token": "tok-123", "refresh_token": "refresh-me"})

    @web.middleware
    async def bearer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer tok-123":
            challenge = f'Bearer realm="{seen["realm"]}",service="test"'
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "no"}]},
                                     status=401, headers={"WWW-Authenticate": challenge})
        return await handler(request)

    registry = make_app(Settings(tmp_path / "reg"))
    registry.middlewares.insert(0, bearer)
    token_app = web.Application()
    token_app.router.add_get("/token", token)

    async def go() -> None:
        async with serving(token_app) as auth_host, serving(registry) as reg:
            seen["realm"] = f"http://{auth_host}/token"
            add_image(a.images, f"{reg}/app:v1", sizes=(1000,))
            with pytest.raises(Unauthorized):
                await a.push(f"{reg}/app:v1")
            creds = Credentials("alice", "secret")
            await a.push(f"{reg}/app:v1", creds=creds)
            assert ["repository:app:pull,push"] in seen["scopes"]
            b = client_for(tmp_path / "b")
            await b.pull(f"{reg}/app:v1", creds=creds)
            assert seen["scopes"][-1] == ["repository:app:pull"]
            assert await a.login(reg, creds) == "refresh-me"
            with pytest.raises(Unauthorized, match="login attempt"):
                await a.login(reg, Credentials("alice", "wrong"))

    asyncio.run(go())


def test_basic_auth_with_credentials_from_docker_config(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"bob:{bcrypt_hash('pw')}\n")
    a = client_for(tmp_path / "a")

    async def go() -> None:
        settings = Settings(tmp_path / "reg", htpasswd=Htpasswd(htpasswd))
        async with serving(make_app(settings)) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000,))
            with pytest.raises(Unauthorized):
                await a.push(f"{reg}/app:v1")
            a.config_dir.mkdir()  # type: ignore[union-attr]
            (Path(a.config_dir) / "config.json").write_text(json.dumps(  # type: ignore[arg-type]
                {"auths": {reg: {"auth": base64.b64encode(b"bob:pw").decode()}}}))
            await a.push(f"{reg}/app:v1")
            assert settings.storage.tags("app") == ["v1"]
            assert await a.login(f"http://{reg}/", Credentials("bob", "pw")) == ""
            with pytest.raises(Unauthorized):
                await a.login(reg, Credentials("bob", "nope"))

    asyncio.run(go())


def test_distribution_inspect(tmp_path):
    a = client_for(tmp_path / "a")

    async def go() -> None:
        async with serving(make_app(Settings(tmp_path / "reg"))) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000,))
            digest = await a.push(f"{reg}/app:v1")
            info = await a.distribution(f"{reg}/app:v1")
            assert info["Descriptor"]["digest"] == digest
            assert info["Descriptor"]["mediaType"] == spec.MT_DOCKER_MANIFEST
            os_name, arch, _ = host_platform()
            assert info["Platforms"] == [{"architecture": arch, "os": os_name}]

    asyncio.run(go())


def test_compressed_blobs_of_deleted_images_are_pruned(tmp_path):
    a = client_for(tmp_path / "a")

    async def go() -> None:
        async with serving(make_app(Settings(tmp_path / "reg"))) as reg:
            image_id = add_image(a.images, f"{reg}/app:v1", sizes=(1000,))
            await a.push(f"{reg}/app:v1")
            gz = a._known_blob(a.images.get(image_id).layers[0].digest)[0]
            assert a.prune_compressed() == []  # still needed
            a.images.delete(image_id, force=True)
            assert a.content.has(gz)
            assert a.prune_compressed() == [gz]
            assert not a.content.has(gz)
            assert a.state.compressed_all() == {}

    asyncio.run(go())


def test_partial_downloads_of_stored_blobs_are_dropped_on_start(tmp_path):
    a = client_for(tmp_path / "a")
    digest = a.content.write(b"already here")
    done = a.downloads / (digest[7:] + ".partial")
    done.write_bytes(b"already")
    pending = a.downloads / ("f" * 64 + ".partial")
    pending.write_bytes(b"half")
    client_for(tmp_path / "a")
    assert not done.exists()
    assert pending.read_bytes() == b"half"


def test_concurrent_pulls_share_one_download_per_blob(tmp_path):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    gets: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and "/blobs/" in request.path:
            gets.append(request.path.rsplit("/", 1)[1])
        return await handler(request)

    app = make_app(Settings(tmp_path / "reg"))
    app.middlewares.append(count)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000, 300_000, 5000, 7000))
            await a.push(f"{reg}/app:v1")
            gets.clear()
            first, second = await asyncio.gather(b.pull(f"{reg}/app:v1"),
                                                 b.pull(f"{reg}/app:v1"))
            assert first.id == second.id
            layers = [layer.digest for layer in first.layers]
            assert sorted(g for g in gets if g in layers) == sorted(layers)

    asyncio.run(go())


def test_large_blobs_are_uploaded_in_chunks(tmp_path, monkeypatch):
    from engine.registry import client as client_module

    monkeypatch.setattr(client_module, "CHUNK", 64 * 1024)
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    ranges: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "PATCH":
            ranges.append(request.headers.get("Content-Range", ""))
        return await handler(request)

    app = make_app(Settings(tmp_path / "reg"))
    app.middlewares.append(record)

    async def go() -> None:
        async with serving(app) as reg, serving(make_app(Settings(tmp_path / "r0"))) as r0:
            # the first push compresses while it streams; the kept blob goes in chunks
            image_id = add_image(a.images, f"{r0}/app:v1", sizes=(200_000,))
            await a.push(f"{r0}/app:v1")
            a.images.tag(image_id, f"{reg}/app:v1")
            progress = Recorder()
            await a.push(f"{reg}/app:v1", progress=progress)
            assert ranges[:2] == ["0-65535", "65536-131071"] and len(ranges) >= 3
            currents = [m["progressDetail"]["current"] for m in progress.messages
                        if m.get("status") == "Pushing"]
            assert currents == sorted(currents) and currents[-1] > 0
            assert (await b.pull(f"{reg}/app:v1")).id == image_id

    asyncio.run(go())
