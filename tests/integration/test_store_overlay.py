"""Overlay snapshots on the real kernel: merged views, whiteouts, changes and commit."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile

import pytest
from conftest import needs_root
from engine.core.store import transfer
from engine.core.store.content import ContentStore
from engine.core.store.images import ImageStore
from engine.core.store.layers import LayerStore

pytestmark = [pytest.mark.root, needs_root]


def layer_tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A layer from (name, data) pairs; data None makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    layers = LayerStore(tmp_path / "layers")
    assert layers.driver == "overlay"
    images = ImageStore(tmp_path / "images", ContentStore(tmp_path / "content"), layers)
    made: list[str] = []
    yield images, made
    for cid in made:
        layers.remove_rw(cid)


def test_two_layer_image_with_whiteouts_mounts_and_commits(tmp_path, store, busybox_tar):
    images, made = store
    with open(busybox_tar, "rb") as f:
        base = transfer.import_rootfs(images, f, repo_tag="bb:base")
    top = layer_tar(
        [
            ("etc/.wh.os-release", b""),
            ("srv", None),
            ("srv/.wh..wh..opq", b""),
            ("srv/index.html", b"<h1>hi</h1>"),
            ("etc/motd", b"welcome\n"),
        ]
    )
    blob = images.content.write(top)
    cfg = images.config(base)
    cfg["rootfs"]["diff_ids"].append(blob)
    img = images.create(
        json.dumps(cfg).encode(),
        [(base.layers[0].digest, base.layers[0].media_type), (blob, "tar")],
        parent=base.id,
    )
    images.layers.create_rw("c1", img.top_layer)
    made.append("c1")
    merged = images.layers.mount("c1")
    assert images.layers.mount("c1") == merged  # idempotent
    assert os.path.ismount(merged)
    assert not os.path.exists(f"{merged}/etc/os-release")
    assert open(f"{merged}/etc/motd").read() == "welcome\n"
    assert open(f"{merged}/srv/index.html").read() == "<h1>hi</h1>"
    assert os.path.exists(f"{merged}/etc/passwd") and os.path.islink(f"{merged}/bin/sh")
    assert os.path.isfile(f"{merged}/.dockerenv") and os.path.isdir(f"{merged}/dev/shm")
    image_etc = os.stat(images.layers.diff_path(img.top_layer) / "etc")
    merged_etc = os.stat(f"{merged}/etc")  # the init layer keeps the image's attributes
    assert (merged_etc.st_mode, merged_etc.st_mtime_ns) == (
        image_etc.st_mode,
        image_etc.st_mtime_ns,
    )

    # the container changes its root filesystem
    os.unlink(f"{merged}/etc/passwd")
    with open(f"{merged}/etc/group", "a") as f:
        f.write("extra:x:2000:\n")
    os.mkdir(f"{merged}/data")
    with open(f"{merged}/data/file", "w") as f:
        f.write("payload")
    changes = images.layers.changes("c1")
    assert changes == [
        ("/data", 1),
        ("/data/file", 1),
        ("/etc", 0),
        ("/etc/group", 0),
        ("/etc/passwd", 2),
    ]
    assert images.layers.size_rw("c1") == len("payload") + os.path.getsize(f"{merged}/etc/group")

    diff = tmp_path / "diff.tar"
    with open(diff, "wb") as f:
        images.layers.diff_tar("c1", f)
    with tarfile.open(diff) as tf:
        assert sorted(tf.getnames()) == ["data", "data/file", "etc", "etc/.wh.passwd", "etc/group"]
    new = transfer.commit(images, diff, img.id, {"Cmd": ["sh"]}, repo_tag="bb:committed")
    images.layers.unmount("c1")
    assert not os.path.ismount(merged)

    images.layers.create_rw("c2", new.top_layer)
    made.append("c2")
    view = images.layers.mount("c2")
    assert not os.path.exists(f"{view}/etc/passwd") and not os.path.exists(f"{view}/etc/os-release")
    assert open(f"{view}/data/file").read() == "payload"
    assert "extra:x:2000:" in open(f"{view}/etc/group").read()
    wh = os.lstat(images.layers.diff_path(new.top_layer) / "etc" / "passwd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0

    exported = io.BytesIO()
    images.layers.export("c1", exported)  # mounts and unmounts it again
    assert not images.layers.is_mounted("c1")
    exported.seek(0)
    with tarfile.open(fileobj=exported) as tf:
        names = set(tf.getnames())
    assert "data/file" in names and "etc/passwd" not in names and "srv/index.html" in names


def test_long_layer_chains_mount(tmp_path, store):
    images, made = store
    layers = images.layers
    parent = None
    for i in range(90):
        parent = layers.register(
            io.BytesIO(layer_tar([(f"f{i}", str(i).encode())])), parent
        ).chain_id
    layers.create_rw("long", parent, init=False)
    made.append("long")
    merged = layers.mount("long")
    assert sorted(os.listdir(merged)) == sorted(f"f{i}" for i in range(90))
    assert open(f"{merged}/f0").read() == "0"
    layers.unmount("long")
    assert not os.path.ismount(merged)


@needs_root
def test_overlay_probe_is_kept_per_kernel(tmp_path, monkeypatch):
    from engine.core.store import layers as layers_mod

    first = LayerStore(tmp_path / "root", "overlay")
    probe = json.loads((tmp_path / "root" / "overlay-probe.json").read_bytes())
    assert probe["kernel"] == os.uname().release
    assert probe["options"] == first._overlay_extra

    calls = []
    real = layers_mod.overlay_options
    monkeypatch.setattr(layers_mod, "overlay_options", lambda d: calls.append(d) or real(d))
    again = LayerStore(tmp_path / "root", "overlay")
    assert calls == [] and again._overlay_extra == first._overlay_extra
    # another kernel: probed again
    (tmp_path / "root" / "overlay-probe.json").write_text(
        json.dumps({"kernel": "0.0.0-other", "options": "bogus"}))
    third = LayerStore(tmp_path / "root", "overlay")
    assert len(calls) == 1 and third._overlay_extra == first._overlay_extra


def test_layers_unpacked_out_of_order_commit_in_order(tmp_path, store):
    """overlay: layers unpack on their own (any order, no parent) and become visible
    only when committed; the result is the chain ``register`` builds."""
    images, made = store
    layers = images.layers
    assert layers.unpacks_alone
    base = layer_tar([("etc", None), ("etc/os", b"base"), ("etc/keep", b"k")])
    top = layer_tar([("etc", None), ("etc/.wh.os", b""), ("app", b"app")])
    top_unpacked = layers.unpack(io.BytesIO(top))
    base_unpacked = layers.unpack(io.BytesIO(base))
    assert layers.list() == []  # nothing visible before commit
    with pytest.raises(Exception, match="not found"):
        layers.commit(layers.unpack(io.BytesIO(top)), "sha256:" + "0" * 64)
    first = layers.commit(base_unpacked, None)
    second = layers.commit(top_unpacked, first.chain_id)
    assert os.listdir(layers.root / "tmp") == []
    assert [layer.chain_id for layer in layers.ancestry(second.chain_id)] == [
        second.chain_id, first.chain_id]
    diff = layers.diff_path(second.chain_id)
    assert stat.S_ISCHR(os.lstat(diff / "etc" / "os").st_mode)  # an overlay whiteout
    layers.create_rw("ordered", second.chain_id, init=False)
    made.append("ordered")
    merged = layers.mount("ordered")
    assert sorted(os.listdir(f"{merged}/etc")) == ["keep"]
    assert open(f"{merged}/app").read() == "app"
    layers.unmount("ordered")
    # a wrong diff id is refused before anything is visible, and leaves no scratch
    with pytest.raises(Exception, match="diff id"):
        layers.unpack(io.BytesIO(base), diff_id="sha256:" + "1" * 64)
    assert os.listdir(layers.root / "tmp") == [] and len(layers.list()) == 2
