"""Volume drivers served by out-of-process plugins (Docker's ``VolumeDriver`` protocol).

Each plugin found by :func:`engine.sdk.remote.discover` when the daemon starts becomes
a volume driver named like the plugin, so ``docker volume create -d myplugin v1`` and
``--mount type=volume,volume-driver=myplugin,...`` reach it; so does a plugin whose
socket appears later, when the daemon is first asked for it by name (the
``engine_find_driver`` hook). The protocol methods are
``VolumeDriver.Create/Remove/Mount/Unmount/Path/Get/List/Capabilities``.

The driver keeps, in its state directory, the volumes created through it (their labels
and creation time, which the protocol does not carry) and which containers have each
volume mounted: the plugin is asked to ``Mount`` when the first container needs a
volume and to ``Unmount`` when the last one lets go, and a volume in use cannot be
removed. Calls time out (10 s; activation 5 s; the ``timeout`` driver option changes
the first) with :class:`~engine.sdk.remote.PluginUnavailable`, so a hung or dead plugin
costs only the operations that need it.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from engine.sdk import hookimpl
from engine.sdk.drivers import DriverContext, VolumeDriver, VolumeInfo
from engine.sdk.errors import Conflict, InvalidArgument, NotFound
from engine.sdk.remote import (
    PluginSpec,
    PluginUnavailable,
    find_remote_driver,
    plugin_client,
    register_remote_drivers,
    remote_driver_class,
)

# names the built-in drivers own; a plugin cannot shadow them
RESERVED = frozenset({"local", "bind", "tmpfs"})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RemoteVolumeDriver(VolumeDriver):
    """Base class; :func:`driver_for` makes one subclass per plugin."""

    plugin: ClassVar[PluginSpec | None] = None

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self.client = plugin_client(self.plugin, "volume", ctx.options)
        self._state = Path(ctx.state_dir, "state.json")
        self._volumes: dict[str, dict[str, Any]] = {}
        self._mounts: dict[str, list[str]] = {}
        self._paths: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._load()

    # -------------------------------------------------------------- state

    def _load(self) -> None:
        try:
            doc = json.loads(self._state.read_text())
        except (FileNotFoundError, ValueError):
            return
        self._volumes = dict(doc.get("volumes") or {})
        self._mounts = {k: list(v) for k, v in (doc.get("mounts") or {}).items() if v}
        self._paths = dict(doc.get("paths") or {})

    def _save(self) -> None:
        self._state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state.with_name(".state.json.tmp")
        data = json.dumps({"volumes": self._volumes, "mounts": self._mounts,
                           "paths": self._paths}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._state)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _info(self, name: str, mountpoint: str = "", status: dict | None = None) -> VolumeInfo:
        meta = self._volumes.get(name, {})
        return VolumeInfo(name=name, mountpoint=mountpoint or self._paths.get(name, ""),
                          created_at=meta.get("created_at", ""),
                          options=meta.get("options", {}), labels=meta.get("labels", {}),
                          status=status or {})

    @property
    def mounts(self) -> dict[str, list[str]]:
        """Which mount ids (containers) hold each volume; a copy."""
        return {k: list(v) for k, v in self._mounts.items()}

    # -------------------------------------------------------------- protocol

    async def capabilities(self) -> dict[str, Any]:
        doc = await self.client.call("VolumeDriver.Capabilities")
        return doc.get("Capabilities") or {}

    async def create(self, name: str, options: dict[str, str],
                     labels: dict[str, str]) -> VolumeInfo:
        if not name:
            raise InvalidArgument("volume name must not be empty")
        async with self._lock(name):
            await self.client.call("VolumeDriver.Create", {"Name": name, "Opts": options or {}})
            self._volumes.setdefault(name, {"created_at": _now(), "options": options or {},
                                            "labels": labels or {}})
            self._save()
        try:
            return await self.get(name)  # the protocol's Create answers no mount point
        except NotFound:
            return self._info(name)

    async def remove(self, name: str) -> None:
        async with self._lock(name):
            users = self._mounts.get(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            await self.client.call("VolumeDriver.Remove", {"Name": name})
            self._volumes.pop(name, None)
            self._paths.pop(name, None)
            self._save()

    async def get(self, name: str) -> VolumeInfo:
        try:
            doc = await self.client.call("VolumeDriver.Get", {"Name": name})
        except PluginUnavailable:
            if name in self._volumes:
                raise
            # not one of ours as far as we know; a dead plugin must not make other
            # drivers' volumes fail to resolve
            raise NotFound(f"get {name}: no such volume") from None
        vol = doc.get("Volume") or {}
        if not vol:
            raise NotFound(f"get {name}: no such volume")
        if name not in self._volumes:  # created outside this daemon
            self._volumes[name] = {"created_at": vol.get("CreatedAt") or "", "options": {},
                                   "labels": {}}
        return self._info(name, vol.get("Mountpoint") or "", vol.get("Status"))

    async def list(self) -> list[VolumeInfo]:
        try:
            doc = await self.client.call("VolumeDriver.List")
        except PluginUnavailable as e:
            # one unreachable plugin must not hide every other driver's volumes
            self.ctx.logger.warning("%s", e)
            return []
        except NotFound:  # the plugin does not implement VolumeDriver
            return []
        out = []
        for vol in doc.get("Volumes") or []:
            if isinstance(vol, dict) and vol.get("Name"):
                out.append(self._info(vol["Name"], vol.get("Mountpoint") or "", vol.get("Status")))
        return out

    async def path(self, name: str) -> str:
        doc = await self.client.call("VolumeDriver.Path", {"Name": name})
        return doc.get("Mountpoint") or ""

    async def mount(self, name: str, mount_id: str) -> str:
        async with self._lock(name):
            users = self._mounts.get(name, [])
            if users and name in self._paths:
                if mount_id not in users:
                    users.append(mount_id)
                    self._save()
                return self._paths[name]
            doc = await self.client.call("VolumeDriver.Mount", {"Name": name, "ID": mount_id})
            path = doc.get("Mountpoint") or ""
            if not path or not os.path.isabs(path):
                # the plugin says it mounted: give it back before failing
                await self._unmount_quietly(name, mount_id)
                raise InvalidArgument(f"volume plugin {self.name}: Mount of {name} returned "
                                      f"an invalid mount point {path!r}")
            self._mounts[name] = [mount_id]
            self._paths[name] = path
            self._save()
            return path

    async def _unmount_quietly(self, name: str, mount_id: str) -> None:
        try:
            await self.client.call("VolumeDriver.Unmount", {"Name": name, "ID": mount_id})
        except Exception as e:  # best effort while failing already
            self.ctx.logger.warning("unmount of %s after a failed mount: %s", name, e)

    async def unmount(self, name: str, mount_id: str) -> None:
        async with self._lock(name):
            users = self._mounts.get(name, [])
            if mount_id not in users:
                return
            if len(users) == 1:
                await self.client.call("VolumeDriver.Unmount", {"Name": name, "ID": mount_id})
                del self._mounts[name]
            else:
                users.remove(mount_id)
            self._save()


def driver_for(spec: PluginSpec) -> type[RemoteVolumeDriver]:
    """A volume driver class named like the plugin ``spec``."""
    return remote_driver_class(spec, RemoteVolumeDriver)


@hookimpl
def engine_register_drivers(registrar) -> None:
    """One volume driver per plugin found on the search path at load time."""
    register_remote_drivers(registrar, "volume", RemoteVolumeDriver, reserved=RESERVED)


@hookimpl
def engine_find_driver(kind: str, name: str) -> type[RemoteVolumeDriver] | None:
    """A volume driver for a plugin whose socket appeared after the daemon started."""
    if kind != "volume":
        return None
    return find_remote_driver(name, RemoteVolumeDriver, reserved=RESERVED)
