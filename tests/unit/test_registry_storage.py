"""Registry server storage: uploads, verification, manifests, listings, referrers and gc."""

from __future__ import annotations

import hashlib
import json

import pytest
from engine.registry import spec
from engine.registry.storage import DistributionError, Storage


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(store: Storage, name: str, data: bytes) -> str:
    ident = store.start_upload(name)
    with store.append(name, ident) as f:
        f.write(data)
    store.finish_upload(name, ident, digest(data))
    return digest(data)


def manifest(config: str, layers: list[str], **extra) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": spec.MT_DOCKER_MANIFEST,
           "config": {"mediaType": spec.MT_DOCKER_CONFIG, "digest": config, "size": 2},
           "layers": [{"mediaType": spec.MT_DOCKER_LAYER_GZIP, "digest": d, "size": 1}
                      for d in layers], **extra}
    return json.dumps(doc).encode()


def code_of(excinfo: pytest.ExceptionInfo[DistributionError]) -> str:
    return excinfo.value.code


@pytest.fixture
def store(tmp_path) -> Storage:
    return Storage(tmp_path / "reg")


def test_upload_in_chunks_becomes_a_blob_of_the_repository(store):
    ident = store.start_upload("team/app")
    with store.append("team/app", ident, start=0) as f:
        f.write(b"hello ")
    assert store.upload_size("team/app", ident) == 6
    with store.append("team/app", ident, start=6) as f:
        f.write(b"world")
    store.finish_upload("team/app", ident, digest(b"hello world"))
    assert store.repo_blob("team/app", digest(b"hello world")).read_bytes() == b"hello world"
    # another repository may not read it without a mount
    with pytest.raises(DistributionError) as exc:
        store.repo_blob("other", digest(b"hello world"))
    assert code_of(exc) == "BLOB_UNKNOWN"
    assert not list((store.root / "uploads").iterdir())


def test_out_of_order_chunk_is_refused_with_416(store):
    ident = store.start_upload("app")
    with store.append("app", ident, start=0) as f:
        f.write(b"abc")
    with pytest.raises(DistributionError) as exc, store.append("app", ident, start=10):
        pass
    assert (exc.value.code, exc.value.status) == ("BLOB_UPLOAD_INVALID", 416)
    assert store.upload_size("app", ident) == 3


def test_digest_mismatch_stores_nothing(store):
    ident = store.start_upload("app")
    with store.append("app", ident) as f:
        f.write(b"tampered")
    with pytest.raises(DistributionError) as exc:
        store.finish_upload("app", ident, digest(b"original"))
    assert code_of(exc) == "DIGEST_INVALID"
    assert not store.has_blob(digest(b"tampered"))
    assert not store.has_blob(digest(b"original"))
    assert not list((store.root / "blobs" / "sha256").iterdir())
    with pytest.raises(DistributionError) as exc:
        store.upload_size("app", ident)
    assert code_of(exc) == "BLOB_UPLOAD_UNKNOWN"


def test_upload_belongs_to_its_repository(store):
    ident = store.start_upload("app")
    with pytest.raises(DistributionError) as exc:
        store.upload_size("other", ident)
    assert code_of(exc) == "BLOB_UPLOAD_UNKNOWN"
    with pytest.raises(DistributionError) as exc:
        store.upload_size("app", "../../etc")
    assert code_of(exc) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("name", ["../etc", "a/../b", "Upper", "a//b", "x" * 256, "-a", "a/"])
def test_invalid_names_are_refused(store, name):
    with pytest.raises(DistributionError) as exc:
        store.start_upload(name)
    assert code_of(exc) == "NAME_INVALID"
    assert not list((store.root / "repositories").iterdir())


def test_manifest_round_trip_by_tag_and_digest(store):
    cfg = upload(store, "app", b"{}")
    layer = upload(store, "app", b"layer")
    body = manifest(cfg, [layer])
    d = store.put_manifest("app", "v1", body, spec.MT_DOCKER_MANIFEST)
    assert d == digest(body)
    assert store.get_manifest("app", "v1") == (body, spec.MT_DOCKER_MANIFEST, d)
    assert store.get_manifest("app", d)[0] == body
    assert store.tags("app") == ["v1"]
    assert store.catalog() == ["app"]


def test_manifest_referring_to_a_missing_blob_is_refused(store):
    cfg = upload(store, "app", b"{}")
    missing = digest(b"never uploaded")
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", "v1", manifest(cfg, [missing]))
    assert code_of(exc) == "MANIFEST_BLOB_UNKNOWN"
    assert exc.value.detail == {"digest": missing}
    with pytest.raises(DistributionError):
        store.get_manifest("app", "v1")
    # a blob of another repository does not count either
    other = upload(store, "other", b"layer")
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", "v1", manifest(cfg, [other]))
    assert code_of(exc) == "MANIFEST_BLOB_UNKNOWN"


