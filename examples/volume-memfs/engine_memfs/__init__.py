"""The ``memfs`` volume driver: volumes kept in memory.

Each volume is a directory under a memory-backed root (``/dev/shm/engine-memfs`` by
default, driver option ``root``), so its data is gone after a reboot while its
metadata, kept in the driver's state directory, is not: a volume whose data vanished
comes back empty. Mounts are counted per mount id and reported in the volume's
status; a mounted volume cannot be removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from engine.sdk import hookimpl
from engine.sdk.drivers import VolumeDriver, VolumeInfo
from engine.sdk.errors import Conflict, InvalidArgument, NotFound

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
OPTIONS = {"size"}


class MemfsDriver(VolumeDriver):
    """Named volumes under a tmpfs directory, metadata in the state directory."""

    name = "memfs"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        default = Path("/dev/shm/engine-memfs",
                       hashlib.sha256(ctx.state_dir.encode()).hexdigest()[:12])
        self.root = Path(ctx.options.get("root") or default)
        self.mounts: dict[str, set[str]] = {}

    def _check(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise InvalidArgument(f"invalid memfs volume name {name!r}: only "
                                  "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")

    def _meta(self, name: str) -> Path:
        self._check(name)
        return self.ctx.path(f"{name}.json")

    def _info(self, name: str) -> VolumeInfo:
        try:
            meta = json.loads(self._meta(name).read_text())
        except FileNotFoundError:
            raise NotFound(f"memfs volume {name} not found") from None
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)  # data is gone after a reboot
        return VolumeInfo(name=name, mountpoint=str(data), created_at=meta["created_at"],
                          options=meta["options"], labels=meta["labels"],
                          status={"mounts": len(self.mounts.get(name, ()))})

    async def create(self, name: str, options: dict[str, str],
                     labels: dict[str, str]) -> VolumeInfo:
        meta = self._meta(name)
        if meta.exists():
            return self._info(name)
        unknown = set(options) - OPTIONS
        if unknown:
            raise InvalidArgument(f"unknown memfs option {sorted(unknown)[0]!r}")
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()),
                                   "options": options, "labels": labels}))
        os.replace(tmp, meta)
        return self._info(name)

    async def remove(self, name: str) -> None:
        meta = self._meta(name)
        if not meta.exists():
            raise NotFound(f"memfs volume {name} not found")
        if self.mounts.get(name):
            raise Conflict(f"memfs volume {name} is mounted by "
                           f"{', '.join(sorted(self.mounts[name]))}")
        meta.unlink()
        shutil.rmtree(self.root / name, ignore_errors=True)
        try:  # the last volume gone: leave nothing behind in /dev/shm
            self.root.rmdir()
        except OSError:
            pass

    async def get(self, name: str) -> VolumeInfo:
        return self._info(name)

    async def list(self) -> list[VolumeInfo]:
        state = Path(self.ctx.state_dir)
        names = sorted(p.stem for p in state.glob("*.json")) if state.exists() else []
        return [self._info(n) for n in names]

    async def mount(self, name: str, mount_id: str) -> str:
        info = self._info(name)
        self.mounts.setdefault(name, set()).add(mount_id)
        return info.mountpoint

    async def unmount(self, name: str, mount_id: str) -> None:
        ids = self.mounts.get(name)
        if ids is not None:
            ids.discard(mount_id)
            if not ids:
                del self.mounts[name]


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_volume_driver(MemfsDriver)
