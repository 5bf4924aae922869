"""Plugins through a registry, without root: the engine's registry server runs in the
test's own event loop on a loopback port; an engine plugin is pushed as an artifact,
its privileges read from the config alone, a wrong grant refused before the wheel is
fetched, a corrupted wheel refused by its digest, and a good one installed."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import web

from engine.core import plugin_dist as dist
from engine.core.plugins import PluginHost
from engine.registry.server import Settings, make_app
from engine.sdk.errors import Forbidden, InvalidArgument
from engine.sdk.packaging import build_wheel, read_wheel

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def memfs_wheel(tmp_path_factory) -> Path:
    return build_wheel(EXAMPLES / "volume-memfs", tmp_path_factory.mktemp("wheels"))


async def _serve(root: Path) -> tuple[web.AppRunner, str, Settings]:
    settings = Settings(root)
    runner = web.AppRunner(make_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}", settings


async def _push_wheel(d: dist.PluginDistribution, ref: str, wheel: Path) -> str:
    info = read_wheel(wheel)
    assert info.manifest is not None
    digest, size = dist.file_digest(wheel)
    config = dist.python_config(info.name, info.version, info.entry_points,
                                {"description": info.manifest.description,
                                 "privileges": info.manifest.privileges}, wheel.name)
    return await d.push(ref, config=config, config_media_type=dist.PY_CONFIG_MEDIA_TYPE,
                        layer_path=wheel, layer_digest=digest, layer_size=size,
                        layer_media_type=dist.WHEEL_MEDIA_TYPE,
                        manifest_media_type=dist.OCI_MANIFEST)


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    h = PluginHost(str(tmp_path / "data"), str(tmp_path / "run"),
                   driver_options={"memfs": {"root": str(tmp_path / "shm")}})
    h.discover()
    yield h
    for name in set(sys.modules) - before:
        if name.startswith("engine_"):
            del sys.modules[name]


def test_an_engine_plugin_travels_as_an_artifact(tmp_path, host, memfs_wheel):
    async def body() -> None:
        runner, registry, settings = await _serve(tmp_path / "registry")
        try:
            host.plugin_registry = f"{registry}/plugins"
            d = host.distribution
            await _push_wheel(d, f"{registry}/plugins/memfs:1.0", memfs_wheel)
            art = await d.fetch(f"{registry}/plugins/memfs:1.0")
            assert art.kind == "python" and art.config["wheel"] == memfs_wheel.name
            assert art.layer["mediaType"] == dist.WHEEL_MEDIA_TYPE
            # privileges by short name, from the config alone
            asked = await host.privileges_of("memfs:1.0")
            assert [(p["Name"], p["Value"]) for p in asked] == [("mount", ["/dev/shm"])]

            # a wrong grant: refused before the wheel is downloaded, nothing installed
            with pytest.raises(Forbidden, match="do not match"):
                await host.install("memfs:1.0", granted=[])
            assert "memfs" not in host.plugins

            # a wheel that does not match its digest never reaches pip
            blob = settings.storage.blob_path(art.layer["digest"])
            good = blob.read_bytes()
            blob.write_bytes(good[:-10] + b"0123456789")
            with pytest.raises(InvalidArgument, match="failed verification"):
                await host.install("memfs:1.0", granted=asked)
            assert "memfs" not in host.plugins
            blob.write_bytes(good)

            names = await host.install("memfs:1.0", granted=asked)
            assert names == ["memfs"]
            rec = host.plugins["memfs"]
            assert rec.source == f"{registry}/plugins/memfs:1.0" and not rec.enabled
            # kept for push: pushed again under another name, same blobs
            digest = await host.push("memfs:2.0")
            again = await d.fetch(f"{registry}/plugins/memfs:2.0")
            assert again.layer["digest"] == art.layer["digest"] and digest == again.digest
            # and upgraded from a reference (disabled, it stays so)
            with pytest.raises(Forbidden):
                await host.upgrade("memfs", "memfs:2.0", [])
            await host.upgrade("memfs", "memfs:2.0", asked)
            rec = host.plugins["memfs"]
            assert rec.source == f"{registry}/plugins/memfs:2.0" and not rec.enabled
        finally:
            await runner.cleanup()

    asyncio.run(body())


def test_an_image_or_a_missing_name_is_refused(tmp_path, host):
    async def body() -> None:
        runner, registry, _ = await _serve(tmp_path / "registry")
        try:
            d = host.distribution
            layer = tmp_path / "layer"
            layer.write_bytes(b"not really a tar")
            digest, size = dist.file_digest(layer)
            await d.push(f"{registry}/app:1", config=json.dumps({"architecture": "amd64"})
                         .encode(), config_media_type="application/vnd.oci.image.config.v1+json",
                         layer_path=layer, layer_digest=digest, layer_size=size,
                         layer_media_type="application/vnd.oci.image.layer.v1.tar",
                         manifest_media_type=dist.OCI_MANIFEST)
            with pytest.raises(InvalidArgument, match="not a plugin: it is a container image"):
                await host.privileges_of(f"{registry}/app:1")
            with pytest.raises(Exception, match="not found"):
                await host.install(f"{registry}/nothing:1", granted=[])
        finally:
            await runner.cleanup()

    asyncio.run(body())


def test_plugin_transfers_honour_the_daemons_insecure_registries(tmp_path):
    """Plugin installs and pushes reach a registry the daemon lists as insecure over
    plain HTTP, as image pulls do (loopback stays insecure by default)."""
    h = PluginHost(str(tmp_path / "data"), str(tmp_path / "run"), autoload=False,
                   insecure_registries=["reg.example:5000", "10.9.0.0/16"])
    hosts = h.distribution.hosts
    assert hosts.is_insecure("reg.example:5000") and hosts.is_insecure("10.9.1.2:5000")
    assert hosts.is_insecure("127.0.0.1:5000") and not hosts.is_insecure("other.example")
