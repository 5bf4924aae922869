"""The plugin host: pluggy manager, entry-point discovery, enabled state, registries,
and the installation of third-party plugins.

Built-in drivers and third-party ones are found the same way, through the
``engine.plugins`` entry-point group. The kernel never imports a plugin module by name.
A plugin that fails to load is recorded with its error and the daemon goes on.

Third-party plugins are Python distributions installed into an environment the engine
owns, ``<data-root>/plugins/env`` (a venv whose ``.pth`` file lets it see the engine's
own packages, so shared dependencies are not installed twice), never into the
engine's environment. Its site-packages directory is on the daemon's ``sys.path``
from the start, so a new install is picked up live: invalidate the import caches and
discover again. A freshly installed plugin is disabled until ``enable``, as in Docker.
What a plugin asks for (its privileges) is read from the ``engine-plugin.json``
manifest in its wheel or directory, without importing any of its code
(see :mod:`engine.sdk.packaging`).

The host also keeps Docker managed plugins (:mod:`engine.core.managed`): a rootfs run
as a hidden container, whose socket gets the built-in remote volume or network driver
under the plugin's name. Both kinds come from, and go to, registries
(:mod:`engine.core.plugin_dist`): ``install`` takes a reference (short names resolve
against the ``plugin-registry`` setting), ``push`` uploads an installed plugin.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from engine.sdk import hookspecs
from engine.sdk.drivers import (
    DriverContext,
    LogDriver,
    NetworkDriver,
    Registrar,
    VolumeDriver,
)
from engine.sdk.errors import (
    Conflict,
    DriverError,
    EngineError,
    Forbidden,
    InvalidArgument,
    NotFound,
)
from engine.sdk.packaging import (
    Manifest,
    WheelInfo,
    build_wheel,
    installed_manifest,
    normalize_name,
    parse_entry_points,
    privileges_match,
    read_wheel,
    validate_plugin_dir,
)

from . import managed as managed_mod
from .managed import ManagedPlugin, ManagedRunner, ManagedStore, NotSupported
from .util import atomic_write

log = logging.getLogger("engine.plugins")

GROUP = "engine.plugins"
KINDS = ("network", "volume", "log")


@dataclass(frozen=True)
class InstalledDist:
    """An installed distribution as discovery sees it: its ``.dist-info`` (or
    ``.egg-info``) directory. Its full metadata is read only when asked for."""

    name: str            # as the directory spells it
    path: Path

    def metadata(self):  # -> importlib.metadata.Distribution
        from importlib.metadata import PathDistribution

        return PathDistribution(self.path)


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str           # "module" or "module:attr"
    dist: InstalledDist


def entry_points_on_path(group: str = GROUP, paths: list[str] | None = None
                         ) -> list[EntryPoint]:
    """The entry points of ``group`` declared by the distributions on ``sys.path`` (or
    ``paths``), in path order, the first distribution of a name hiding later ones —
    what ``importlib.metadata.entry_points(group=...)`` answers, read straight from
    the ``entry_points.txt`` files: importing importlib.metadata (zipfile, csv,
    importlib.resources) would cost the daemon almost 1 MB for good."""
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in sys.path if paths is None else paths:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            project = name.rsplit(".", 1)[0].partition("-")[0]
            key = normalize_name(project)
            if key in seen:
                continue
            seen.add(key)
            path = Path(entry or ".", name)
            try:
                text = (path / "entry_points.txt").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            dist = InstalledDist(project, path)
            found.extend(EntryPoint(n, v, dist) for n, v in parse_entry_points(text, group).items())
    return found
#: Failed starts in a row after which an exited managed plugin stays down.
RESTART_ATTEMPTS = 3


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
    entry: str = ""          # the entry-point name (``name`` differs under an alias)
    dist: str = ""           # the distribution, for plugins installed by the engine
    version: str = ""
    source: str = ""         # what it was installed from (wheel file, directory)
    manifest: Manifest | None = None

    @property
    def id(self) -> str:
        """A stable 64-hex-digit id, as Docker gives plugins (derived from the name)."""
        return hashlib.sha256(f"engine-plugin:{self.name}".encode()).hexdigest()

    @property
    def description(self) -> str:
        if self.manifest is not None and self.manifest.description:
            return self.manifest.description
        return (getattr(self.module_obj, "__doc__", "") or "").strip().split("\n")[0]

    def privilege_values(self, name: str) -> list[str]:
        out: list[str] = []
        for p in self.manifest.privileges if self.manifest else []:
            if p["Name"] == name:
                out.extend(p["Value"])
        return out

    def to_api(self) -> dict:
        """Docker's Plugin object, with our extra fields beside it."""
        mounts = [{"Name": "", "Description": "", "Settable": None, "Source": m,
                   "Destination": m, "Type": "bind", "Options": ["rbind"]}
                  for m in self.privilege_values("mount")]
        network = self.privilege_values("network")
        return {
            "Id": self.id,
            "Name": self.name,
            "Enabled": self.enabled and not self.error,
            "PluginReference": self.source or self.module,
            "Settings": {"Mounts": [], "Env": [], "Args": [], "Devices": []},
            "Config": {
                "Description": self.description,
                "Interface": {
                    "Types": [f"engine.{k}driver/1.0" for k, v in self.drivers.items() if v],
                    "Socket": "",
                },
                "Entrypoint": [], "Env": [], "Args": {"Name": "", "Settable": [], "Value": []},
                "Network": {"Type": network[0] if network else ""},
                "Linux": {"Capabilities": self.privilege_values("capabilities"),
                          "AllowAllDevices": bool(self.privilege_values("allow-all-devices")),
                          "Devices": [{"Path": d} for d in self.privilege_values("device")]},
                "Mounts": mounts, "WorkDir": "", "User": {},
                "PropagatedMount": "", "IpcHost": bool(self.privilege_values("host ipc")),
                "PidHost": bool(self.privilege_values("host pid")),
                "DockerVersion": "", "Documentation": "",
            },
            "Error": self.error,
            "Builtin": self.builtin,
            "Drivers": self.drivers,
            "Distribution": {"Name": self.dist, "Version": self.version} if self.dist else None,
        }


