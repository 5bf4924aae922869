"""The plugin host: pluggy manager, entry-point discovery, enabled state, registries.

Built-in drivers and third-party ones are found the same way, through the
``engine.plugins`` entry-point group. The kernel never imports a plugin module by name.
A plugin that fails to load is recorded with its error and the daemon goes on.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from engine.sdk import hookspecs
from engine.sdk.drivers import (
    DriverContext,
    LogDriver,
    NetworkDriver,
    Registrar,
    VolumeDriver,
)
from engine.sdk.errors import Conflict, InvalidArgument, NotFound

from .util import atomic_write

log = logging.getLogger("engine.plugins")

GROUP = "engine.plugins"
KINDS = ("network", "volume", "log")


@dataclass
class PluginRecord:
    """One plugin as ``engine plugin ls`` shows it."""

    name: str
    module: str
    enabled: bool = True
    error: str = ""
    builtin: bool = False
    drivers: dict[str, list[str]] = field(default_factory=dict)
    module_obj: Any = None

    def to_api(self) -> dict:
        """Docker's Plugin object, with our extra fields in Settings."""
        return {
            "Id": self.name,
            "Name": self.name,
            "Enabled": self.enabled and not self.error,
            "PluginReference": self.module,
            "Settings": {"Mounts": [], "Env": [], "Args": [], "Devices": []},
            "Config": {
                "Description": (getattr(self.module_obj, "__doc__", "") or "").strip().split("\n")[0],
                "Interface": {
                    "Types": [f"engine.{k}driver/1.0" for k, v in self.drivers.items() if v],
                    "Socket": "",
                },
                "Entrypoint": [], "Env": [], "Args": {"Name": "", "Settable": [], "Value": []},
                "Network": {"Type": ""}, "Linux": {"Capabilities": [], "AllowAllDevices": False,
                                                    "Devices": []},
                "Mounts": [], "WorkDir": "", "User": {},
                "PropagatedMount": "", "IpcHost": False, "PidHost": False,
                "DockerVersion": "", "Documentation": "",
            },
            "Error": self.error,
            "Builtin": self.builtin,
            "Drivers": self.drivers,
        }


