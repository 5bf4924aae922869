#!/usr/bin/env python3
"""Write a busybox rootfs tar, built from Debian's busybox-static, to a file or stdout.

    python3 scripts/busybox_rootfs.py | engine import -c 'CMD ["sh"]' - busybox

This is how an offline machine gets its first image; the test suite builds the same
image (tests/conftest.py). Standard library only.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n"


def find_busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        raise FileNotFoundError("busybox-static is not installed (apt-get install busybox-static)")
    return path


def build_busybox_tar(path: Path) -> Path:
    """Write an uncompressed rootfs tar of busybox to ``path`` and return it: bin/ with
    every applet, /etc/passwd and /etc/group (root, app uid 1000, nobody), tmp/."""
    busybox = find_busybox()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    now = int(time.time())

    def add(tf: tarfile.TarFile, name: str, *, kind=tarfile.REGTYPE, mode=0o644,
            data: bytes = b"", link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, now
        ti.linkname = link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "dev", "proc", "sys", "root", "home", "home/app", "var",
                  "usr", "usr/bin", "run"):
            add(tf, d, kind=tarfile.DIRTYPE, mode=0o700 if d == "root" else 0o755)
        add(tf, "tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        with open(busybox, "rb") as f:
            add(tf, "bin/busybox", mode=0o755, data=f.read())
        for applet in applets:
            if applet != "busybox":
                add(tf, f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
        add(tf, "etc/passwd", data=PASSWD.encode())
        add(tf, "etc/group", data=GROUP.encode())
        add(tf, "etc/os-release", data=b'NAME="busybox"\nID=busybox\n')
    return path


def main() -> int:
    if len(sys.argv) > 1:
        build_busybox_tar(Path(sys.argv[1]))
        return 0
    with tempfile.TemporaryDirectory() as d:
        p = build_busybox_tar(Path(d) / "busybox.tar")
        with open(p, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
