"""Image store: creation checks, lookups, and Docker's tag/untag/delete/prune rules."""

from __future__ import annotations

import gzip
import json

import pytest
from engine.core.store.content import ContentStore
from engine.core.store.images import ImageStore
from engine.core.store.layers import LayerStore
from engine.sdk.errors import Conflict, InvalidArgument, NotFound
from test_store_archive import entry, make_tar


def make_store(root, driver: str = "vfs") -> ImageStore:
    return ImageStore(
        root / "images", ContentStore(root / "content"), LayerStore(root / "layers", driver)
    )


def add_image(
    store: ImageStore,
    layers: list[bytes],
    *,
    history: list | None = None,
    created: str = "2024-01-02T03:04:05.123456789Z",
    parent: str = "",
    compress: bool = False,
    label: str = "",
):
    """Store layer tars as blobs and create an image from them."""
    import hashlib

    blobs, diff_ids = [], []
    for tar in layers:
        blob = gzip.compress(tar, mtime=0) if compress else tar
        blobs.append((store.content.write(blob), "application/vnd.oci.image.layer.v1.tar"))
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Cmd": ["sh"], "Labels": {"l": label} if label else None},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if history is not None:
        config["history"] = history
    return store.create(json.dumps(config).encode(), blobs, parent=parent)


BASE = make_tar([entry("etc/os", data=b"base"), entry("bin/sh", data=b"#!")])
TOP = make_tar([entry("etc/.wh.os"), entry("app", data=b"app")])


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path)


