"""Layer extraction against hostile tars, compression detection, diff tars, changes."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import needs_root
from engine.core.store.archive import (
    CHANGE_ADDED,
    CHANGE_DELETED,
    CHANGE_MODIFIED,
    changes,
    extract_layer,
    naive_changes,
    tar_dir,
    write_changes_tar,
    write_diff_tar,
)
from engine.sdk.errors import InvalidArgument


def entry(
    name: str, kind: str = "file", data: bytes = b"", link: str = "", mode: int = 0o644, **extra
) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    ti.mtime = 1_600_000_000
    if kind == "file":
        ti.size = len(data)
        return ti, data
    ti.type = {
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "link": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
    }[kind]
    ti.linkname = link
    for k, v in extra.items():
        setattr(ti, k, v)
    return ti, None


def make_tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def snapshot(path: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def sandbox(tmp_path):
    """A destination dir inside a sandbox holding a bait file next to it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "bait").write_text("original")
    (tmp_path / "x").write_text("original")
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    return tmp_path, dest


HOSTILE = {
    "dotdot": [entry("../x", data=b"pwned")],
    "dotdot-inside": [entry("a/../../x", data=b"pwned")],
    "symlink-root-then-write": [entry("a", "sym", link="/"), entry("a/etc/passwd", data=b"pwned")],
    "symlink-relative-escape": [
        entry("a", "sym", link="../../outside"),
        entry("a/bait", data=b"pwned"),
    ],
    "symlink-chain-escape": [
        entry("b", "sym", link="../.."),
        entry("a", "sym", link="b"),
        entry("a/x", data=b"pwned"),
    ],
    "symlink-then-dir-below": [
        entry("a", "sym", link="../../outside"),
        entry("a/sub", "dir", mode=0o755),
    ],
    "hardlink-climbs-out": [entry("h", "link", link="../../x")],
    "hardlink-absolute-missing": [entry("h", "link", link="/etc/shadow-not-in-layer")],
    "hardlink-through-symlink": [
        entry("s", "sym", link="../../outside"),
        entry("h", "link", link="s/bait"),
    ],
    "whiteout-climbs-out": [entry("../.wh.x")],
    "whiteout-dotdot-name": [entry("dir/.wh...")],
    "long-component": [entry("a" * 300, data=b"x")],
    "file-below-file": [entry("f", data=b"x"), entry("f/g", data=b"y")],
}


