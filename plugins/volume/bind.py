"""The ``bind`` volume driver (``-v /host/path:/ctr``) and the ``local`` named-volume
driver (``-v data:/ctr``, ``docker volume create``).

A bind "volume" is named by its host path; mounting it just hands the path back, after
checking it. Named local volumes are directories under the driver's state directory,
with their metadata written atomically beside them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from engine.sdk import hookimpl
from engine.sdk.drivers import VolumeDriver, VolumeInfo
from engine.sdk.errors import Conflict, InvalidArgument, NotFound

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class BindDriver(VolumeDriver):
    """Host paths. ``create`` option ``create_host_path=true`` makes a missing
    directory, as ``-v`` does; ``--mount type=bind`` leaves it off and errors."""

    name = "bind"

    async def create(self, name: str, options: dict[str, str], labels: dict[str, str]) -> VolumeInfo:
        if not os.path.isabs(name):
            raise InvalidArgument(f"bind source path must be absolute: {name!r}")
        if not os.path.exists(name):
            if options.get("create_host_path") == "true":
                os.makedirs(name, exist_ok=True)
            else:
                raise InvalidArgument(f"invalid mount config for type \"bind\": "
                                      f"bind source path does not exist: {name}")
        return VolumeInfo(name=name, mountpoint=name)

    async def remove(self, name: str) -> None:
        """Bind sources belong to the host: never deleted."""

    async def get(self, name: str) -> VolumeInfo:
        if not os.path.exists(name):
            raise NotFound(f"bind source path does not exist: {name}")
        return VolumeInfo(name=name, mountpoint=name)

    async def list(self) -> list[VolumeInfo]:
        return []

    async def mount(self, name: str, mount_id: str) -> str:
        return (await self.get(name)).mountpoint

    async def unmount(self, name: str, mount_id: str) -> None:
        pass


class LocalDriver(VolumeDriver):
    """Named volumes in ``<state_dir>/<name>/_data``."""

    name = "local"

    def _dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise InvalidArgument(
                f"create {name}: \"{name}\" includes invalid characters for a local volume "
                "name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to "
                "pass a host directory, use absolute path")
        return self.ctx.path(name)

    def _info(self, name: str) -> VolumeInfo:
        d = self._dir(name)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"get {name}: no such volume") from None
        return VolumeInfo(name=name, mountpoint=str(d / "_data"),
                          created_at=meta.get("created_at", ""),
                          options=meta.get("options", {}), labels=meta.get("labels", {}))

    async def create(self, name: str, options: dict[str, str], labels: dict[str, str]) -> VolumeInfo:
        d = self._dir(name)
        if (d / "meta.json").exists():
            return self._info(name)
        for key in options:
            if key not in ("type", "device", "o", "size"):
                raise InvalidArgument(f"invalid option key: {key!r}")
        if options:
            raise InvalidArgument("local volume options (type, device, o) are not supported yet")
        (d / "_data").mkdir(parents=True, exist_ok=True)
        tmp = d / ".meta.json.tmp"
        tmp.write_text(json.dumps({"created_at": _now(), "options": options, "labels": labels}))
        os.replace(tmp, d / "meta.json")
        return self._info(name)

    async def remove(self, name: str) -> None:
        d = self._dir(name)
        if not (d / "meta.json").exists():
            raise NotFound(f"get {name}: no such volume")
        (d / "meta.json").unlink()
        shutil.rmtree(d, ignore_errors=True)

    async def get(self, name: str) -> VolumeInfo:
        return self._info(name)

    async def list(self) -> list[VolumeInfo]:
        root = Path(self.ctx.state_dir)
        out = []
        for d in sorted(root.iterdir()) if root.exists() else []:
            if (d / "meta.json").exists():
                out.append(self._info(d.name))
        return out

    async def mount(self, name: str, mount_id: str) -> str:
        return self._info(name).mountpoint

    async def unmount(self, name: str, mount_id: str) -> None:
        pass


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_volume_driver(BindDriver)
    registrar.add_volume_driver(LocalDriver)
