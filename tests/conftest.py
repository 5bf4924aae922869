"""Fixtures shared by every test layer.

The test image is built here from Debian's busybox-static: a rootfs with busybox and
its applets, /etc/passwd and /etc/group (root, nobody, and ``app`` uid 1000). No test
reaches the internet.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n"


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root and a real kernel")


def _applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split() if a and a != "busybox"]


def build_busybox_tar(path: Path) -> Path:
    """Write a rootfs tar of busybox to ``path`` (uncompressed) and return it."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    now = int(time.time())

    def add_dir(tf: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE
        ti.mode = mode
        ti.mtime = now
        tf.addfile(ti)

    def add_file(tf: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mode = mode
        ti.mtime = now
        tf.addfile(ti, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "dev", "proc", "sys", "root", "home", "home/app",
                  "var", "usr", "usr/bin", "run"):
            add_dir(tf, d, 0o700 if d == "root" else 0o755)
        add_dir(tf, "tmp", 0o1777)
        with open(BUSYBOX, "rb") as f:
            add_file(tf, "bin/busybox", f.read(), 0o755)
        for applet in _applets():
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "busybox"
            ti.mtime = now
            tf.addfile(ti)
        add_file(tf, "etc/passwd", PASSWD.encode())
        add_file(tf, "etc/group", GROUP.encode())
        add_file(tf, "etc/os-release", b'NAME="busybox"\nID=busybox\n')
    return path


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory) -> Path:
    """An uncompressed rootfs tar of busybox (bin/, etc/passwd, etc/group, tmp/)."""
    return build_busybox_tar(tmp_path_factory.mktemp("img") / "busybox.tar")


@pytest.fixture(scope="session")
def busybox_rootfs(busybox_tar, tmp_path_factory) -> Path:
    """The same rootfs unpacked into a directory (read-only use: copy it to modify)."""
    root = tmp_path_factory.mktemp("rootfs") / "busybox"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(busybox_tar), "-C", str(root)], check=True)
    return root