class PluginHost:
    """Loads plugins and keeps the live driver instances, by kind and name."""

    def __init__(self, data_root: str, exec_root: str, *, autoload: bool = True,
                 driver_options: dict[str, dict[str, str]] | None = None) -> None:
        self.data_root = data_root
        self.exec_root = exec_root
        self.state_file = Path(data_root, "plugins", "state.json")
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self.drivers: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self._owner: dict[tuple[str, str], str] = {}
        self.autoload = autoload and os.environ.get("ENGINE_DISABLE_PLUGIN_AUTOLOAD") != "1"
        self.driver_options = driver_options or {}

    # -------------------------------------------------------------- discovery

    def _disabled(self) -> set[str]:
        try:
            return set(json.loads(self.state_file.read_text()).get("disabled", []))
        except (FileNotFoundError, ValueError):
            return set()

    def _save_disabled(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        disabled = sorted(n for n, p in self.plugins.items() if not p.enabled)
        atomic_write(self.state_file, json.dumps({"disabled": disabled}).encode())

    def discover(self, eps=None) -> None:
        """Find every plugin in the entry-point group (or the given entry points);
        load the enabled ones."""
        disabled = self._disabled()
        for ep in entry_points(group=GROUP) if eps is None else eps:
            if ep.name in self.plugins:
                log.warning("plugin name %s is declared twice; keeping the first", ep.name)
                continue
            builtin = ep.value.startswith("engine.plugins.")
            if not builtin and not self.autoload:
                continue
            rec = PluginRecord(name=ep.name, module=ep.value, builtin=builtin,
                               enabled=ep.name not in disabled)
            self.plugins[ep.name] = rec
            if rec.enabled:
                self._load(rec)

    def _load(self, rec: PluginRecord) -> None:
        try:
            mod = importlib.import_module(rec.module)
            rec.module_obj = mod
            registrar = Registrar()
            self.pm.register(mod, name=rec.name)
            try:
                self.pm.check_pending()  # a misspelled hook fails loudly
                others = [p for p in self.pm.get_plugins() if p is not mod]
                hook = self.pm.subset_hook_caller("engine_register_drivers", others)
                hook(registrar=registrar)
            except Exception:
                self.pm.unregister(name=rec.name)
                raise
            self._install(rec, registrar)
            rec.error = ""
        except Exception as e:  # a broken plugin must not stop the daemon
            rec.error = f"{type(e).__name__}: {e}"
            log.error("plugin %s failed to load: %s\n%s", rec.name, rec.error,
                      traceback.format_exc())

    def _install(self, rec: PluginRecord, registrar: Registrar) -> None:
        tables = {"network": registrar.network, "volume": registrar.volume, "log": registrar.log}
        for kind, table in tables.items():
            for name in table:
                owner = self._owner.get((kind, name))
                if owner and owner != rec.name:
                    raise Conflict(f"{kind} driver {name!r} is already provided by plugin {owner}")
        rec.drivers = {k: sorted(t) for k, t in tables.items() if t}
        for kind, table in tables.items():
            for name, cls in table.items():
                ctx = DriverContext(
                    name=name,
                    state_dir=str(Path(self.data_root, "drivers", kind, name)),
                    options=self.driver_options.get(name, {}),
                    data_root=self.data_root,
                    exec_root=self.exec_root,
                )
                Path(ctx.state_dir).mkdir(parents=True, exist_ok=True)
                self.drivers[kind][name] = cls(ctx)
                self._owner[(kind, name)] = rec.name

    async def start_drivers(self, names: list[tuple[str, str]] | None = None) -> None:
        for kind in KINDS:
            for name, drv in list(self.drivers[kind].items()):
                if names is not None and (kind, name) not in names:
                    continue
                try:
                    await drv.start()
                except Exception as e:
                    owner = self._owner.get((kind, name), "")
                    if owner in self.plugins:
                        self.plugins[owner].error = f"{kind} driver {name} failed to start: {e}"
                    log.error("%s driver %s failed to start: %s", kind, name, e)
                    self.drivers[kind].pop(name, None)

    async def stop_drivers(self) -> None:
        for kind in KINDS:
            for drv in self.drivers[kind].values():
                try:
                    await drv.stop()
                except Exception as e:  # pragma: no cover - best effort
                    log.warning("driver %s failed to stop: %s", drv.ctx.name, e)

    # -------------------------------------------------------------- lookups

    def network(self, name: str) -> NetworkDriver:
        return self._get("network", name)

    def volume(self, name: str) -> VolumeDriver:
        return self._get("volume", name)

    def log(self, name: str) -> LogDriver:
        return self._get("log", name)

    def _get(self, kind: str, name: str):
        drv = self.drivers[kind].get(name)
        if drv is None:
            raise NotFound(f"{kind} driver {name!r} not found (installed: "
                           f"{', '.join(sorted(self.drivers[kind])) or 'none'})")
        return drv

    # -------------------------------------------------------------- enable / disable

    def get(self, name: str) -> PluginRecord:
        rec = self.plugins.get(name)
        if rec is None:
            raise NotFound(f"plugin {name} not found")
        return rec

    async def enable(self, name: str) -> None:
        rec = self.get(name)
        if rec.enabled and not rec.error:
            raise InvalidArgument(f"plugin {name} is already enabled")
        rec.enabled = True
        self._load(rec)
        self._save_disabled()
        await self.start_drivers([(k, n) for k, ns in rec.drivers.items() for n in ns])
        if rec.error:
            raise InvalidArgument(f"plugin {name} failed to enable: {rec.error}")

    async def disable(self, name: str, in_use: "callable") -> None:
        """Disable a plugin; ``in_use(kind, driver)`` tells whether anything uses it."""
        rec = self.get(name)
        if not rec.enabled:
            raise InvalidArgument(f"plugin {name} is already disabled")
        for kind, names in rec.drivers.items():
            for drv in names:
                user = in_use(kind, drv)
                if user:
                    raise Conflict(f"plugin {name} is in use: {kind} driver {drv} is used by {user}")
        for kind, names in rec.drivers.items():
            for drv in names:
                inst = self.drivers[kind].pop(drv, None)
                self._owner.pop((kind, drv), None)
                if inst is not None:
                    await inst.stop()
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        rec.enabled = False
        self._save_disabled()
