"""Transfer speed machinery of pull and push, and that it keeps the guarantees: the
parallel gzip encoder (valid gzip for Python and the ``gzip`` tool, deterministic,
incompressible pieces stored), layers compressed once across registries, downloads
stored as they arrive, layers unpacked while later ones download and dropped again when
the pull fails."""
from __future__ import annotations

import asyncio
import gzip
import io
import json
import random
import shutil
import subprocess
from typing import Any

import pytest
from aiohttp import web
from engine.core.store import compression
from engine.core.store.compression import GZIP_PIECE, GzipEncoder, decompressed, incompressible
from engine.registry.client import RegistryError
from engine.registry.server import Settings, make_app
from engine.sdk.errors import InvalidArgument
from test_registry_client import (Recorder, add_image, client_for, disturb, pushed_layers,
                                  registry_app, serving)

RANDOM = random.Random(7).randbytes(3 * GZIP_PIECE + 12345)
TEXT = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i
                for i in range(120_000))
MIXED = RANDOM[:GZIP_PIECE] + TEXT[:2 * GZIP_PIECE] + RANDOM[-5000:]


def encode(data: bytes, **kw: Any) -> bytes:
    with GzipEncoder(io.BytesIO(data), **kw) as enc:
        return enc.read()


@pytest.mark.parametrize("data", [b"", b"x", RANDOM, TEXT, MIXED],
                         ids=["empty", "one-byte", "random", "text", "mixed"])
def test_gzip_encoder_output_is_one_valid_gzip_member(data):
    out = encode(data)
    assert out[:3] == b"\x1f\x8b\x08"
    assert gzip.decompress(out) == data
    if shutil.which("gzip"):
        tool = subprocess.run(["gzip", "-t"], input=out, capture_output=True, check=False)
        assert tool.returncode == 0, tool.stderr


def test_gzip_encoder_is_deterministic_whatever_the_threads_and_read_sizes():
    one = encode(MIXED, threads=1)
    assert encode(MIXED, threads=4) == one
    with GzipEncoder(io.BytesIO(MIXED), threads=2) as enc:
        pieces = []
        while chunk := enc.read(777):
            assert len(chunk) <= 777
            pieces.append(chunk)
    assert b"".join(pieces) == one


def test_gzip_encoder_stores_incompressible_pieces_and_compresses_the_rest():
    assert incompressible(RANDOM[:GZIP_PIECE])
    assert not incompressible(TEXT[:GZIP_PIECE])
    random_out = encode(RANDOM)
    assert len(RANDOM) < len(random_out) < len(RANDOM) * 1.001  # stored blocks: 5 B/64 kB
    text_out = encode(TEXT)
    assert len(text_out) < len(TEXT) / 5
    # level 0 asks for no compression at all
    assert len(encode(TEXT, level=0)) > len(TEXT)
    with pytest.raises(ValueError):
        GzipEncoder(io.BytesIO(b""), level=10)


def test_gzip_encoder_reports_a_failing_source():
    class Broken(io.RawIOBase):
        calls = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("disk gone")
            return TEXT[:n]

    with GzipEncoder(Broken(), threads=2) as enc, pytest.raises(OSError, match="disk gone"):
        enc.read()


def decode(blob: bytes, read: int = 10240) -> bytes:
    out = []
    with decompressed(io.BytesIO(blob)) as raw:
        while chunk := raw.read(read):
            out.append(chunk)
    return b"".join(out)


def test_gzip_decoder_reads_members_padding_and_large_outputs():
    assert decode(encode(MIXED)) == MIXED
    two = gzip.compress(b"first ", mtime=0) + b"\0" * 10 + gzip.compress(b"second", mtime=0)
    assert decode(two, read=3) == b"first second"
    bomb = gzip.compress(bytes(20 << 20), mtime=0)  # 20 MiB of zeros in ~20 kB
    with decompressed(io.BytesIO(bomb)) as raw:
        assert len(raw.read(1 << 20)) == 1 << 20  # decoded as asked, not all at once


@pytest.mark.parametrize("damage", ["truncated", "crc", "garbage"])
def test_gzip_decoder_rejects_damaged_streams(damage):
    blob = bytearray(encode(TEXT[:200_000]))
    if damage == "truncated":
        blob = blob[:len(blob) // 2]
    elif damage == "crc":
        blob[-8] ^= 0xFF
    else:
        blob += b"trailing garbage"
    with pytest.raises(InvalidArgument, match="invalid gzip stream"):
        decode(bytes(blob))


def test_layers_are_compressed_once_for_every_registry(tmp_path, monkeypatch):
    """A second push of the same layers, to another registry, sends the kept gzip blob
    without compressing again."""
    encoded: list[int] = []
    real = compression.GzipEncoder

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kw: Any) -> None:
            encoded.append(1)
            super().__init__(*args, **kw)

    monkeypatch.setattr("engine.registry.client.GzipEncoder", Counting)
    a = client_for(tmp_path / "a")

    async def go() -> None:
        async with serving(make_app(Settings(tmp_path / "r1"))) as r1, \
                serving(make_app(Settings(tmp_path / "r2"))) as r2:
            image_id = add_image(a.images, f"{r1}/app:v1", sizes=(3000, 300_000))
            a.images.tag(image_id, f"{r2}/team/app:v1")
            d1 = await a.push(f"{r1}/app:v1")
            assert len(encoded) == 2
            d2 = await a.push(f"{r2}/team/app:v1")
            assert d1 == d2
            assert len(encoded) == 2

    asyncio.run(go())


