"""The ``bind`` volume driver (``-v /host/path:/ctr``) and the ``local`` named-volume
driver (``-v data:/ctr``, ``docker volume create``).

A bind "volume" is named by its host path; mounting it just hands the path back, after
checking it. Named local volumes are directories under the driver's state directory,
with their metadata written atomically beside them; a local volume created with
``type``/``device``/``o`` options gets that filesystem mounted on its directory while
it is in use (see :mod:`.localopts`).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from engine.sdk import hookimpl
from engine.sdk.drivers import DriverContext, VolumeDriver, VolumeInfo
from engine.sdk.errors import Conflict, DriverError, InvalidArgument, NotFound
from engine.sdk.files import atomic_write

from .localopts import is_mounted, mount_volume, parse_options, unmount_volume

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
    """Named volumes in ``<state_dir>/<name>/_data``.

    A volume created with options (:mod:`.localopts`) has its filesystem mounted on
    ``_data`` when the first container mounts the volume and unmounted when the last
    one lets go, as Docker's local driver does. Which mount ids hold each such volume
    is written to ``mounts.json`` beside its metadata, so a restarted daemon still
    unmounts when the containers that outlived it exit. ``remove`` unmounts first and
    never deletes anything while a filesystem is still mounted there (a bind's host
    directory must survive the volume).
    """

    name = "local"

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self._locks: dict[str, asyncio.Lock] = {}

    def _dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise InvalidArgument(
                f"create {name}: \"{name}\" includes invalid characters for a local volume "
                "name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to "
                "pass a host directory, use absolute path")
        return self.ctx.path(name)

    def _meta(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self._dir(name) / "meta.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"get {name}: no such volume") from None

    def _info(self, name: str) -> VolumeInfo:
        meta = self._meta(name)
        return VolumeInfo(name=name, mountpoint=str(self._dir(name) / "_data"),
                          created_at=meta.get("created_at", ""),
                          options=meta.get("options", {}), labels=meta.get("labels", {}))

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    @staticmethod
    async def _run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _holders(self, name: str) -> list[str]:
        """The mount ids that hold the volume's filesystem mounted."""
        try:
            return list(json.loads((self._dir(name) / "mounts.json").read_text()))
        except (FileNotFoundError, ValueError):
            return []

    def _save_holders(self, name: str, holders: list[str]) -> None:
        path = self._dir(name) / "mounts.json"
        if holders:
            atomic_write(path, json.dumps(holders).encode())
        else:
            path.unlink(missing_ok=True)

    async def start(self) -> None:
        """Forget the holders of a filesystem that is no longer mounted (the host
        rebooted since). One that is mounted stays so; its holders unmount it."""
        root = Path(self.ctx.state_dir)
        for d in sorted(root.iterdir()) if root.exists() else []:
            if (d / "mounts.json").exists() and not is_mounted(str(d / "_data")):
                (d / "mounts.json").unlink(missing_ok=True)

    async def create(self, name: str, options: dict[str, str], labels: dict[str, str]) -> VolumeInfo:
        d = self._dir(name)
        parse_options(options)
        if (d / "meta.json").exists():
            return self._info(name)
        (d / "_data").mkdir(parents=True, exist_ok=True)
        atomic_write(d / "meta.json", json.dumps(
            {"created_at": _now(), "options": dict(options), "labels": labels}).encode())
        return self._info(name)

    async def remove(self, name: str) -> None:
        d = self._dir(name)
        async with self._lock(name):
            self._meta(name)
            holders = self._holders(name)
            if holders:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(holders)}]")
            data = str(d / "_data")
            if await self._run(is_mounted, data):
                await self._run(unmount_volume, data)
                if await self._run(is_mounted, data):
                    raise DriverError(f"remove {name}: {data} is still mounted")
            (d / "meta.json").unlink()
            await self._run(shutil.rmtree, d, True)
        self._locks.pop(name, None)

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
        info = self._info(name)
        spec = parse_options(info.options)
        if spec is None:
            return info.mountpoint
        async with self._lock(name):
            holders = self._holders(name)
            if mount_id in holders:
                return info.mountpoint
            if not holders and not await self._run(is_mounted, info.mountpoint):
                await self._run(mount_volume, spec, info.mountpoint)
            try:
                self._save_holders(name, holders + [mount_id])
            except OSError:
                if not holders:
                    await self._run(unmount_volume, info.mountpoint)
                raise
        return info.mountpoint

    async def unmount(self, name: str, mount_id: str) -> None:
        try:
            info = self._info(name)
        except NotFound:
            return
        async with self._lock(name):
            holders = self._holders(name)
            if mount_id not in holders:
                return
            holders.remove(mount_id)
            if not holders:
                await self._run(unmount_volume, info.mountpoint)
            self._save_holders(name, holders)


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_volume_driver(BindDriver)
    registrar.add_volume_driver(LocalDriver)
