"""Import, commit, save and load; interoperability with docker-archive and skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
from engine.core.store import transfer
from engine.sdk.errors import InvalidArgument
from test_store_archive import entry, make_tar
from test_store_images import BASE, TOP, add_image, make_store


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive(files: dict[str, bytes | tuple[str, str]]) -> io.BytesIO:
    """A tar from {name: bytes} and {name: ("sym", target)}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, data[1]
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    return buf


def read_archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "a")


def test_save_load_round_trip(tmp_path, store):
    base = add_image(store, [BASE], compress=True)
    app = add_image(store, [BASE, TOP], compress=True)
    store.tag(base.id, "base:1")
    store.tag(app.id, "me/app:1")
    store.tag(app.id, "me/app:2")
    out = io.BytesIO()
    transfer.save(store, ["base:1", "me/app", base.id], out)
    files = read_archive(out.getvalue())
    manifest = json.loads(files["manifest.json"])
    assert [m["RepoTags"] for m in manifest] == [["base:1"], ["me/app:1", "me/app:2"]]
    for m in manifest:  # layers are uncompressed tars named by their diff ids
        config = json.loads(files[m["Config"]])
        assert [sha(files[p]) for p in m["Layers"]] == config["rootfs"]["diff_ids"]
    index = json.loads(files["index.json"])
    names = [d.get("annotations", {}).get("io.containerd.image.name") for d in index["manifests"]]
    assert names == ["docker.io/library/base:1", "docker.io/me/app:1", "docker.io/me/app:2"]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert sha(data) == "sha256:" + name.rsplit("/", 1)[1]

    other = make_store(tmp_path / "b")
    out.seek(0)
    lines = transfer.load(other, out)
    assert lines == ["Loaded image: base:1", "Loaded image: me/app:1", "Loaded image: me/app:2"]
    assert other.get("me/app:2").id == app.id
    assert [layer.diff_id for layer in other.get("base:1").layers] == [
        layer.diff_id for layer in base.layers
    ]
    # nothing but configs and layers stays in the content store
    assert len(other.content.list()) == 2 + 2


