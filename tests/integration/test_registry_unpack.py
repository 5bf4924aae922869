"""Pulls into an overlay layer store: the layers of an image unpack at the same time and
become visible in order, only once verified; a failed pull leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import needs_root
from engine.core.store.content import ContentStore
from engine.core.store.images import ImageStore
from engine.core.store.layers import LayerStore
from engine.registry import spec
from engine.registry.client import RegistryClient, RegistryError, host_platform
from engine.registry.server import Settings, make_app

pytestmark = [pytest.mark.root, needs_root]


def layer_tar(files: dict[str, bytes | None]) -> bytes:
    """A layer tar; a None value makes an empty file (``.wh.`` names are whiteouts)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data or b""), 1_700_000_000
            tf.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


LAYERS = [
    {"etc/os": b"base", "etc/keep": b"kept", "big0": os.urandom(1 << 20)},
    {"big1": os.urandom(1 << 20)},
    {"etc/.wh.os": None, "big2": os.urandom(1 << 20)},
    {"app": b"app", "big3": os.urandom(1 << 20)},
]


def client_for(root: Path) -> RegistryClient:
    content = ContentStore(root / "content")
    layers = LayerStore(root / "layers", "overlay")
    return RegistryClient(content, ImageStore(root / "images", content, layers),
                          root / "registry", config_dir=root / "docker-config")


def add_image(images: ImageStore, tag: str) -> None:
    blobs, diff_ids = [], []
    for files in LAYERS:
        tar = layer_tar(files)
        blobs.append((images.content.write(tar), spec.MT_DOCKER_LAYER))
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    os_name, arch, _ = host_platform()
    config = {"architecture": arch, "os": os_name, "config": {"Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    images.tag(images.create(json.dumps(config).encode(), blobs).id, tag)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def tampering(target: dict[str, Any]) -> Any:
    """Serve blob ``target["digest"]`` with its last byte changed."""

    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith(f"/blobs/{target.get('digest')}"):
            data = bytearray(target["data"])
            data[-1] ^= 0xFF
            return web.Response(body=bytes(data))
        return await handler(request)

    return mw


def leftovers(client: RegistryClient) -> list[str]:
    layers = client.images.layers
    return [*os.listdir(layers.root / "tmp"), *os.listdir(client.downloads)]


def test_layers_unpack_together_and_commit_in_order(tmp_path, monkeypatch):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    running, most = [0], [0]
    calls: list[str | None] = []
    lock = threading.Lock()
    real = LayerStore.unpack

    def unpack(self: LayerStore, src: Any, **kw: Any) -> Any:
        calls.append(kw.get("diff_id"))
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.1)  # long enough for the others to start
            return real(self, src, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(LayerStore, "unpack", unpack)
    messages: list[dict[str, Any]] = []

    async def progress(msg: dict[str, Any]) -> None:
        messages.append(msg)

    async def go() -> None:
        async with serving(make_app(Settings(tmp_path / "reg"))) as reg:
            add_image(a.images, f"{reg}/app:v1")
            await a.push(f"{reg}/app:v1")
            img = await b.pull(f"{reg}/app:v1", progress=progress)
            assert [layer.chain_id for layer in img.layers] == \
                [layer.chain_id for layer in a.images.get(img.id).layers]
            for layer in img.layers:
                statuses = [m["status"] for m in messages if m.get("id") == layer.digest[7:19]]
                assert statuses[-2:] == ["Extracting", "Pull complete"]
                assert b.content.has(layer.digest)
            b.images.layers.create_rw("c", img.layers[-1].chain_id, init=False)
            try:
                merged = Path(b.images.layers.mount("c"))
                assert sorted(os.listdir(merged / "etc")) == ["keep"]  # whiteout applied
                assert (merged / "app").read_bytes() == b"app"
                assert (merged / "big1").read_bytes() == LAYERS[1]["big1"]
            finally:
                b.images.layers.remove_rw("c")
            assert leftovers(b) == []
            assert most[0] >= 2  # layers were unpacking at the same time
            # a layer whose blob is gone is downloaded again, not unpacked again
            b.content.delete(img.layers[0].digest)
            calls.clear()
            messages.clear()
            again = await b.pull(f"{reg}/app:v1", progress=progress)
            assert again.id == img.id and calls == []
            assert b.content.has(img.layers[0].digest)
            statuses = [m["status"] for m in messages if m.get("id") == img.layers[0].digest[7:19]]
            assert statuses[-1] == "Pull complete" and "Downloading" in statuses
            assert leftovers(b) == []

    asyncio.run(go())


def test_failed_pull_leaves_no_layer_and_no_scratch(tmp_path):
    """The top layer's blob is tampered with: the layers below, unpacked meanwhile,
    are dropped, committed or not, and no unpacked directory is left over."""
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings = Settings(tmp_path / "reg")
    target: dict[str, Any] = {}
    app = make_app(settings)
    app.middlewares.append(tampering(target))

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1")
            await a.push(f"{reg}/app:v1")
            top = json.loads(settings.storage.get_manifest("app", "v1")[0])["layers"][-1]
            target.update(digest=top["digest"], data=a.content.read(top["digest"]))
            with pytest.raises(RegistryError, match="failed verification"):
                await b.pull(f"{reg}/app:v1")
            assert b.images.list() == [] and b.images.layers.list() == []
            assert not b.content.has(top["digest"])
            assert leftovers(b) == []

    asyncio.run(go())