def test_first_push_streams_the_layer_while_compressing_it(tmp_path):
    """An uncompressed layer never pushed goes up as one streamed PATCH (chunked, no
    Content-Range) while it is compressed, then a PUT with the digest; the compressed
    blob the registry got is the one the content store kept."""
    a = client_for(tmp_path / "a")
    seen: list[tuple[str, str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if "/blobs/uploads/" in request.path:
            seen.append((request.method, request.headers.get("Transfer-Encoding", ""),
                         request.headers.get("Content-Range", "")))
        return await handler(request)

    settings = Settings(tmp_path / "reg")
    app = make_app(settings)
    app.middlewares.append(record)

    async def go() -> None:
        async with serving(app) as reg:
            image_id = add_image(a.images, f"{reg}/app:v1", sizes=(3 * GZIP_PIECE,))
            progress = Recorder()
            await a.push(f"{reg}/app:v1", progress=progress)
            layer = a.images.get(image_id).layers[0]
            gz = json.loads((a.state.dir / "compressed.json").read_text())[layer.digest]
            assert settings.storage.blob_path(gz).read_bytes() == a.content.read(gz)
            layer_requests = seen[:3]
            assert [m for m, _, _ in layer_requests] == ["POST", "PATCH", "PUT"]
            assert layer_requests[1][1:] == ("chunked", "")
            ident = layer.diff_id[7:19]
            statuses = [m["status"] for m in progress.messages if m.get("id") == ident]
            assert statuses[0] == "Preparing" and statuses[-1] == "Pushed"
            assert "Pushing" in statuses

    asyncio.run(go())


def test_failed_streamed_upload_stores_nothing_half_done(tmp_path):
    """The registry refuses the streamed PATCH: the push fails instead of waiting on
    the compression thread, which stops or finishes a whole, verified blob."""
    a = client_for(tmp_path / "a")

    @web.middleware
    async def refuse(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "PATCH":
            await request.content.read(100_000)
            return web.json_response({"errors": [{"code": "DENIED", "message": "no"}]},
                                     status=403)
        return await handler(request)

    app = make_app(Settings(tmp_path / "reg"))
    app.middlewares.append(refuse)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(4 * GZIP_PIECE,))
            with pytest.raises(Exception, match="denied|no"):
                await asyncio.wait_for(a.push(f"{reg}/app:v1"), 30)
            # whatever compression finished is whole and verified; nothing else is left
            for raw, gz in a.state.compressed_all().items():
                assert gzip.decompress(a.content.read(gz)) == a.content.read(raw)
            assert list(a.content.tmp_dir.iterdir()) == []

    asyncio.run(go())


def test_pipe_producer_stops_when_the_reader_goes_away():
    """The compression thread blocked on a full pipe is released with an error once
    the uploader closes it (a refused upload must not leave a thread waiting)."""
    import threading

    from engine.registry.client import _Pipe

    async def go() -> None:
        pipe = _Pipe(asyncio.get_running_loop(), depth=2)
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for _ in range(10):
                    pipe.put(b"x")
            except RegistryError as exc:
                errors.append(exc)

        worker = threading.Thread(target=produce)
        worker.start()
        assert await pipe.get() == b"x"
        await asyncio.sleep(0.1)
        pipe.close()
        await asyncio.get_running_loop().run_in_executor(None, worker.join, 5)
        assert not worker.is_alive()
        assert errors and "stopped" in str(errors[0])

    asyncio.run(go())


def test_pull_unpacks_each_layer_after_its_download_and_reports_it(tmp_path):
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")

    async def go() -> None:
        async with serving(make_app(Settings(tmp_path / "reg"))) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000, 200_000, 50_000))
            await a.push(f"{reg}/app:v1")
            seen = Recorder()
            img = await b.pull(f"{reg}/app:v1", progress=seen)
            assert len(b.images.layers.list()) == 3
            assert [layer.chain_id for layer in img.layers] == \
                [layer.chain_id for layer in a.images.get(img.id).layers]
            for layer in img.layers:
                ident = layer.digest[7:19]
                statuses = [m["status"] for m in seen.messages if m.get("id") == ident]
                assert statuses[0] == "Pulling fs layer"
                assert statuses[-4:] == ["Verifying Checksum", "Download complete",
                                         "Extracting", "Pull complete"]
            assert not list(b.downloads.iterdir())

    asyncio.run(go())


