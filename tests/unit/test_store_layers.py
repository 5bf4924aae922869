"""Layer store with the copying driver (no root needed): chain ids, reuse, references."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest
from engine.core.store.layers import LayerStore, chain_id
from engine.sdk.errors import Conflict, InvalidArgument, NotFound
from test_store_archive import entry, make_tar

BASE = make_tar([entry("etc/os", data=b"base"), entry("etc/keep", data=b"k")])
TOP = make_tar([entry("etc/.wh.os"), entry("app", data=b"app")])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def layers(tmp_path):
    return LayerStore(tmp_path / "layers", "vfs")


def test_chain_ids_follow_the_oci_rule():
    a, b = sha(b"a"), sha(b"b")
    assert chain_id(None, a) == a
    assert chain_id(a, b) == sha(f"{a} {b}".encode())
    with pytest.raises(InvalidArgument):
        chain_id(None, "nope")


def test_register_reuses_and_builds_full_copies(layers):
    base = layers.register(io.BytesIO(BASE), None)
    assert base.chain_id == base.diff_id == sha(BASE) and base.size == 5
    top = layers.register(io.BytesIO(TOP), base.chain_id)
    assert top.chain_id == chain_id(base.chain_id, sha(TOP)) and top.parent == base.chain_id
    assert layers.register(io.BytesIO(BASE), None) == base
    assert layers.register(io.BytesIO(b"not read"), None, diff_id=base.diff_id) == base
    root = layers.diff_path(top.chain_id)  # vfs: the layer dir is the whole rootfs
    assert sorted(os.listdir(root / "etc")) == ["keep"] and (root / "app").read_bytes() == b"app"
    assert [layer.chain_id for layer in layers.ancestry(top.chain_id)] == [
        top.chain_id,
        base.chain_id,
    ]
    with pytest.raises(InvalidArgument, match="diff id"):
        layers.register(io.BytesIO(TOP), None, diff_id=sha(b"other"))
    with pytest.raises(NotFound):
        layers.register(io.BytesIO(TOP), sha(b"missing parent"))


def test_failed_register_leaves_nothing(tmp_path, layers):
    with pytest.raises(InvalidArgument):
        layers.register(io.BytesIO(make_tar([entry("../evil", data=b"x")])), None)
    assert layers.list() == []
    assert os.listdir(tmp_path / "layers" / "tmp") == []
    assert os.listdir(tmp_path / "layers" / "layers") == []


def test_leftovers_are_cleaned_and_driver_is_recorded(tmp_path, layers):
    layers.register(io.BytesIO(BASE), None)
    (tmp_path / "layers" / "tmp" / "layer-half").mkdir()
    again = LayerStore(tmp_path / "layers")
    assert again.driver == "vfs" and len(again.list()) == 1
    assert os.listdir(tmp_path / "layers" / "tmp") == []
    if os.geteuid() == 0:
        with pytest.raises(InvalidArgument, match="created with driver 'vfs'"):
            LayerStore(tmp_path / "layers", "overlay")


def test_delete_and_release_respect_users(layers):
    base = layers.register(io.BytesIO(BASE), None)
    top = layers.register(io.BytesIO(TOP), base.chain_id)
    with pytest.raises(Conflict, match="in use by layer"):
        layers.delete(base.chain_id)
    layers.create_rw("c1", top.chain_id)
    with pytest.raises(Conflict, match="container c1"):
        layers.delete(top.chain_id)
    assert layers.release(top.chain_id) == []
    layers.remove_rw("c1")
    assert layers.release(top.chain_id, keep={base.chain_id}) == [top.chain_id]
    assert layers.release(base.chain_id) == [base.chain_id]
    assert layers.list() == []


def test_rw_layers(layers):
    base = layers.register(io.BytesIO(BASE), None)
    rootfs = layers.create_rw("c1", base.chain_id)
    assert layers.mount("c1") == rootfs == str(layers.rw_path("c1"))
    with pytest.raises(Conflict):
        layers.create_rw("c1", None)
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(InvalidArgument):
            layers.create_rw(bad, None)
    with open(f"{rootfs}/new", "w") as f:
        f.write("12345")
    os.unlink(f"{rootfs}/etc/os")
    assert layers.changes("c1") == [("/etc", 0), ("/etc/os", 2), ("/new", 1)]
    assert layers.size_rw("c1") == 5
    buf = io.BytesIO()
    layers.diff_tar("c1", buf)
    buf.seek(0)
    assert tarfile.open(fileobj=buf).getnames() == ["etc", "etc/.wh.os", "new"]
    buf = io.BytesIO()
    layers.export("c1", buf)
    buf.seek(0)
    names = set(tarfile.open(fileobj=buf).getnames())
    assert {"etc/keep", "new", ".dockerenv", "etc/hosts", "dev/shm"} <= names
    assert "etc/os" not in names
    empty = layers.create_rw("c2", None, init=False)
    assert os.listdir(empty) == []
    layers.remove_rw("c1")
    layers.remove_rw("c2")
    with pytest.raises(NotFound):
        layers.remove_rw("c1")


def test_init_layer_adds_only_what_the_image_lacks(layers):
    image = make_tar(
        [
            entry("etc", "dir", mode=0o750),
            entry("etc/hosts", data=b"127.0.0.1 image\n"),
            entry("dev", "sym", link="/somewhere"),
        ]
    )
    base = layers.register(io.BytesIO(image), None)
    before = os.stat(layers.diff_path(base.chain_id) / "etc")
    rootfs = layers.create_rw("c1", base.chain_id)
    with open(f"{rootfs}/etc/hosts") as f:
        assert f.read() == "127.0.0.1 image\n"  # never hidden
    assert os.path.isfile(f"{rootfs}/.dockerenv") and os.path.isfile(f"{rootfs}/etc/hostname")
    assert os.readlink(f"{rootfs}/etc/mtab") == "/proc/mounts"
    assert os.path.islink(f"{rootfs}/dev")  # nothing is created below a symlink
    after = os.stat(f"{rootfs}/etc")
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert layers.changes("c1") == []
    layers.remove_rw("c1")


def test_vfs_does_not_unpack_a_layer_without_its_parent(tmp_path, layers):
    assert not layers.unpacks_alone
    with pytest.raises(InvalidArgument, match="onto its parent"):
        layers.unpack(io.BytesIO(BASE))
    assert os.listdir(tmp_path / "layers" / "tmp") == []