def test_create_reuses_layers_and_checks_diff_ids(store):
    a = add_image(store, [BASE], compress=True)
    b = add_image(store, [BASE, TOP])
    assert a.layers[0].chain_id == b.layers[0].chain_id
    assert len(store.layers.list()) == 2
    assert b.size == a.size + 3
    assert add_image(store, [BASE], compress=True).id == a.id  # same config: same image
    bad = {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    blob = store.content.write(BASE)
    with pytest.raises(InvalidArgument, match="diff id"):
        store.create(json.dumps(bad).encode(), [(blob, "tar")])
    with pytest.raises(InvalidArgument):
        store.create(json.dumps(bad).encode(), [])
    with pytest.raises(InvalidArgument):
        store.create(b"not json", [])
    assert len(store.list()) == 2 and len(store.layers.list()) == 2


def test_lookup_by_id_prefix_and_names(store):
    img = add_image(store, [BASE])
    hex_id = img.id[7:]
    store.tag(img.id, "busybox")
    store.tag(img.id, "registry.local:5000/team/app:v1")
    for ref in (
        img.id,
        hex_id,
        hex_id[:12],
        hex_id[:1],
        "sha256:" + hex_id[:5],
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "library/busybox",
        "registry.local:5000/team/app:v1",
    ):
        assert store.get(ref).id == img.id, ref
    assert store.get("busybox").repo_tags == ["busybox:latest", "registry.local:5000/team/app:v1"]
    with pytest.raises(NotFound, match="No such image: busybox:nope"):
        store.get("busybox:nope")
    with pytest.raises(InvalidArgument):
        store.get("BusyBox")
    with pytest.raises(InvalidArgument):
        store.tag(img.id, "bad..name")


def test_state_survives_reopen(tmp_path):
    store = make_store(tmp_path)
    img = add_image(store, [BASE, TOP])
    store.tag(img.id, "app:1")
    again = make_store(tmp_path)
    assert again.get("app:1").id == img.id
    assert again.get("app:1").layers == img.layers
    assert again.config(img)["os"] == "linux"


def test_delete_by_name_untags_then_deletes(store):
    img = add_image(store, [BASE, TOP])
    store.tag(img.id, "app:1")
    store.tag(img.id, "app:2")
    assert store.delete("app:1") == [{"Untagged": "app:1"}]
    out = store.delete("app:2")
    assert out[0] == {"Untagged": "app:2"} and out[1] == {"Deleted": img.id}
    assert {"Deleted": img.layers[1].chain_id} in out and {"Deleted": img.layers[0].chain_id} in out
    assert store.list() == [] and store.layers.list() == [] and store.content.list() == []


def test_delete_by_id_rules(store):
    img = add_image(store, [BASE])
    store.tag(img.id, "a")
    store.tag(img.id, "b")
    with pytest.raises(Conflict, match="multiple repositories"):
        store.delete(img.id[7:19])
    other = add_image(store, [TOP])
    store.tag(other.id, "same:1")
    store.tag(other.id, "same:2")
    out = store.delete(other.id)  # tags of one repository need no force
    assert out[:3] == [{"Untagged": "same:1"}, {"Untagged": "same:2"}, {"Deleted": other.id}]
    assert store.delete("a", in_use=lambda i: True) == [{"Untagged": "a:latest"}]
    assert store.get(img.id).repo_tags == ["b:latest"]
    with pytest.raises(Conflict, match="being used"):
        store.delete(img.id, in_use=lambda i: True)
    with pytest.raises(Conflict, match="must force"):
        store.delete("b", in_use=lambda i: i == img.id)
    out = store.delete(img.id, force=True, in_use=lambda i: True)
    assert out[:2] == [{"Untagged": "b:latest"}, {"Deleted": img.id}]
    with pytest.raises(NotFound):
        store.get(img.id)


def test_shared_layers_survive_deletion(store):
    base = add_image(store, [BASE])
    child = add_image(store, [BASE, TOP])
    store.delete(child.id)
    assert store.layers.exists(base.layers[0].chain_id)
    assert store.content.has(base.layers[0].digest)
    assert not store.layers.exists(child.layers[1].chain_id)


def test_parent_with_children_cannot_be_deleted(store):
    base = add_image(store, [BASE])
    store.tag(base.id, "base")
    child = add_image(store, [BASE, TOP], parent=base.id)
    with pytest.raises(Conflict, match="dependent child images"):
        store.delete(base.id)
    assert store.delete("base") == [{"Untagged": "base:latest"}]  # untagged, kept
    assert store.get(base.id).id == base.id
    store.delete(child.id)
    assert store.delete(base.id)[0] == {"Deleted": base.id}


def test_layer_in_use_by_container_is_kept(store):
    img = add_image(store, [BASE])
    store.layers.create_rw("c1", img.top_layer)
    store.delete(img.id, force=True)
    assert store.layers.exists(img.top_layer)
    store.layers.remove_rw("c1")
    store.layers.release(img.top_layer)
    assert store.layers.list() == []


def test_prune(store):
    dangling = add_image(store, [BASE], label="dangling")
    tagged = add_image(store, [BASE, TOP], label="tagged")
    used = add_image(store, [TOP], label="used")
    store.tag(tagged.id, "keep")
    report = store.prune(in_use=lambda i: i == used.id)
    assert report["ImagesDeleted"] == [{"Deleted": dangling.id}]
    assert report["SpaceReclaimed"] == 0  # its layer is shared with the tagged image
    report = store.prune(dangling_only=False, in_use=lambda i: i == used.id)
    assert {"Untagged": "keep:latest"} in report["ImagesDeleted"]
    assert report["SpaceReclaimed"] == tagged.size
    assert [i.id for i in store.list()] == [used.id]
    assert store.prune(in_use=lambda i: i == used.id) == {
        "ImagesDeleted": None,
        "SpaceReclaimed": 0,
    }


def test_inspect_and_history(store):
    history = [
        {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs"},
        {"created": "2024-01-01T00:00:01Z", "created_by": "ENV x=1", "empty_layer": True},
        {"created": "2024-01-02T03:04:05Z", "created_by": "RUN app", "comment": "c"},
    ]
    img = add_image(store, [BASE, TOP], history=history)
    store.tag(img.id, "app:1")
    info = store.inspect("app:1")
    assert info["Id"] == img.id and info["RepoTags"] == ["app:1"]
    assert info["Created"] == "2024-01-02T03:04:05.123456789Z"
    assert info["RootFS"] == {"Type": "layers", "Layers": [layer.diff_id for layer in img.layers]}
    assert info["Config"]["Cmd"] == ["sh"] and info["Os"] == "linux"
    assert info["Size"] == info["VirtualSize"] == img.size
    assert info["GraphDriver"]["Name"] == "vfs"
    assert info["Metadata"]["LastTagTime"] != "0001-01-01T00:00:00Z"
    for key in (
        "Parent",
        "Comment",
        "Container",
        "ContainerConfig",
        "DockerVersion",
        "Author",
        "Architecture",
    ):
        assert key in info
    hist = store.history("app:1")
    assert [h["CreatedBy"] for h in hist] == ["RUN app", "ENV x=1", "ADD rootfs"]
    assert hist[0]["Id"] == img.id and hist[0]["Tags"] == ["app:1"] and hist[0]["Size"] == 3
    assert hist[1]["Id"] == "<missing>" and hist[1]["Size"] == 0
    assert hist[2]["Created"] == 1704067200
    summary = store.summary(store.get("app:1"))
    assert summary["Created"] == 1704164645 and summary["RepoTags"] == ["app:1"]