@pytest.mark.parametrize("fmt", ["vfs", "overlay"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_rejected_and_nothing_written_outside(sandbox, case, fmt):
    tmp, dest = sandbox
    before = {k: v for k, v in snapshot(tmp).items() if not k.startswith(str(dest))}
    with pytest.raises(InvalidArgument) as exc:
        extract_layer(io.BytesIO(make_tar(HOSTILE[case])), dest, whiteout_format=fmt)
    assert "entry" in str(exc.value)
    after = {k: v for k, v in snapshot(tmp).items() if not k.startswith(str(dest))}
    assert after == before
    assert (tmp / "x").read_text() == "original"
    assert (tmp / "outside" / "bait").read_text() == "original"


def test_absolute_paths_are_stripped_into_dest(sandbox):
    tmp, dest = sandbox
    extract_layer(io.BytesIO(make_tar([entry("/etc/x", data=b"in")])), dest)
    assert (dest / "etc" / "x").read_bytes() == b"in"


def test_entry_replacing_symlink_does_not_write_through_it(sandbox):
    tmp, dest = sandbox
    tar = make_tar(
        [
            entry("a", "sym", link=str(tmp / "x")),
            entry("a", data=b"new"),
            entry("d", "sym", link=str(tmp / "outside")),
            entry("d", "dir", mode=0o755),
            entry("d/bait", data=b"inside"),
        ]
    )
    extract_layer(io.BytesIO(tar), dest, whiteout_format="vfs")
    assert (tmp / "x").read_text() == "original"
    assert (tmp / "outside" / "bait").read_text() == "original"
    assert not (dest / "a").is_symlink() and (dest / "a").read_bytes() == b"new"
    assert (dest / "d" / "bait").read_bytes() == b"inside"


def test_metadata_links_and_diff_id(sandbox):
    _, dest = sandbox
    tar = make_tar(
        [
            entry("bin", "dir", mode=0o755),
            entry("bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
            entry("bin/alias", "link", link="bin/tool"),
            entry("bin/sh", "sym", link="tool"),
            entry("run/pipe", "fifo", mode=0o600),
            entry("deep/" + "/".join(["d" * 200] * 30) + "/f", data=b"deep"),
        ]
    )
    stats = extract_layer(io.BytesIO(tar), dest)
    assert stats.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert stats.size == len(b"#!/bin/sh\n") + 4
    tool = os.lstat(dest / "bin" / "tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert tool.st_mtime == 1_600_000_000
    assert os.lstat(dest / "bin" / "alias").st_ino == tool.st_ino
    assert os.readlink(dest / "bin" / "sh") == "tool"
    assert stat.S_ISFIFO(os.lstat(dest / "run" / "pipe").st_mode)
    assert os.stat(dest / "bin").st_mtime == 1_600_000_000


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_layers_hash_the_uncompressed_stream(tmp_path, compress):
    tar = make_tar([entry("hello", data=b"world" * 1000)])
    if compress == "gzip":
        blob = gzip.compress(tar)
    else:
        blob = subprocess.run(
            ["zstd", "-c", "-q"], input=tar, capture_output=True, check=True
        ).stdout
    path = tmp_path / "layer"
    path.write_bytes(blob)
    dest = tmp_path / "d"
    dest.mkdir()
    stats = extract_layer(path, dest)
    assert stats.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert (dest / "hello").read_bytes() == b"world" * 1000


def test_garbage_is_rejected(tmp_path):
    with pytest.raises(InvalidArgument):
        extract_layer(io.BytesIO(b"\x1f\x8bnot really gzip" * 100), tmp_path)


def test_vfs_whiteouts_delete_lower_entries_only(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    extract_layer(
        io.BytesIO(
            make_tar(
                [
                    entry("etc/keep", data=b"k"),
                    entry("etc/gone", data=b"g"),
                    entry("opq/old", data=b"o"),
                    entry("file", data=b"f"),
                ]
            )
        ),
        dest,
        whiteout_format="vfs",
    )
    extract_layer(
        io.BytesIO(
            make_tar(
                [
                    entry("etc/.wh.gone"),
                    entry("opq/new", data=b"n"),
                    entry("opq/.wh..wh..opq"),
                    entry(".wh.file"),
                ]
            )
        ),
        dest,
        whiteout_format="vfs",
    )
    assert sorted(os.listdir(dest / "etc")) == ["keep"]
    assert sorted(os.listdir(dest / "opq")) == ["new"]
    assert not (dest / "file").exists()


def test_tar_dir_is_deterministic_and_round_trips(tmp_path, busybox_rootfs):
    a, b = io.BytesIO(), io.BytesIO()
    tar_dir(busybox_rootfs, a)
    tar_dir(busybox_rootfs, b)
    assert a.getvalue() == b.getvalue()
    dest = tmp_path / "copy"
    dest.mkdir()
    extract_layer(io.BytesIO(a.getvalue()), dest)
    assert (dest / "bin" / "busybox").read_bytes() == (
        busybox_rootfs / "bin" / "busybox"
    ).read_bytes()
    assert os.readlink(dest / "bin" / "sh") == "busybox"


def test_naive_changes_and_changes_tar(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        (d / "etc").mkdir(parents=True)
        (d / "etc" / "same").write_text("s")
        os.utime(d / "etc" / "same", (1, 1))
        (d / "etc" / "edit").write_text("v1")
        os.utime(d / "etc" / "edit", (1, 1))
        os.utime(d / "etc", (1, 1))
    (old / "gone").write_text("g")
    (new / "etc" / "edit").write_text("v2!")
    (new / "added").write_text("a")
    found = naive_changes(old, new)
    # rewriting a file leaves its directory's mtime alone: /etc itself is unchanged
    assert found == [
        ("/added", CHANGE_ADDED),
        ("/etc/edit", CHANGE_MODIFIED),
        ("/gone", CHANGE_DELETED),
    ]
    buf = io.BytesIO()
    write_changes_tar(new, found, buf)
    buf.seek(0)
    names = tarfile.open(fileobj=buf).getnames()
    assert names == ["added", "etc/edit", ".wh.gone"]


@needs_root
@pytest.mark.root
def test_overlay_whiteouts_and_diff_tar_round_trip(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    extract_layer(
        io.BytesIO(
            make_tar(
                [
                    entry("etc/.wh.gone"),
                    entry("opq/.wh..wh..opq"),
                    entry("opq/new", data=b"n"),
                    entry("dev/null", "chr", mode=0o666, devmajor=1, devminor=3),
                ]
            )
        ),
        dest,
    )
    wh = os.lstat(dest / "etc" / "gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(dest / "opq", "trusted.overlay.opaque") == b"y"
    assert os.lstat(dest / "dev" / "null").st_rdev == os.makedev(1, 3)
    buf = io.BytesIO()
    write_diff_tar(dest, buf)
    buf.seek(0)
    names = tarfile.open(fileobj=buf).getnames()
    assert "etc/.wh.gone" in names and "opq/.wh..wh..opq" in names and "opq/new" in names
    assert changes(dest, []) == [
        ("/dev", CHANGE_ADDED),
        ("/dev/null", CHANGE_ADDED),
        ("/etc", CHANGE_ADDED),
        ("/etc/gone", CHANGE_DELETED),
        ("/opq", CHANGE_ADDED),
        ("/opq/new", CHANGE_ADDED),
    ]


def test_pax_xattrs_are_applied_but_overlay_ones_dropped(tmp_path):
    ti, data = entry("f", data=b"x")
    ti.pax_headers = {
        "SCHILY.xattr.user.origin": "layer",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    }
    dest = tmp_path / "d"
    dest.mkdir()
    try:
        os.setxattr(tmp_path, "user.probe", b"1")
    except OSError:
        pytest.skip("the test filesystem has no user xattrs")
    extract_layer(io.BytesIO(make_tar([(ti, data)])), dest)
    assert os.getxattr(dest / "f", "user.origin") == b"layer"
    assert not [x for x in os.listxattr(dest / "f") if x.startswith("trusted.")]
    buf = io.BytesIO()
    tar_dir(dest, buf)
    buf.seek(0)
    member = tarfile.open(fileobj=buf).getmember("f")
    assert member.pax_headers.get("SCHILY.xattr.user.origin") == "layer"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_large_files_across_read_pieces_long_names_and_trailing_bytes(tmp_path, fmt):
    """Content is copied from the decoded megabyte pieces straight into the files:
    files that start and end at odd offsets across many pieces, long names (PAX or
    GNU records between them), and bytes after the end-of-archive blocks all land
    where they should and count in the diff id."""
    big = os.urandom((1 << 20) * 3 + 777)
    entries = [
        entry("a", data=b"x" * 513),
        entry("long/" + "n" * 180 + "/big", data=big),
        entry("small", data=b"s"),
        entry("edge", data=big[: 1 << 20]),
        entry("empty", data=b""),
    ]
    tar = make_tar(entries, fmt) + b"\0" * 4096
    for blob in (tar, gzip.compress(tar, compresslevel=1)):
        dest = tmp_path / f"d{len(blob)}"
        dest.mkdir()
        stats = extract_layer(io.BytesIO(blob), dest)
        assert stats.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert (dest / "long" / ("n" * 180) / "big").read_bytes() == big
        assert (dest / "edge").read_bytes() == big[: 1 << 20]
        assert (dest / "a").read_bytes() == b"x" * 513
        assert (dest / "small").read_bytes() == b"s"
        assert (dest / "empty").read_bytes() == b""
        assert stats.size == 513 + len(big) + 1 + (1 << 20)


def test_a_file_cut_short_is_refused(tmp_path):
    tar = make_tar([entry("f", data=os.urandom(3 << 20))])
    for blob in (tar[: 2 << 20], gzip.compress(tar[: 2 << 20])):
        dest = tmp_path / f"d{len(blob)}"
        dest.mkdir()
        with pytest.raises(InvalidArgument, match="'f'|invalid"):
            extract_layer(io.BytesIO(blob), dest)


def test_gnu_sparse_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"middle")
        f.seek(9 << 20)
        f.write(b"end")
    tar_path = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(tar_path), "-C", str(src),
                    "sparse"], check=True)
    with tarfile.open(tar_path) as tf:
        if not tf.getmember("sparse").issparse():
            pytest.skip("tar wrote no sparse entry here")
    dest = tmp_path / "d"
    dest.mkdir()
    stats = extract_layer(tar_path, dest)
    assert stats.diff_id == "sha256:" + hashlib.sha256(tar_path.read_bytes()).hexdigest()
    data = (dest / "sparse").read_bytes()
    assert data == (src / "sparse").read_bytes()
