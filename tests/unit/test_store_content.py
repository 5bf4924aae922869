"""Content store: digests verified before blobs become visible, crash safety."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from engine.core.store.content import ContentStore
from engine.sdk.errors import InvalidArgument, NotFound


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_read_list_delete(tmp_path):
    store = ContentStore(tmp_path)
    d = store.write(b"hello")
    assert d == digest(b"hello")
    assert store.has(d) and store.read(d) == b"hello" and store.size(d) == 5
    assert store.path(d) == tmp_path / "blobs" / "sha256" / d[7:]
    assert store.write(b"hello", expected=d) == d  # idempotent
    assert store.list() == [d]
    store.delete(d)
    assert not store.has(d) and store.list() == []
    with pytest.raises(NotFound):
        store.read(d)
    with pytest.raises(NotFound):
        store.delete(d)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:abc",
        "md5:" + "a" * 32,
        "sha256:" + "A" * 64,
        "sha256:../../etc/passwd",
        "a" * 64,
    ],
)
def test_bad_digests_are_invalid(tmp_path, bad):
    store = ContentStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.has(bad)
    with pytest.raises(InvalidArgument):
        store.write(b"x", expected=bad)


def test_mismatch_stores_nothing(tmp_path):
    store = ContentStore(tmp_path)
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        store.write(b"evil", expected=digest(b"good"))
    with pytest.raises(InvalidArgument, match="short blob"):
        store.ingest(io.BytesIO(b"abc"), size=10)
    assert store.list() == []
    assert os.listdir(tmp_path / "tmp") == []


def test_ingest_streams_exactly_size_bytes(tmp_path):
    store = ContentStore(tmp_path)
    src = io.BytesIO(b"A" * 3_000_000 + b"rest")
    d, n = store.ingest(src, size=3_000_000)
    assert n == 3_000_000 and d == digest(b"A" * 3_000_000)
    assert src.read() == b"rest"


INGEST_FOREVER = """
import sys
from engine.core.store.content import ContentStore
ContentStore(sys.argv[1]).ingest(sys.stdin.buffer)
"""


def test_kill_during_ingest_leaves_no_visible_blob(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", INGEST_FOREVER, str(tmp_path)], stdin=subprocess.PIPE
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"x" * (4 << 20))
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tmp = tmp_path / "tmp"
            if tmp.exists() and any(p.stat().st_size > 0 for p in tmp.iterdir()):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the ingest never started writing")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []
    assert os.listdir(tmp_path / "tmp") != []  # the partial write is there...
    store = ContentStore(tmp_path)
    assert store.list() == []
    assert os.listdir(tmp_path / "tmp") == []  # ...and reopening the store removes it


def test_adopt_moves_a_verified_file_in_by_rename(tmp_path):
    store = ContentStore(tmp_path / "store")
    src = tmp_path / "download.partial"
    src.write_bytes(b"layer bytes")
    inode = src.stat().st_ino
    d = digest(b"layer bytes")
    assert store.adopt(src, d) == d
    assert not src.exists()
    assert store.read(d) == b"layer bytes"
    assert store.path(d).stat().st_ino == inode  # renamed, not copied
    assert store.path(d).stat().st_mode & 0o777 == 0o644
    # already there: the new file is dropped, the blob kept
    src.write_bytes(b"layer bytes")
    assert store.adopt(src, d, hashed=d) == d
    assert not src.exists() and store.read(d) == b"layer bytes"


def test_adopt_refuses_a_mismatch_and_leaves_the_file(tmp_path):
    store = ContentStore(tmp_path / "store")
    src = tmp_path / "download.partial"
    src.write_bytes(b"tampered")
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        store.adopt(src, digest(b"original"))
    # the caller's own hash of what it wrote is checked against the expected digest too
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        store.adopt(src, digest(b"original"), hashed=digest(b"tampered"))
    assert src.read_bytes() == b"tampered"
    assert store.list() == []
