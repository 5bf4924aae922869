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
"""
from __future__ import annotations

import asyncio
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
import sysconfig
import tarfile
import tempfile
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
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
from engine.sdk.errors import Conflict, DriverError, Forbidden, InvalidArgument, NotFound
from engine.sdk.packaging import (
    Manifest,
    WheelInfo,
    build_wheel,
    installed_manifest,
    normalize_name,
    privileges_match,
    read_wheel,
    validate_plugin_dir,
)

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
        self.env = PluginEnv(Path(data_root, "plugins"))
        self.installed_file = Path(data_root, "plugins", "installed.json")
        self._changing = asyncio.Lock()  # one install, upgrade or removal at a time

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
        disabled = self._disabled()
        installed = self._installed()
        for ep in entry_points(group=GROUP) if eps is None else eps:
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
        """A plugin by name, by id, or by an unambiguous prefix of its id."""
        rec = self.plugins.get(name)
        if rec is not None:
            return rec
        if len(name) >= 4 and all(c in "0123456789abcdef" for c in name):
            found = [r for r in self.plugins.values() if r.id.startswith(name)]
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
        rec.enabled = True
        self._load(rec)
        self._save_disabled()
        await self.start_drivers([(k, n) for k, ns in rec.drivers.items() for n in ns])
        if rec.error:
            raise InvalidArgument(f"plugin {name} failed to enable: {rec.error}")

    async def disable(self, name: str, in_use: Callable[[str, str], str]) -> None:
        """Disable a plugin; ``in_use(kind, driver)`` tells whether anything uses it."""
        rec = self.get(name)
        name = rec.name
        if not rec.enabled:
            raise InvalidArgument(f"plugin {name} is already disabled")
        for kind, names in rec.drivers.items():
            for drv in names:
                user = in_use(kind, drv)
                if user:
                    raise Conflict(f"plugin {name} is in use: {kind} driver {drv} "
                                   f"is used by {user}")
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
            raise InvalidArgument(
                f"installing {remote!r} from a registry is not supported yet: give the "
                "absolute path of a wheel file or of a plugin directory")
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
        """What the plugin at ``remote`` asks for, read without importing it. Blocks
        briefly for a wheel; a directory is only read, not built."""
        if os.path.isabs(remote) and os.path.isdir(remote):
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
            if not privileges_match(info.manifest.privileges, granted):
                raise Forbidden(f"the privileges granted do not match what plugin {info.name} "
                                "asks for: read them again with /plugins/privileges")
            installed = self._installed()
            key = normalize_name(info.name)
            if key in installed:
                raise Conflict(f"plugin {info.name} is already installed: upgrade it instead")
            names = self._names(info, alias)
            for name in names.values():
                if name in self.plugins:
                    raise Conflict(f"plugin {name} already exists")
            self.env.install(info.path)
        installed[key] = {"name": info.name, "version": info.version, "source": label,
                          "aliases": {ep: n for ep, n in names.items() if ep != n}}
        self._save_installed(installed)
        self._save_disabled(also=list(names.values()))  # installed disabled, as in Docker
        return sorted(names.values())

    async def install(self, remote: str, alias: str = "", granted: list[dict] | None = None,
                      *, label: str = "") -> list[str]:
        """Install the plugin at ``remote`` (an absolute path to a wheel or a plugin
        directory), disabled; return the names of its plugins. ``granted`` must match
        the privileges it asks for; ``label`` is the reference shown for it
        (``remote`` by default)."""
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
            siblings = self._siblings(rec)
            for r in siblings:
                if r.enabled and not r.error:
                    if not force:
                        raise Conflict(f"plugin {r.name} is enabled: disable it first, "
                                       "or force the removal")
                    await self.disable(r.name, in_use)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.env.uninstall, rec.dist)
            self._forget(siblings)
            installed = self._installed()
            installed.pop(normalize_name(rec.dist), None)
            self._save_installed(installed)
            self._save_disabled()

    def _upgrade_files(self, rec: PluginRecord, remote: str, granted: list[dict] | None) -> None:
        with tempfile.TemporaryDirectory(prefix="engine-plugin-") as tmp:
            info = self._source(remote, Path(tmp))
            assert info.manifest is not None
            if normalize_name(info.name) != normalize_name(rec.dist):
                raise InvalidArgument(f"{remote} is {info.name}, not an upgrade of {rec.dist}")
            if not privileges_match(info.manifest.privileges, granted):
                raise Forbidden(f"the privileges granted do not match what plugin {info.name} "
                                "asks for: read them again with /plugins/privileges")
            self.env.install(info.path, reinstall=True)
        installed = self._installed()
        entry = installed.setdefault(normalize_name(rec.dist), {"name": info.name, "aliases": {}})
        entry.update(version=info.version, source=remote)
        self._save_installed(installed)
        old = {r.entry for r in self.plugins.values() if r.dist == rec.dist}
        aliases = entry.get("aliases", {})
        self._save_disabled(also=[aliases.get(ep, ep) for ep in info.entry_points
                                  if ep not in old])

    async def upgrade(self, name: str, remote: str, granted: list[dict] | None) -> None:
        """Replace the distribution behind plugin ``name`` with the one at ``remote``.
        As in Docker, the plugin must be disabled first and stays disabled."""
        async with self._changing:
            rec = self.get(name)
            siblings = self._siblings(rec)
            if any(r.enabled and not r.error for r in siblings):
                raise Conflict(f"plugin {rec.name} must be disabled before upgrading")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._upgrade_files, rec, remote, granted)
            self._forget(siblings)
            self.discover()

    async def create(self, name: str, context: bytes) -> list[str]:
        """Docker's ``plugin create``: ``context`` is a tar of a plugin directory.
        The plugin is built, installed under ``name`` and left disabled."""
        name = name.removesuffix(":latest")
        if not name:
            raise InvalidArgument("a plugin name is required")
        loop = asyncio.get_running_loop()
        tmp = Path(await loop.run_in_executor(None, tempfile.mkdtemp, "", "engine-plugin-"))
        try:
            src = await loop.run_in_executor(None, _unpack_context, context, tmp)
            manifest = (await loop.run_in_executor(None, validate_plugin_dir, src))[2]
            return await self.install(str(src), name, manifest.privileges,
                                      label=f"created:{name}")
        finally:
            await loop.run_in_executor(None, shutil.rmtree, tmp, True)


def _unpack_context(context: bytes, into: Path) -> Path:
    """Unpack a tar of a plugin directory into ``into`` and return the directory
    that holds ``pyproject.toml`` (a tar of one top directory is unwrapped). Only
    directories and regular files are taken, and none outside ``into``."""
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
