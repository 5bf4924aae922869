"""Pulls into an overlay layer store: the layers of an image unpack at the same time and
become visible in order, only once verified; a failed pull leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_root
from engine.core.store.images import ImageStore
from engine.core.store.layers import LayerStore
from engine.registry.client import RegistryClient, RegistryError
from engine.registry.server import Settings, make_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_registry_client import client_for as unit_client_for  # noqa: E402
from test_registry_client import (  # noqa: E402
    disturb,
    image_of,
    layer_tar,
    pushed_layers,
    registry_app,
    serving,
)

pytestmark = [pytest.mark.root, needs_root]


LAYERS = [
    {"etc/os": b"base", "etc/keep": b"kept", "big0": os.urandom(1 << 20)},
    {"big1": os.urandom(1 << 20)},
    {"etc/.wh.os": None, "big2": os.urandom(1 << 20)},
    {"app": b"app", "big3": os.urandom(1 << 20)},
]


def client_for(root: Path) -> RegistryClient:
    return unit_client_for(root, "overlay")


def add_image(images: ImageStore, tag: str) -> None:
    image_of(images, tag, [layer_tar(files) for files in LAYERS])


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
    settings, app, target = registry_app(tmp_path)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1")
            await a.push(f"{reg}/app:v1")
            top = pushed_layers(settings)[-1]
            disturb(target, a, top, tamper=True)
            with pytest.raises(RegistryError, match="failed verification"):
                await b.pull(f"{reg}/app:v1")
            assert b.images.list() == [] and b.images.layers.list() == []
            assert not b.content.has(top["digest"])
            assert leftovers(b) == []

    asyncio.run(go())