def slow_blob(target: dict[str, Any]) -> Any:
    """Serve the blob ``target["digest"]`` in 16 pieces, 20 ms apart (``tamper``: with
    its last byte changed)."""

    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith(f"/blobs/{target.get('digest')}"):
            data = bytearray(target["data"])
            if target.get("tamper"):
                data[-1] ^= 0xFF
            resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await resp.prepare(request)
            step = -(-len(data) // 16)
            for i in range(0, len(data), step):
                await resp.write(bytes(data[i:i + step]))
                await asyncio.sleep(0.02)
            return resp
        return await handler(request)

    return mw


@pytest.mark.parametrize("tamper", [False, True], ids=["intact", "tampered"])
def test_layer_is_unpacked_from_its_download_as_it_arrives(tmp_path, monkeypatch, tamper):
    """The bottom layer, slow to come, is unpacked from the growing partial file while
    it downloads; a tampered blob still fails the pull (the blob's digest) and leaves
    nothing behind."""
    from engine.core.store.layers import LayerStore

    sources: list[str] = []
    real = LayerStore.register

    def register(self: LayerStore, src: Any, *args: Any, **kw: Any) -> Any:
        sources.append(type(src).__name__)
        return real(self, src, *args, **kw)

    monkeypatch.setattr(LayerStore, "register", register)
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings, app, target = registry_app(tmp_path, slow_blob, {"tamper": tamper})

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(3 * GZIP_PIECE, 5000))
            await a.push(f"{reg}/app:v1")
            sources.clear()
            bottom = pushed_layers(settings)[0]
            disturb(target, a, bottom)
            if tamper:
                with pytest.raises(RegistryError, match="failed verification"):
                    await b.pull(f"{reg}/app:v1")
                assert b.images.list() == [] and b.images.layers.list() == []
                assert not b.content.has(bottom["digest"])
            else:
                img = await b.pull(f"{reg}/app:v1")
                assert [layer.chain_id for layer in img.layers] == \
                    [layer.chain_id for layer in a.images.get(img.id).layers]
                assert b.content.read(bottom["digest"]) == target["data"]
            assert sources[0] == "_Follower"
            assert not list(b.downloads.iterdir())

    asyncio.run(go())


def test_transfers_leave_the_default_executor_to_the_rest_of_the_daemon(tmp_path,
                                                                        monkeypatch):
    """Downloads are stored, and uploads compressed, on stream threads of the client's
    own: with a single default executor thread a push of new layers completes, and a
    pull unpacks its bottom layer before that layer is even stored (the store's thread
    is not the executor's)."""
    import concurrent.futures

    from engine.core.store.layers import LayerStore

    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings, app, target = registry_app(tmp_path, slow_blob)
    stored_when_unpacked: list[bool] = []
    real = LayerStore.register

    def register(self: LayerStore, src: Any, *args: Any, **kw: Any) -> Any:
        if self is b.images.layers and target.get("digest"):
            stored_when_unpacked.append(b.content.has(target["digest"]))
        return real(self, src, *args, **kw)

    monkeypatch.setattr(LayerStore, "register", register)

    async def go() -> None:
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=1))
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(2 * GZIP_PIECE, 3000, 4000))
            await asyncio.wait_for(a.push(f"{reg}/app:v1"), 30)
            bottom = pushed_layers(settings)[0]
            disturb(target, a, bottom)
            img = await asyncio.wait_for(b.pull(f"{reg}/app:v1"), 30)
            assert len(img.layers) == 3
            assert stored_when_unpacked[0] is False

    asyncio.run(go())


def test_failed_pull_drops_the_layers_it_unpacked(tmp_path):
    """The top layer fails verification after the ones below were unpacked: the pull
    fails and leaves neither layers, blob of the bad layer nor an image behind."""
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings, app, target = registry_app(tmp_path)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(1000, 2000, 3000))
            await a.push(f"{reg}/app:v1")
            top = pushed_layers(settings)[-1]
            disturb(target, a, top, tamper=True)
            with pytest.raises(RegistryError, match="failed verification"):
                await b.pull(f"{reg}/app:v1")
            assert b.images.list() == []
            assert b.images.layers.list() == []
            assert not b.content.has(top["digest"])
            assert not list(b.downloads.iterdir())

    asyncio.run(go())


def test_complete_partial_download_is_stored_without_a_request(tmp_path):
    """A partial file that already holds the whole blob (the daemon died before storing
    it) is verified and stored; the registry is not asked for it again."""
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    settings, app, target = registry_app(tmp_path)

    async def go() -> None:
        async with serving(app) as reg:
            add_image(a.images, f"{reg}/app:v1", sizes=(100_000,))
            await a.push(f"{reg}/app:v1")
            layer = pushed_layers(settings)[0]
            disturb(target, a, layer)
            partial = b.downloads / (layer["digest"][7:] + ".partial")
            partial.write_bytes(a.content.read(layer["digest"]))
            await b.pull(f"{reg}/app:v1")
            assert "ranges" not in target
            assert b.content.read(layer["digest"]) == target["data"]
            assert not partial.exists()

    asyncio.run(go())