class PluginEnv:
    """The environment third-party plugins are installed into: ``<root>/env``.

    A venv without pip (the engine's pip installs into it with ``--python``) whose
    ``_engine.pth`` adds the engine's own site directories, so a plugin's dependencies
    that the engine already has are seen as installed. All methods block: call them
    from an executor."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root, "env")
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        self.site_dir = self.root / "lib" / version / "site-packages"
        self.python = self.root / "bin" / "python"

    def activate(self) -> None:
        """Put the site directory on this process's import path (it exists from the
        start so that container monitors, which copy the daemon's path when the first
        one starts, find log writers installed later)."""
        self.site_dir.mkdir(parents=True, exist_ok=True)
        if str(self.site_dir) not in sys.path:
            site.addsitedir(str(self.site_dir))
        importlib.invalidate_caches()

    def ensure(self) -> None:
        """Create the venv when it is missing."""
        if not self.python.exists():
            proc = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.root)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise DriverError(f"creating the plugin environment failed: {proc.stderr.strip()}")
        import sysconfig

        engine_sites = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        pth = self.site_dir / "_engine.pth"
        # one line, run by site.py (exec'd: a comprehension would not see ``site``)
        line = f"import site; list(map(site.addsitedir, {engine_sites!r}))\n"
        if not pth.exists() or pth.read_text() != line:
            atomic_write(pth, line.encode())

    def pip(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(self.python), *args, "--no-input",
             "--disable-pip-version-check", "-q"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            detail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise DriverError(f"pip {args[0]} failed: {detail}")
        return proc.stdout

    def install(self, wheel: Path, *, reinstall: bool = False) -> None:
        self.ensure()
        if reinstall:
            self.pip("install", "--force-reinstall", "--no-deps", str(wheel))
        else:
            self.pip("install", str(wheel))
        importlib.invalidate_caches()

    def uninstall(self, dist: str) -> None:
        self.ensure()
        self.pip("uninstall", "-y", dist)
        importlib.invalidate_caches()


class PluginHost:
    """Loads plugins and keeps the live driver instances, by kind and name."""

    def __init__(self, data_root: str, exec_root: str, *, autoload: bool = True,
                 driver_options: dict[str, dict[str, str]] | None = None,
                 plugin_registry: str = "", insecure_registries: list[str] | None = None
                 ) -> None:
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
        self.env = PluginEnv(Path(data_root, "plugins"))
        self.installed_file = Path(data_root, "plugins", "installed.json")
        self._changing = asyncio.Lock()  # one install, upgrade or removal at a time
        self.wheels_dir = Path(data_root, "plugins", "wheels")  # kept for push
        #: where short plugin names resolve (``127.0.0.1:5000/plugins``; Docker Hub if empty)
        self.plugin_registry = plugin_registry
        #: the daemon's ``insecure-registries``, which plugin transfers honour as pulls do
        self.insecure_registries = list(insecure_registries or ())
        #: Docker managed plugins, by name (see :mod:`engine.core.managed`)
        self.managed: dict[str, ManagedPlugin] = {}
        self.managed_store = ManagedStore(data_root)
        self.runner = ManagedRunner(exec_root, self.managed_store, self._plugin_log_writer)
        self._dist: Any = None
        self._watchers: dict[str, asyncio.Task[None]] = {}  # managed plugin id -> watcher

    # -------------------------------------------------------------- discovery

    def _disabled(self) -> set[str]:
        try:
            return set(json.loads(self.state_file.read_text()).get("disabled", []))
        except (FileNotFoundError, ValueError):
            return set()

    def _save_disabled(self, also: list[str] | tuple[str, ...] = ()) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        disabled = {n for n, p in self.plugins.items() if not p.enabled} | set(also)
        atomic_write(self.state_file, json.dumps({"disabled": sorted(disabled)}).encode())

    def _installed(self) -> dict[str, dict[str, Any]]:
        """Plugins installed by the engine, by normalized distribution name."""
        try:
            return json.loads(self.installed_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_installed(self, installed: dict[str, dict[str, Any]]) -> None:
        self.installed_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.installed_file, json.dumps(installed, indent=1, sort_keys=True).encode())

    def discover(self, eps=None) -> None:
        """Find every plugin in the entry-point group (or the given entry points);
        load the enabled ones. Plugins already known are left as they are, so calling
        it again after an install picks up only what is new."""
        if eps is None:
            self.env.activate()
            for p in self.managed_store.load():
                self.managed.setdefault(p.name, p)
        disabled = self._disabled()
        installed = self._installed()
        for ep in entry_points_on_path(GROUP) if eps is None else eps:
            dist = getattr(ep, "dist", None)
            meta = installed.get(normalize_name(dist.name)) if dist is not None else None
            name = (meta or {}).get("aliases", {}).get(ep.name, ep.name)
            known = self.plugins.get(name)
            if known is not None:
                if known.module != ep.value:
                    log.warning("plugin name %s is declared twice; keeping the first", name)
                continue
            builtin = ep.value.startswith("engine.plugins.")
            if not builtin and not self.autoload:
                continue
            rec = PluginRecord(name=name, module=ep.value, builtin=builtin, entry=ep.name,
                               enabled=name not in disabled)
            if meta is not None and dist is not None:
                if isinstance(dist, InstalledDist):
                    dist = dist.metadata()
                rec.dist, rec.version, rec.source = dist.name, dist.version, meta.get("source", "")
                rec.manifest = installed_manifest(dist)
            self.plugins[name] = rec
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
                self._instantiate(kind, name, cls, rec.name)

    def _driver_context(self, kind: str, name: str, state_name: str = "") -> DriverContext:
        """The context of driver ``name`` of ``kind``, its state directory (named
        ``state_name``, else after the driver) made."""
        ctx = DriverContext(
            name=name,
            state_dir=str(Path(self.data_root, "drivers", kind, state_name or name)),
            options=self.driver_options.get(name, {}),
            data_root=self.data_root,
            exec_root=self.exec_root,
        )
        Path(ctx.state_dir).mkdir(parents=True, exist_ok=True)
        return ctx

    def _instantiate(self, kind: str, name: str, cls: type, owner: str):
        """Make driver ``name`` of ``kind`` from its class, with its context, and
        record which plugin owns it."""
        drv = self.drivers[kind][name] = cls(self._driver_context(kind, name))
        self._owner[(kind, name)] = owner
        return drv

    def _find_late(self, kind: str, name: str):
        """A driver no plugin registered, made on demand by the first enabled plugin
        whose ``engine_find_driver`` knows the name (a Docker v1 plugin whose socket
        appeared after the daemon started). It counts among that plugin's drivers, so
        disabling the plugin drops it too."""
        for impl in reversed(self.pm.hook.engine_find_driver.get_hookimpls()):
            rec = self.plugins.get(impl.plugin_name)
            if rec is None or not rec.enabled or rec.error:
                continue
            try:
                cls = impl.function(kind=kind, name=name)
                if cls is None:
                    continue
                getattr(Registrar(), f"add_{kind}_driver")(cls)  # the kind's own checks
            except Exception as e:
                log.warning("plugin %s: engine_find_driver(%s, %s): %s",
                            impl.plugin_name, kind, name, e)
                continue
            if getattr(cls, "name", None) != name:
                log.warning("plugin %s answered %s driver %r for %r: ignored",
                            impl.plugin_name, kind, getattr(cls, "name", None), name)
                continue
            rec.drivers.setdefault(kind, []).append(name)
            return self._instantiate(kind, name, cls, impl.plugin_name)
        return None

    async def start_drivers(self, names: list[tuple[str, str]] | None = None) -> None:
        """Start the drivers (all of them at daemon start, then the enabled managed
        plugins too; or only ``names``)."""
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
        if names is None:
            await self.start_managed()

    async def stop_drivers(self) -> None:
        """At daemon stop: drivers stop; managed plugins keep running (live restore),
        no longer watched."""
        for task in self._watchers.values():
            task.cancel()
        self._watchers.clear()
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
        if drv is None and kind in KINDS:
            drv = self._find_late(kind, name)
        if drv is None:
            raise NotFound(f"{kind} driver {name!r} not found (installed: "
                           f"{', '.join(sorted(self.drivers[kind])) or 'none'})")
        return drv

    # -------------------------------------------------------------- enable / disable

    def all(self) -> list[PluginRecord | ManagedPlugin]:
        """Every plugin, engine and managed, as ``plugin ls`` shows them."""
        return [*self.plugins.values(), *self.managed.values()]

    def get(self, name: str) -> PluginRecord | ManagedPlugin:
        """A plugin by name (a managed one also without its ``:latest``), by id, or
        by an unambiguous prefix of its id."""
        rec = self.plugins.get(name) or self.managed.get(name)
        if rec is None and not managed_mod.has_tag(name):
            rec = self.managed.get(f"{name}:latest")
        if rec is not None:
            return rec
        if len(name) >= 4 and all(c in "0123456789abcdef" for c in name):
            found = [r for r in self.all() if r.id.startswith(name)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InvalidArgument(f"plugin id prefix {name} is ambiguous")
        raise NotFound(f"plugin {name} not found")

    async def enable(self, name: str) -> None:
        """Load a disabled (or failed) plugin and start its drivers, live."""
        rec = self.get(name)
        name = rec.name
        if rec.enabled and not rec.error:
            raise InvalidArgument(f"plugin {name} is already enabled")
        if isinstance(rec, ManagedPlugin):
            async with self._changing:
                await self._enable_managed(rec)
            return
        rec.enabled = True
        self._load(rec)
        self._save_disabled()
        await self.start_drivers([(k, n) for k, ns in rec.drivers.items() for n in ns])
        if rec.error:
            raise InvalidArgument(f"plugin {name} failed to enable: {rec.error}")

    async def disable(self, name: str, in_use: Callable[[str, str], str],
                      force: bool = False) -> None:
        """Disable a plugin; ``in_use(kind, driver)`` tells whether anything uses it.
        ``force`` stops a managed plugin even while volumes made through it exist
        (Docker's ``disable -f``); a driver a container uses is refused always."""
        rec = self.get(name)
        name = rec.name
        if not rec.enabled:
            raise InvalidArgument(f"plugin {name} is already disabled")
        if isinstance(rec, ManagedPlugin):
            await self._disable_managed(rec, in_use, force=force)
            return
        for kind, names in rec.drivers.items():
            for drv in names:
                _refuse_if_used(name, kind, drv, in_use)
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

    # -------------------------------------------------------------- install

    def _source(self, remote: str, workdir: Path) -> WheelInfo:
        """A wheel for ``remote``: a wheel file as it is, a directory built into
        ``workdir``. Blocks (the build runs pip)."""
        if not os.path.isabs(remote):
            raise InvalidArgument(f"{remote!r} is not the absolute path of a wheel file or "
                                  "of a plugin directory")
        path = Path(remote)
        if path.is_dir():
            return read_wheel(build_wheel(path, workdir))
        if path.is_file():
            if path.suffix != ".whl":
                raise InvalidArgument(f"{remote}: neither a wheel file nor a plugin directory")
            info = read_wheel(path)
            if not info.entry_points:
                raise InvalidArgument(f"{remote}: the wheel declares no entry point in the "
                                      f"{GROUP!r} group: not an engine plugin")
            if info.manifest is None:
                raise InvalidArgument(f"{remote}: the wheel has no engine-plugin.json manifest")
            return info
        raise NotFound(f"plugin source {remote} not found")

    def privileges(self, remote: str) -> list[dict]:
        """What the plugin at ``remote`` (a local path) asks for, read without
        importing it. Blocks briefly for a wheel; a directory is only read, not built."""
        if os.path.isabs(remote) and os.path.isdir(remote):
            if managed_mod.is_managed_dir(remote):
                return managed_mod.privileges(managed_mod.read_plugin_dir(remote))
            return validate_plugin_dir(remote)[2].privileges
        with tempfile.TemporaryDirectory(prefix="engine-plugin-") as tmp:
            info = self._source(remote, Path(tmp))
            assert info.manifest is not None
            return info.manifest.privileges

    def _names(self, info: WheelInfo, alias: str) -> dict[str, str]:
        """Entry-point name -> plugin name, under ``alias`` when one is given."""
        if not alias or alias in info.entry_points:
            return {ep: ep for ep in info.entry_points}
        if len(info.entry_points) != 1:
            raise InvalidArgument(f"{info.name} declares {len(info.entry_points)} plugins: "
                                  "an alias names a distribution with exactly one")
        if "/" in alias or not alias.strip():
            raise InvalidArgument(f"invalid plugin alias {alias!r}")
        return {next(iter(info.entry_points)): alias}

    def _install_files(self, remote: str, alias: str, granted: list[dict] | None,
                       label: str) -> list[str]:
        """The blocking half of :meth:`install`: resolve, check, pip install, record."""
        with tempfile.TemporaryDirectory(prefix="engine-plugin-") as tmp:
            info = self._source(remote, Path(tmp))
            assert info.manifest is not None
            _require_grant(info.manifest.privileges, granted, info.name)
            installed = self._installed()
            key = normalize_name(info.name)
            if key in installed:
                raise Conflict(f"plugin {info.name} is already installed: upgrade it instead")
            names = self._names(info, alias)
            for name in names.values():
                if name in self.plugins or name in self.managed:
                    raise Conflict(f"plugin {name} already exists")
            self.env.install(info.path)
            self._keep_wheel(key, info.path)
        installed[key] = {"name": info.name, "version": info.version, "source": label,
                          "aliases": {ep: n for ep, n in names.items() if ep != n}}
        self._save_installed(installed)
        self._save_disabled(also=list(names.values()))  # installed disabled, as in Docker
        return sorted(names.values())

    async def install(self, remote: str, alias: str = "", granted: list[dict] | None = None,
                      *, label: str = "", creds: Any = None) -> list[str]:
        """Install the plugin at ``remote``, disabled; return the names of its plugins.

        ``remote`` is the absolute path of a wheel or a plugin directory, or a
        registry reference (an engine plugin artifact or a Docker managed plugin;
        short names resolve against the plugin registry). ``granted`` must match the
        privileges it asks for; ``label`` is the reference shown for it (``remote`` by
        default); ``creds`` are the registry credentials of the request."""
        if not os.path.isabs(remote):
            return await self._install_remote(remote, alias, granted, creds)
        if managed_mod.is_managed_dir(remote):
            raise InvalidArgument(f"{remote} is a managed plugin's directory: create it "
                                  "with plugin create NAME DIR")
        loop = asyncio.get_running_loop()
        async with self._changing:
            names = await loop.run_in_executor(None, self._install_files, remote, alias,
                                               granted, label or remote)
            importlib.invalidate_caches()
            self.discover()
        missing = [n for n in names if n not in self.plugins]
        if missing:
            raise DriverError(f"installed, but the daemon cannot see plugin(s) "
                              f"{', '.join(missing)} (ENGINE_DISABLE_PLUGIN_AUTOLOAD?)")
        return names

    def _siblings(self, rec: PluginRecord) -> list[PluginRecord]:
        if not rec.dist:
            if rec.builtin:
                raise Forbidden(f"plugin {rec.name} is built in: disable it instead")
            raise Forbidden(f"plugin {rec.name} was not installed by the engine; "
                            "remove its distribution with pip")
        return [r for r in self.plugins.values() if r.dist == rec.dist]

    def _forget(self, records: list[PluginRecord]) -> None:
        """Drop records and the modules they imported, so a new version loads afresh."""
        tops = {r.module.split(":")[0].split(".")[0] for r in records}
        for r in records:
            self.plugins.pop(r.name, None)
            if self.pm.get_plugin(r.name) is not None:
                self.pm.unregister(name=r.name)
        for mod in [m for m in sys.modules if m.split(".")[0] in tops]:
            del sys.modules[mod]
        importlib.invalidate_caches()

    async def remove(self, name: str, in_use: Callable[[str, str], str],
                     force: bool = False) -> None:
        """Uninstall the distribution that provides plugin ``name``. An enabled
        plugin is refused unless ``force``; a driver in use is refused always."""
        async with self._changing:
            rec = self.get(name)
            if isinstance(rec, ManagedPlugin):
                await self._remove_managed(rec, in_use, force)
                return
            siblings = self._siblings(rec)
            for r in siblings:
                if r.enabled and not r.error:
                    if not force:
                        raise Conflict(f"plugin {r.name} is enabled: disable it first, "
                                       "or force the removal")
                    await self.disable(r.name, in_use)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.env.uninstall, rec.dist)
            await loop.run_in_executor(None, shutil.rmtree,
                                       self.wheels_dir / normalize_name(rec.dist), True)
            self._forget(siblings)
            installed = self._installed()
            installed.pop(normalize_name(rec.dist), None)
            self._save_installed(installed)
            self._save_disabled()

    def _upgrade_files(self, rec: PluginRecord, remote: str, granted: list[dict] | None,
                       label: str = "") -> None:
        with tempfile.TemporaryDirectory(prefix="engine-plugin-") as tmp:
            info = self._source(remote, Path(tmp))
            assert info.manifest is not None
            if normalize_name(info.name) != normalize_name(rec.dist):
                raise InvalidArgument(f"{remote} is {info.name}, not an upgrade of {rec.dist}")
            _require_grant(info.manifest.privileges, granted, info.name)
            self.env.install(info.path, reinstall=True)
            self._keep_wheel(normalize_name(rec.dist), info.path)
        installed = self._installed()
        entry = installed.setdefault(normalize_name(rec.dist), {"name": info.name, "aliases": {}})
        entry.update(version=info.version, source=label or remote)
        self._save_installed(installed)
        old = {r.entry for r in self.plugins.values() if r.dist == rec.dist}
        aliases = entry.get("aliases", {})
        self._save_disabled(also=[aliases.get(ep, ep) for ep in info.entry_points
                                  if ep not in old])

    async def upgrade(self, name: str, remote: str, granted: list[dict] | None,
                      creds: Any = None) -> None:
        """Replace the distribution behind plugin ``name`` with the one at ``remote``
        (a wheel, a plugin directory, or the reference of an engine plugin artifact).
        As in Docker, the plugin must be disabled first and stays disabled."""
        loop = asyncio.get_running_loop()
        async with self._changing:
            rec = self.get(name)
            if isinstance(rec, ManagedPlugin):
                raise NotSupported(f"upgrading managed plugin {rec.name} is not supported: "
                                   "remove it and install the new version")
            siblings = self._siblings(rec)
            if any(r.enabled and not r.error for r in siblings):
                raise Conflict(f"plugin {rec.name} must be disabled before upgrading")
            if os.path.isabs(remote):
                await loop.run_in_executor(None, self._upgrade_files, rec, remote, granted)
            else:
                tmp = Path(await loop.run_in_executor(None, tempfile.mkdtemp, "",
                                                      "engine-plugin-"))
                try:
                    wheel, full = await self._fetch_wheel(remote, granted, creds, tmp)
                    await loop.run_in_executor(None, self._upgrade_files, rec, str(wheel),
                                               granted, full)
                finally:
                    await loop.run_in_executor(None, shutil.rmtree, tmp, True)
            self._forget(siblings)
            self.discover()

    async def create(self, name: str, context: bytes) -> list[str]:
        """Docker's ``plugin create``: ``context`` is a tar of a plugin directory,
        either a Python plugin (built and installed under ``name``) or a Docker
        managed plugin (``config.json`` and ``rootfs/``, stored as ``name:latest``
        unless tagged). Either is left disabled."""
        if not name.strip():
            raise InvalidArgument("a plugin name is required")
        loop = asyncio.get_running_loop()
        tmp = Path(await loop.run_in_executor(None, tempfile.mkdtemp, "", "engine-plugin-"))
        try:
            src = await loop.run_in_executor(None, _unpack_context, context, tmp)
            if managed_mod.is_managed_dir(src):
                return [await self._create_managed(name, src)]
            name = name.removesuffix(":latest")
            manifest = (await loop.run_in_executor(None, validate_plugin_dir, src))[2]
            return await self.install(str(src), name, manifest.privileges,
                                      label=f"created:{name}")
        finally:
            await loop.run_in_executor(None, shutil.rmtree, tmp, True)

    # -------------------------------------------------------------- registries

    @property
    def distribution(self) -> Any:
        """The registry transport for plugin artifacts (made on first use: it
        imports aiohttp's client side, which start-up does not need)."""
        if self._dist is None:
            from engine.registry.client import RegistryHosts

            from .plugin_dist import PluginDistribution

            self._dist = PluginDistribution(RegistryHosts(insecure=self.insecure_registries))
        return self._dist

    def _keep_wheel(self, key: str, wheel: Path) -> None:
        """Keep the installed wheel, so that ``push`` can share the plugin later."""
        target = self.wheels_dir / key
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copy2(wheel, target / wheel.name)

    def _kept_wheel(self, rec: PluginRecord) -> Path:
        found = sorted((self.wheels_dir / normalize_name(rec.dist)).glob("*.whl"))
        if not found:
            raise NotFound(f"plugin {rec.name}: its wheel was not kept at install time; "
                           "install it again to push it")
        return found[0]

    async def privileges_of(self, remote: str, creds: Any = None) -> list[dict]:
        """What the plugin at ``remote`` asks for: a local path (read in an executor)
        or a registry reference, of which only the manifest and the config are
        fetched; none of the plugin's code is downloaded."""
        loop = asyncio.get_running_loop()
        if os.path.isabs(remote):
            return await loop.run_in_executor(None, self.privileges, remote)
        from .plugin_dist import resolve

        full, _ = resolve(remote, self.plugin_registry)
        art = await self.distribution.fetch(full, creds)
        if art.kind == "managed":
            return managed_mod.privileges(managed_mod.parse_config(art.config, full))
        return Manifest.parse(json.dumps(art.config.get("manifest") or {}), full).privileges

    async def _install_remote(self, remote: str, alias: str, granted: list[dict] | None,
                              creds: Any) -> list[str]:
        """Install from a registry: manifest and config first (the privileges are
        checked before anything else is downloaded), then the one layer, verified
        against its digest, then as from a local wheel or a created plugin. A failure
        leaves nothing behind."""
        from .plugin_dist import resolve

        full, local = resolve(remote, self.plugin_registry)
        art = await self.distribution.fetch(full, creds)
        loop = asyncio.get_running_loop()
        tmp = Path(await loop.run_in_executor(None, tempfile.mkdtemp, "", "engine-plugin-"))
        try:
            if art.kind == "managed":
                return [await self._pull_managed(art, alias or local, granted, creds, tmp)]
            wheel, _ = await self._fetch_wheel(remote, granted, creds, tmp, art)
            return await self.install(str(wheel), alias, granted, label=full)
        finally:
            await loop.run_in_executor(None, shutil.rmtree, tmp, True)

    async def _fetch_wheel(self, remote: str, granted: list[dict] | None, creds: Any,
                           into: Path, art: Any = None) -> tuple[Path, str]:
        """The wheel of the engine plugin artifact ``remote``, downloaded into
        ``into`` once the grant matches what its config asks for; with the full
        reference it was fetched by."""
        from .plugin_dist import resolve

        if art is None:
            art = await self.distribution.fetch(resolve(remote, self.plugin_registry)[0],
                                                creds)
        full = art.reference
        if art.kind != "python":
            raise InvalidArgument(f"{reference_name(full)} is a managed plugin, not an "
                                  "engine plugin")
        manifest = Manifest.parse(json.dumps(art.config.get("manifest") or {}), full)
        _require_grant(manifest.privileges, granted, reference_name(full))
        wheel_name = str(art.config.get("wheel") or "")
        if not wheel_name.endswith(".whl") or "/" in wheel_name or wheel_name[0] == ".":
            raise InvalidArgument(f"{full}: the plugin config names no valid wheel file")
        wheel = into / wheel_name
        await self.distribution.download_layer(art, wheel, creds)
        return wheel, full

    async def push(self, name: str, creds: Any = None,
                   progress: Callable[[dict], Any] | None = None) -> str:
        """Docker's ``plugin push NAME[:TAG]``: upload plugin ``NAME`` (or the plugin
        named without the tag) to the registry its name resolves to; return the
        manifest digest. An engine plugin goes as an OCI artifact holding its wheel,
        a managed plugin with Docker's media types."""
        from . import plugin_dist as dist

        try:
            rec = self.get(name)
        except NotFound:
            base = name.rsplit(":", 1)[0] if managed_mod.has_tag(name) else ""
            if not base or "@" in name:
                raise
            rec = self.get(base)
        full, _ = dist.resolve(name, self.plugin_registry)
        loop = asyncio.get_running_loop()
        quiet = progress or _quiet
        if isinstance(rec, ManagedPlugin):
            tmp = Path(await loop.run_in_executor(None, tempfile.mkdtemp, "", "engine-push-"))
            try:
                layer = tmp / "rootfs.tar.gz"
                digest, diff_id, size = await loop.run_in_executor(
                    None, _pack_to, self.managed_store.rootfs(rec.id), layer)
                cfg = dict(rec.config)
                cfg["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
                return await self.distribution.push(
                    full, config=json.dumps(cfg, sort_keys=True).encode(),
                    config_media_type=dist.MANAGED_CONFIG_MEDIA_TYPE, layer_path=layer,
                    layer_digest=digest, layer_size=size,
                    layer_media_type=dist.MANAGED_LAYER_MEDIA_TYPE,
                    manifest_media_type=dist.DOCKER_MANIFEST, creds=creds, progress=quiet)
            finally:
                await loop.run_in_executor(None, shutil.rmtree, tmp, True)
        if rec.builtin or not rec.dist:
            raise Forbidden(f"plugin {rec.name} was not installed by the engine: only "
                            "installed plugins can be pushed")
        wheel = self._kept_wheel(rec)
        info = await loop.run_in_executor(None, read_wheel, wheel)
        digest, size = await loop.run_in_executor(None, dist.file_digest, wheel)
        manifest = info.manifest or Manifest()
        config = dist.python_config(info.name, info.version, info.entry_points,
                                    {"description": manifest.description,
                                     "privileges": manifest.privileges}, wheel.name)
        return await self.distribution.push(
            full, config=config, config_media_type=dist.PY_CONFIG_MEDIA_TYPE,
            layer_path=wheel, layer_digest=digest, layer_size=size,
            layer_media_type=dist.WHEEL_MEDIA_TYPE, manifest_media_type=dist.OCI_MANIFEST,
            layer_annotations={"org.opencontainers.image.title": wheel.name},
            creds=creds, progress=quiet)

    # -------------------------------------------------------------- managed plugins

    def _check_new_name(self, name: str) -> None:
        if name in self.plugins or name in self.managed:
            raise Conflict(f"plugin {name} already exists")
        drv = managed_mod.driver_name(name)
        for kind in KINDS:
            owner = self._owner.get((kind, drv))
            if owner:
                raise Conflict(f"a {kind} driver named {drv} is already provided by "
                               f"plugin {owner}")

    async def _create_managed(self, name: str, src: Path) -> str:
        loop = asyncio.get_running_loop()
        name = managed_mod.local_name(name.strip())
        cfg = await loop.run_in_executor(None, managed_mod.read_plugin_dir, src)
        async with self._changing:
            self._check_new_name(name)
            p = await loop.run_in_executor(None, self.managed_store.add_from_dir, name, src, cfg)
            self.managed[name] = p
        return name

    async def _pull_managed(self, art: Any, name: str, granted: list[dict] | None,
                            creds: Any, tmp: Path) -> str:
        cfg = managed_mod.parse_config(art.config, art.reference)
        managed_mod.driver_kinds(cfg)
        _require_grant(managed_mod.privileges(cfg), granted, name)
        name = managed_mod.local_name(name)
        self._check_new_name(name)
        layer = tmp / "rootfs.tar.gz"
        await self.distribution.download_layer(art, layer, creds)
        loop = asyncio.get_running_loop()

        def fill(rootfs: Path) -> None:
            with open(layer, "rb") as f:
                managed_mod.unpack_rootfs(f, rootfs)

        async with self._changing:
            self._check_new_name(name)
            p = await loop.run_in_executor(None, self.managed_store.add, name, art.reference,
                                           cfg, fill)
            self.managed[name] = p
        return name

    def _plugin_log_writer(self) -> str:
        """The writer that keeps a managed plugin's output (json-file), if loaded."""
        drv = self.drivers["log"].get("json-file")
        return str(getattr(drv, "writer", "") or "")

    def _remote_driver_class(self, kind: str, p: ManagedPlugin) -> type:
        """A driver class for the plugin's socket, made by the built-in remote driver
        of ``kind`` (found through its entry point, like every driver)."""
        from engine.sdk.remote import PluginSpec

        entry = {"volume": "vol-remote", "network": "net-remote"}[kind]
        rec = self.plugins.get(entry)
        module = rec.module_obj if rec is not None and rec.module_obj is not None else None
        if module is None:
            found = [ep for ep in entry_points_on_path(GROUP) if ep.name == entry]
            if not found:
                raise NotSupported(f"no remote {kind} driver is installed ({entry})")
            module = importlib.import_module(found[0].value.partition(":")[0])
        spec = PluginSpec(name=managed_mod.driver_name(p.name),
                          address=f"unix://{self.runner.socket_path(p)}",
                          source=f"managed plugin {p.name}")
        base = module.driver_for(spec)
        if kind != "volume":
            return base
        rootfs = str(self.managed_store.rootfs(p.id))
        prop = self.runner.propagated_dir(p)
        scope = functools.partial(managed_mod.scope_path, p, rootfs,
                                  str(prop) if prop is not None else None)
        return _scoped_volume_driver(base, scope)

    async def _attach_managed(self, p: ManagedPlugin) -> None:
        """Register and start the plugin's drivers under its driver name."""
        drv_name = managed_mod.driver_name(p.name)
        attached: list[tuple[str, str]] = []
        try:
            for kind in managed_mod.driver_kinds(p.config):
                owner = self._owner.get((kind, drv_name))
                if owner and owner != p.name:
                    raise Conflict(f"{kind} driver {drv_name!r} is already provided by "
                                   f"plugin {owner}")
                cls = self._remote_driver_class(kind, p)
                inst = cls(self._driver_context(kind, drv_name, _managed_state(p)))
                await inst.start()
                self.drivers[kind][drv_name] = inst
                self._owner[(kind, drv_name)] = p.name
                attached.append((kind, drv_name))
        except BaseException:
            await self._detach_managed(p, attached)
            raise
        p.drivers = {k: [n] for k, n in attached}

    async def _detach_managed(self, p: ManagedPlugin,
                              which: list[tuple[str, str]] | None = None) -> None:
        if which is None:
            which = [(k, n) for k, ns in p.drivers.items() for n in ns]
        for kind, drv in which:
            inst = self.drivers[kind].pop(drv, None)
            self._owner.pop((kind, drv), None)
            if inst is not None:
                try:
                    await inst.stop()
                except Exception as e:  # pragma: no cover - best effort
                    log.warning("driver %s of plugin %s failed to stop: %s", drv, p.name, e)
        p.drivers = {}

    async def _enable_managed(self, p: ManagedPlugin, *, boot: bool = False) -> None:
        """Run the plugin (unless its process survived a daemon restart), wait for
        its socket, register its drivers; record it enabled. On failure the plugin
        is stopped and the error raised (recorded only at boot)."""
        loop = asyncio.get_running_loop()
        self._unwatch(p)
        if p.drivers:  # enabled before, then failed: start over
            await self._detach_managed(p)
        try:
            managed_mod.driver_kinds(p.config)
            alive = await loop.run_in_executor(None, self.runner.running, p)
            if not (alive and self.runner.socket_path(p).exists()):
                if alive:
                    await self.runner.stop(p)
                await self.runner.start(p)
            try:
                await self._attach_managed(p)
            except BaseException:
                await self.runner.stop(p)
                raise
        except EngineError as e:
            if not boot:
                raise
            p.error = e.message
            log.error("managed plugin %s failed to start: %s", p.name, e.message)
            return
        p.error = ""
        self._watch(p)
        if not p.enabled:
            p.enabled = True
            await loop.run_in_executor(None, self.managed_store.save, p)

    def _watch(self, p: ManagedPlugin) -> None:
        self._unwatch(p)
        self._watchers[p.id] = asyncio.create_task(self._watch_managed(p))

    def _unwatch(self, p: ManagedPlugin) -> None:
        task = self._watchers.pop(p.id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _watch_managed(self, p: ManagedPlugin) -> None:
        """Start an enabled plugin again when its process exits, as Docker does;
        after :data:`RESTART_ATTEMPTS` failed starts in a row it stays down with the
        error in ``plugin ls``. Its drivers stay registered (they reach the socket
        afresh on every call)."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            m = self.runner.monitor(p)
            try:
                await m.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                if await loop.run_in_executor(None, m.alive):
                    await asyncio.sleep(0.5)
                    continue
            if not p.enabled or self._watchers.get(p.id) is not asyncio.current_task():
                return
            out = await loop.run_in_executor(None, self.runner.output, p)
            log.warning("managed plugin %s exited; starting it again%s", p.name,
                        f" (its output: {out[-300:]})" if out else "")
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))
            try:
                await self.runner.start(p)
                failures = 0
            except EngineError as e:
                failures += 1
                if failures >= RESTART_ATTEMPTS:
                    p.error = f"exited and could not be started again: {e.message}"
                    log.error("managed plugin %s: %s", p.name, p.error)
                    self._watchers.pop(p.id, None)
                    return

    async def start_managed(self) -> None:
        """At daemon start: the managed plugins that were enabled run again (or are
        found still running, their monitors having outlived the daemon)."""
        for p in list(self.managed.values()):
            if p.enabled and not p.drivers:
                await self._enable_managed(p, boot=True)

    async def set_managed(self, name: str, settings: list[str]) -> None:
        """Docker's ``plugin set`` on a disabled managed plugin (env, args, a mount's
        source, a device's path, where its config allows)."""
        p = self.get(name)
        if not isinstance(p, ManagedPlugin):
            raise InvalidArgument("engine plugins have no settings: use driver options")
        if p.enabled and not p.error:
            raise Conflict(f"cannot set on an active plugin, disable plugin {p.name} "
                           "before setting")
        p.config = managed_mod.apply_settings(p.config, settings)
        await asyncio.get_running_loop().run_in_executor(None, self.managed_store.save, p)

    async def _managed_in_use(self, p: ManagedPlugin, in_use: Callable[[str, str], str],
                              *, volumes: bool = True) -> None:
        """Refuse while a container uses one of its drivers or (unless ``volumes`` is
        false) a volume created through its volume driver still exists."""
        for kind, names in p.drivers.items():
            for drv in names:
                _refuse_if_used(p.name, kind, drv, in_use)
                inst = self.drivers[kind].get(drv)
                if volumes and kind == "volume" and inst is not None:
                    vols = [v.name for v in await inst.list()]
                    if vols:
                        raise Conflict(f"plugin {p.name} is in use: volume(s) "
                                       f"{', '.join(sorted(vols))} use its driver {drv}; "
                                       "remove them first")

    async def _disable_managed(self, p: ManagedPlugin, in_use: Callable[[str, str], str],
                               *, force: bool = False) -> None:
        await self._managed_in_use(p, in_use, volumes=not force)
        self._unwatch(p)
        await self._detach_managed(p)
        await self.runner.stop(p)
        p.enabled = False
        p.error = ""
        await asyncio.get_running_loop().run_in_executor(None, self.managed_store.save, p)

    async def _remove_managed(self, p: ManagedPlugin, in_use: Callable[[str, str], str],
                              force: bool) -> None:
        """Stop (when enabled: refused unless ``force``; in use: refused always, as
        Docker does for a plugin with references) and delete rootfs and state."""
        if p.enabled and not p.error:
            if not force:
                raise Conflict(f"plugin {p.name} is enabled: disable it first, or force "
                               "the removal")
            await self._disable_managed(p, in_use, force=True)
        elif p.enabled:
            self._unwatch(p)
            await self._detach_managed(p)
            await self.runner.stop(p)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.managed_store.remove, p.id)
        for kind in ("volume", "network"):
            await loop.run_in_executor(None, shutil.rmtree,
                                       Path(self.data_root, "drivers", kind, _managed_state(p)),
                                       True)
        self.managed.pop(p.name, None)


def _managed_state(p: ManagedPlugin) -> str:
    """The name of a managed plugin's drivers' state directories."""
    return f"managed-{p.id[:16]}"


def _require_grant(asked: Any, granted: Any, name: str) -> None:
    """Refuse an install or upgrade whose granted privileges are not the ones the
    plugin asks for (as Docker does)."""
    if not privileges_match(asked, granted):
        raise Forbidden(f"the privileges granted do not match what plugin {name} asks for: "
                        "read them again with /plugins/privileges")


async def _quiet(_msg: dict) -> None:
    return None


def reference_name(ref: str) -> str:
    """A reference as the user knows it (``docker.io/library/x:latest`` -> ``x:latest``)."""
    from .store import reference

    try:
        return reference.familiar(ref)
    except EngineError:
        return ref


def _pack_to(root: Path, out: Path) -> tuple[str, str, int]:
    with open(out, "wb") as f:
        return managed_mod.pack_rootfs(root, f)


def _scoped_volume_driver(base: type, scope: Callable[[str], str]) -> type:
    """``base`` (a remote volume driver class) with the mount points its plugin
    answers translated to host paths by ``scope``."""
    class Scoped(base):  # type: ignore[misc,valid-type]
        async def mount(self, name: str, mount_id: str) -> str:
            return scope(await super().mount(name, mount_id))

        async def path(self, name: str) -> str:
            return scope(await super().path(name))

        async def get(self, name: str) -> Any:
            info = await super().get(name)
            info.mountpoint = scope(info.mountpoint)
            return info

        async def list(self) -> Any:
            out = await super().list()
            for info in out:
                info.mountpoint = scope(info.mountpoint)
            return out

    Scoped.__name__ = Scoped.__qualname__ = "Managed" + base.__name__
    return Scoped


def _context_root(names: list[str]) -> str:
    """The directory inside a context tar that holds the plugin: ``""`` or the
    one top directory."""
    tops = {n.lstrip("./").split("/", 1)[0] for n in names if n.lstrip("./")}
    if len(tops) == 1:
        top = next(iter(tops))
        if any(n.lstrip("./").startswith(top + "/") for n in names) and \
                top not in ("rootfs",):
            return top
    return ""


def _refuse_if_used(plugin: str, kind: str, driver: str,
                    in_use: Callable[[str, str], str]) -> None:
    """Conflict when ``in_use`` names something that uses ``plugin``'s ``kind`` driver."""
    user = in_use(kind, driver)
    if user:
        raise Conflict(f"plugin {plugin} is in use: {kind} driver {driver} is used by {user}")


def _unpack_context(context: bytes, into: Path) -> Path:
    """Unpack a tar of a plugin directory into ``into`` and return the directory
    that holds the plugin (a tar of one top directory is unwrapped).

    A Python plugin's sources are taken as directories and regular files only; a
    managed plugin's (``config.json`` beside ``rootfs/``) keeps links, modes and
    owners, as its rootfs needs them. Nothing is written outside ``into``."""
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(context)) as tf:
            names = tf.getnames()
    except (tarfile.TarError, OSError) as e:
        raise InvalidArgument(f"invalid plugin context: {e}") from None
    top = _context_root(names)
    rel = {n.lstrip("./").removeprefix(top + "/" if top else "") for n in names}
    if "config.json" in rel and any(n == "rootfs" or n.startswith("rootfs/") for n in rel) \
            and "pyproject.toml" not in rel:
        managed_mod.unpack_rootfs(io.BytesIO(context), into)
        return into / top if top else into
    try:
        with tarfile.open(fileobj=io.BytesIO(context)) as tf:
            for member in tf:
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise InvalidArgument(f"invalid plugin context: {member.name!r} "
                                          "points outside the directory")
                target = into.joinpath(*parts) if parts else into
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():  # sources are files: links and devices are dropped
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    assert src is not None
                    with src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except (tarfile.TarError, OSError) as e:
        raise InvalidArgument(f"invalid plugin context: {e}") from None
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (into / "pyproject.toml").exists():
        return entries[0]
    return into