def test_manifest_errors(store):
    cfg = upload(store, "app", b"{}")
    body = manifest(cfg, [])
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", "bad tag!", body)
    assert code_of(exc) == "TAG_INVALID"
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", digest(b"something else"), body)
    assert code_of(exc) == "DIGEST_INVALID"
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", "v1", b"not json")
    assert code_of(exc) == "MANIFEST_INVALID"
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", "v1", body, spec.MT_OCI_MANIFEST)
    assert code_of(exc) == "MANIFEST_INVALID"  # mediaType differs from Content-Type
    huge = json.dumps({"schemaVersion": 2, "pad": "x" * spec.MANIFEST_LIMIT}).encode()
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("app", "v1", huge)
    assert (exc.value.code, exc.value.status) == ("SIZE_INVALID", 413)
    assert store.tags("app") == []


def test_index_needs_its_manifests_in_the_repository(store):
    cfg = upload(store, "app", b"{}")
    child = store.put_manifest("app", digest(manifest(cfg, [])), manifest(cfg, []))
    index = json.dumps({"schemaVersion": 2, "mediaType": spec.MT_OCI_INDEX, "manifests": [
        {"mediaType": spec.MT_DOCKER_MANIFEST, "digest": child, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    store.put_manifest("app", "multi", index)
    assert store.get_manifest("app", "multi")[1] == spec.MT_OCI_INDEX
    with pytest.raises(DistributionError) as exc:
        store.put_manifest("other", "multi", index)
    assert code_of(exc) == "MANIFEST_BLOB_UNKNOWN"


def test_referrers_list_manifests_with_a_subject(store):
    cfg = upload(store, "app", b"{}")
    subject = store.put_manifest("app", "v1", manifest(cfg, []))
    empty = upload(store, "app", b"{}")
    sig = json.dumps({
        "schemaVersion": 2, "mediaType": spec.MT_OCI_MANIFEST,
        "artifactType": "application/example.signature",
        "config": {"mediaType": spec.MT_OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [], "subject": {"mediaType": spec.MT_DOCKER_MANIFEST, "digest": subject,
                                  "size": 1},
        "annotations": {"who": "me"}}).encode()
    sig_digest = store.put_manifest("app", digest(sig), sig, spec.MT_OCI_MANIFEST)
    found = store.referrers("app", subject)
    assert found == [{"mediaType": spec.MT_OCI_MANIFEST, "digest": sig_digest,
                      "size": len(sig), "artifactType": "application/example.signature",
                      "annotations": {"who": "me"}}]
    assert store.referrers("app", subject, "application/other") == []
    store.delete_manifest("app", sig_digest)
    assert store.referrers("app", subject) == []


def test_mount_links_a_blob_from_another_repository(store):
    blob = upload(store, "src", b"shared")
    assert store.mount("dst", blob, "src")
    assert store.repo_blob("dst", blob).read_bytes() == b"shared"
    assert not store.mount("dst", digest(b"nope"), "src")


def test_delete_tag_and_manifest(store):
    cfg = upload(store, "app", b"{}")
    d = store.put_manifest("app", "v1", manifest(cfg, []))
    store.put_manifest("app", "v2", manifest(cfg, []))
    store.delete_manifest("app", "v1")
    assert store.tags("app") == ["v2"]
    store.delete_manifest("app", d)
    assert store.tags("app") == []
    with pytest.raises(DistributionError) as exc:
        store.get_manifest("app", d)
    assert code_of(exc) == "MANIFEST_UNKNOWN"


def test_gc_keeps_referenced_blobs_and_deletes_the_rest(store):
    cfg = upload(store, "app", b"{}")
    kept = upload(store, "app", b"kept layer")
    dropped = upload(store, "app", b"orphan layer")
    old = upload(store, "app", b"old layer")
    live = store.put_manifest("app", "v1", manifest(cfg, [kept]))
    gone = store.put_manifest("app", "old", manifest(cfg, [old]))
    store.delete_manifest("app", gone)
    assert set(store.gc(dry_run=True)) == {dropped, old, gone}
    assert store.has_blob(dropped)
    assert set(store.gc()) == {dropped, old, gone}
    for blob in (cfg, kept, live):
        assert store.has_blob(blob)
    for blob in (dropped, old, gone):
        assert not store.has_blob(blob)
    assert store.get_manifest("app", "v1")[2] == live


def test_gc_can_delete_untagged_manifests(store):
    cfg = upload(store, "app", b"{}")
    layer = upload(store, "app", b"layer one")
    untagged = store.put_manifest("app", "v1", manifest(cfg, [layer]))
    store.put_manifest("app", "v1", manifest(cfg, []))  # v1 moves on
    assert store.gc() == []  # untagged revisions are kept by default
    removed = store.gc(delete_untagged=True)
    assert set(removed) == {untagged, layer}
    assert store.tags("app") == ["v1"]


def test_purge_uploads_cancels_idle_ones(store):
    import os
    import time

    idle = store.start_upload("app")
    busy = store.start_upload("app")
    old = time.time() - 2 * 24 * 3600
    os.utime(store.root / "uploads" / idle / "data", (old, old))
    assert store.purge_uploads() == [idle]
    assert store.upload_size("app", busy) == 0
    with pytest.raises(DistributionError):
        store.upload_size("app", idle)