def docker_save_legacy() -> tuple[io.BytesIO, bytes]:
    """What docker save (before 25) writes: <id>/layer.tar, <id>/json, <config>.json."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2020-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(BASE), sha(TOP)]},
    }
    config_bytes = json.dumps(config).encode()
    l1, l2 = "a" * 64, "b" * 64
    files = {
        f"{l1}/VERSION": b"1.0",
        f"{l1}/json": b'{"id":"' + l1.encode() + b'"}',
        f"{l1}/layer.tar": BASE,
        f"{l2}/VERSION": b"1.0",
        f"{l2}/json": b'{"id":"' + l2.encode() + b'"}',
        "shared/layer.tar": TOP,
        f"{l2}/layer.tar": ("sym", "../shared/layer.tar"),
        f"{sha(config_bytes)[7:]}.json": config_bytes,
        "manifest.json": json.dumps(
            [
                {
                    "Config": f"{sha(config_bytes)[7:]}.json",
                    "RepoTags": ["old/style:v1"],
                    "Layers": [f"{l1}/layer.tar", f"{l2}/layer.tar"],
                }
            ]
        ).encode(),
        "repositories": json.dumps({"old/style": {"v1": l2}}).encode(),
    }
    return archive(files), config_bytes


def test_load_legacy_docker_save(store):
    stream, config = docker_save_legacy()
    assert transfer.load(store, stream) == ["Loaded image: old/style:v1"]
    img = store.get("old/style:v1")
    assert img.id == sha(config)
    assert img.size == 4 + 2 + 3
    assert store.config(img)["config"]["Cmd"] == ["/bin/sh"]


def oci_layout(index_annotations: dict, *, tamper: bool = False) -> io.BytesIO:
    layer = gzip.compress(BASE, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(BASE)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"digest": sha(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha(manifest),
                    "size": len(manifest),
                    "annotations": index_annotations,
                }
            ],
        }
    ).encode()
    return archive(
        {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": index,
            f"blobs/sha256/{sha(config)[7:]}": config,
            f"blobs/sha256/{sha(manifest)[7:]}": manifest,
            f"blobs/sha256/{sha(layer)[7:]}": layer + (b"!" if tamper else b""),
        }
    )


def test_load_oci_layout(store):
    lines = transfer.load(
        store,
        oci_layout(
            {
                "io.containerd.image.name": "docker.io/x/y:z",
                "org.opencontainers.image.ref.name": "z",
            }
        ),
    )
    assert lines == ["Loaded image: x/y:z"]
    lines = transfer.load(store, oci_layout({"org.opencontainers.image.ref.name": "latest"}))
    assert lines == [f"Loaded image ID: {store.get('x/y:z').id}"]


def hostile_archives():
    stream, config = docker_save_legacy()
    good = read_archive(stream.getvalue())
    evil = dict(good)
    evil["../escape"] = b"x"
    missing = dict(good)
    del missing["shared/layer.tar"]
    bad_layer = dict(good)
    bad_layer["a" * 64 + "/layer.tar"] = make_tar([entry("other", data=b"!")])
    bad_tag = dict(good)
    bad_tag["manifest.json"] = good["manifest.json"].replace(b"old/style:v1", b"Old/Style")
    link_out = dict(good)
    link_out["b" * 64 + "/layer.tar"] = ("sym", "../../../etc/passwd")
    return {
        "dotdot": archive(evil),
        "missing-layer": archive(missing),
        "layer-not-matching-diff-id": archive(bad_layer),
        "invalid-tag": archive(bad_tag),
        "symlink-out": archive(link_out),
        "oci-digest-mismatch": oci_layout({}, tamper=True),
        "not-an-archive": io.BytesIO(b"garbage" * 100),
        "no-manifest": archive({"hello": b"world"}),
        "malformed-manifest": archive(
            {"manifest.json": b'[{"Config": "c", "Layers": 5}]', "c": b"{}"}
        ),
        "malformed-index": archive({"index.json": b'{"manifests": [7]}'}),
    }


@pytest.mark.parametrize("case", sorted(hostile_archives()))
def test_hostile_archives_register_nothing(store, case):
    base = add_image(store, [BASE])  # shares a layer with the archive
    blobs_before = store.content.list()
    with pytest.raises(InvalidArgument):
        transfer.load(store, hostile_archives()[case])
    assert [i.id for i in store.list()] == [base.id]
    assert store.content.list() == blobs_before
    assert [layer.chain_id for layer in store.layers.list()] == [base.top_layer]


def test_apply_changes():
    cfg = transfer.apply_changes(
        {"Env": ["A=0", "PATH=/bin"]},
        [
            'CMD ["sh", "-c", "echo hi"]',
            "ENTRYPOINT /init --flag",
            'ENV A=1 B="x y"',
            "ENV LEGACY value with spaces",
            "EXPOSE 80 53/udp",
            "VOLUME /data /logs",
            "WORKDIR /srv",
            "USER app",
            'LABEL a=b c="d e"',
            "STOPSIGNAL SIGINT",
        ],
    )
    assert cfg["Cmd"] == ["sh", "-c", "echo hi"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c", "/init --flag"]
    assert cfg["Env"] == ["PATH=/bin", "A=1", "B=x y", "LEGACY=value with spaces"]
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}}
    assert (cfg["WorkingDir"], cfg["User"], cfg["StopSignal"]) == ("/srv", "app", "SIGINT")
    assert cfg["Labels"] == {"a": "b", "c": "d e"}
    with pytest.raises(InvalidArgument):
        transfer.apply_changes({}, ["RUN rm -rf /"])
    with pytest.raises(InvalidArgument):
        transfer.apply_changes({}, ["EXPOSE http"])


def test_import_and_commit(tmp_path, store, busybox_tar):
    with open(busybox_tar, "rb") as f:
        img = transfer.import_rootfs(
            store,
            io.BytesIO(gzip.compress(f.read(), 1)),
            repo_tag="bb:imported",
            changes=['CMD ["sh"]'],
            message="from a tar",
            platform="linux/amd64",
        )
    cfg = store.config(img)
    assert cfg["config"]["Cmd"] == ["sh"] and cfg["comment"] == "from a tar"
    assert cfg["rootfs"]["diff_ids"] == [sha(busybox_tar.read_bytes())]
    assert store.get("bb:imported").id == img.id
    # a container on it changes files (the vfs driver uses the copy in place)
    rootfs = store.layers.create_rw("c1", img.top_layer)
    with open(f"{rootfs}/etc/motd", "w") as f:
        f.write("hello\n")
    os.unlink(f"{rootfs}/etc/os-release")
    assert ("/etc/motd", 1) in store.layers.changes("c1")
    assert ("/etc/os-release", 2) in store.layers.changes("c1")
    diff = tmp_path / "diff.tar"
    with open(diff, "wb") as f:
        store.layers.diff_tar("c1", f)
    new = transfer.commit(
        store,
        diff,
        "bb:imported",
        {"Cmd": ["cat", "/etc/motd"]},
        repo_tag="bb:committed",
        author="me",
        comment="motd",
        changes=["ENV X=1"],
        container_id="c1",
    )
    cfg = store.config(new)
    assert new.parent == img.id and len(new.layers) == 2
    assert cfg["config"] == {"Cmd": ["cat", "/etc/motd"], "Env": ["X=1"]}
    assert cfg["author"] == "me" and cfg["history"][-1]["created_by"] == "cat /etc/motd"
    store.layers.create_rw("c2", new.top_layer)
    c2 = store.layers.mount("c2")
    with open(f"{c2}/etc/motd") as f:
        assert f.read() == "hello\n"
    assert not os.path.exists(f"{c2}/etc/os-release")
    assert store.history("bb:committed")[0]["Comment"] == "motd"
    assert store.history("bb:committed")[1]["Id"] == img.id


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_our_save_and_we_read_its_oci_archive(tmp_path, store, busybox_tar):
    with open(busybox_tar, "rb") as f:
        img = transfer.import_rootfs(store, f, repo_tag="busybox:latest")
    saved = tmp_path / "save.tar"
    with open(saved, "wb") as f:
        transfer.save(store, ["busybox"], f)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True)

    run("copy", f"docker-archive:{saved}", f"oci:{tmp_path / 'layout'}:latest")
    info = json.loads(run("inspect", f"oci:{tmp_path / 'layout'}:latest").stdout)
    assert info["Os"] == "linux"
    run("copy", f"docker-archive:{saved}", f"oci-archive:{tmp_path / 'oci.tar'}:busybox:oci")
    run("copy", f"docker-archive:{saved}", f"docker-archive:{tmp_path / 'dk.tar'}:busybox:dk")
    other = make_store(tmp_path / "b")
    with open(tmp_path / "oci.tar", "rb") as f:
        assert transfer.load(other, f) == ["Loaded image: busybox:oci"]
    with open(tmp_path / "dk.tar", "rb") as f:
        assert transfer.load(other, f) == ["Loaded image: busybox:dk"]
    for ref in ("busybox:oci", "busybox:dk"):
        assert [layer.diff_id for layer in other.get(ref).layers] == [
            layer.diff_id for layer in img.layers
        ]


def test_failed_import_leaves_nothing(store):
    hostile = make_tar([entry("ok", data=b"1"), entry("../../escape", data=b"2")])
    with pytest.raises(InvalidArgument, match="escape"):
        transfer.import_rootfs(store, io.BytesIO(hostile), repo_tag="evil:1")
    assert store.list() == [] and store.layers.list() == [] and store.content.list() == []
    with pytest.raises(InvalidArgument):
        transfer.import_rootfs(store, io.BytesIO(BASE), changes=["FROM scratch"])
    assert store.content.list() == []
