#!/usr/bin/env python3
"""Write a busybox rootfs tar (from Debian's busybox-static) to stdout or a file.

    python3 scripts/busybox-rootfs.py | engine import - busybox

This is how an offline machine gets its first image; the test suite builds the same
image (tests/conftest.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import build_busybox_tar  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if out is None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = build_busybox_tar(Path(d) / "busybox.tar")
            sys.stdout.buffer.write(p.read_bytes())
    else:
        build_busybox_tar(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
