"""Assemble the managed plugin's directory from this machine: ``config.json`` and a
``rootfs/`` with the host's Python (the binary, the shared libraries ``ldd`` lists and
only the standard library modules the plugin imports, with their own libraries: a few
MB) and the plugin script.

    python build_rootfs.py OUT_DIR          # then: engine plugin create NAME OUT_DIR

busybox alone cannot serve HTTP on a unix socket, hence a Python; a real plugin would
build its rootfs from an image (``docker export``), which is what Docker's
``plugin create`` expects too.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3.11"

# run by the target Python: import the plugin without starting it, list what loaded
_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("plugin_probe", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import encodings.latin_1, encodings.utf_8, encodings.ascii
files = sorted({m.__file__ for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and m.__name__ != "plugin_probe"})
print(json.dumps({"files": files, "prefix": sys.prefix}))
"""


def _libraries(binary: str) -> list[str]:
    """The shared objects ``binary`` loads, as ``ldd`` lists them (the loader too)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def _copy(src: str, rootfs: Path) -> None:
    """``src`` (symbolic links followed) to the same path inside ``rootfs``."""
    target = rootfs / src.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def add_binary(rootfs: Path, binary: str) -> None:
    """A dynamically linked program and the shared libraries it loads, at their
    host paths inside ``rootfs``."""
    _copy(binary, rootfs)
    for lib in _libraries(binary):
        _copy(lib, rootfs)


def build(out: str | os.PathLike[str], python: str = PYTHON,
          script: str | os.PathLike[str] = HERE / "plugin" / "volume.py",
          config: str | os.PathLike[str] = HERE / "config.json") -> Path:
    """Write ``out/config.json`` and ``out/rootfs/`` (with ``script`` as
    ``/plugin/<its name>`` and the modules it imports); return ``out``."""
    out = Path(out)
    rootfs = out / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    shutil.copy2(config, out / "config.json")
    target = rootfs / "plugin" / Path(script).name
    target.parent.mkdir(parents=True)
    shutil.copy2(script, target)
    add_binary(rootfs, python)
    probe = subprocess.run([python, "-I", "-S", "-c", _PROBE, str(target)],
                           capture_output=True, text=True, check=True)
    found = json.loads(probe.stdout)
    for f in found["files"]:
        _copy(f, rootfs)
        if f.endswith(".so"):  # an extension module's own libraries (libffi for ctypes)
            for lib in _libraries(f):
                _copy(lib, rootfs)
    # the whole encodings package: codecs are looked up by name at run time
    enc = Path(found["prefix"], "lib", Path(python).name, "encodings")
    if enc.is_dir():
        for f in enc.glob("*.py"):
            _copy(str(f), rootfs)
    for d in ("run/docker/plugins", "data/volumes", "tmp", "proc", "dev", "sys", "etc"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    print(build(sys.argv[1]))
