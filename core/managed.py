"""Docker managed plugins: a plugin shipped as a root filesystem and run as a container.

What ``docker plugin create NAME DIR`` takes is a directory with ``config.json``
(Docker's plugin config, version 1) and ``rootfs/``. Registries serve the same thing
as a manifest whose config has the media type :data:`CONFIG_MEDIA_TYPE` and whose one
layer is the rootfs as a gzipped tar.

This module has three parts:

* the config: :func:`parse_config` reads it in any key case (Docker decodes it with
  Go's case-insensitive JSON) into Docker's canonical field names, :func:`privileges`
  computes what a user must grant exactly as Docker does (network, host ipc/pid,
  mounts, devices, all devices, capabilities), :func:`driver_kinds` maps its interface
  types to the engine's driver kinds;
* the store, :class:`ManagedStore`: one directory per plugin under
  ``<data-root>/plugins/managed/<id>/`` with ``plugin.json`` (name, reference,
  config, enabled) and ``rootfs/``; its methods block (call them from an executor);
* the runner, :class:`ManagedRunner`: ``enable`` runs the plugin's entrypoint in its
  rootfs through the built-in runtime and a monitor (like a container, but not one
  that ``ps`` shows), with only the privileges of its config, the host directory
  ``<exec-root>/plugins/<id12>/`` bind-mounted at ``/run/docker/plugins``; waits for
  the socket to appear and hands driver classes for it to the plugin host.

``PropagatedMount`` is a host directory (``<plugin dir>/propagated-mount``) bound at
that path, as Docker does it: on the host the directory is a mount of its own, in a
peer group of its own (bound onto itself, made private, then shared), and the plugin
gets it with shared propagation (its root ``rshared``, see
:func:`engine.core.runtime.rootfs.prepare`): files it writes there and mounts it
makes there (a volume plugin mounting a remote filesystem per volume) are seen by the
host and so by the containers that use its volumes. Stopping the plugin unmounts that
directory and whatever is still mounted below it.

The drivers themselves are the remote volume and network drivers (Docker's v1 plugin
protocol over the plugin's socket), found through their entry points. A volume
plugin answers mount points inside its own root; they are scoped to the host as Docker
does (the plugin's rootfs, or its propagated mount).
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from engine.sdk.errors import DriverError, EngineError, InvalidArgument

from .runtime import caps as _caps
from .util import atomic_write, new_id, rfc3339

log = logging.getLogger("engine.plugins.managed")

#: The media type of a managed plugin's config blob in a registry.
CONFIG_MEDIA_TYPE = "application/vnd.docker.plugin.v1+json"
#: Its one layer: the rootfs as a gzipped tar.
LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: Where the plugin finds (and creates) its sockets inside its root.
SOCKET_DIR = "/run/docker/plugins"
#: How long ``enable`` waits for the plugin's socket.
START_TIMEOUT = 30.0
#: json-file options of a plugin's output log.
LOG_OPTIONS = {"max-size": "1m", "max-file": "2"}

#: Interface types the engine can serve, and the driver kind of each.
DRIVER_KINDS = {
    "docker.volumedriver/1.0": "volume",
    "docker.networkdriver/1.0": "network",
}
#: Interface types Docker knows that the engine does not serve (yet).
UNSUPPORTED_TYPES = {
    "docker.ipamdriver/1.0": "IPAM drivers",
    "docker.authz/1.0": "authorization plugins",
    "docker.logdriver/1.0": "log drivers",
    "docker.metricscollector/1.0": "metrics collectors",
    "docker.csicontroller/1.0": "CSI plugins",
    "docker.csinode/1.0": "CSI plugins",
}


class NotSupported(EngineError):
    """A part of Docker's plugin model the engine does not implement."""

    status = 501


# ---------------------------------------------------------------- the config

# Docker's PluginConfig, field by field: canonical name -> nested schema (a dict for
# an object, a one-element list for a list of objects, None for a plain value).
_SCHEMA: dict[str, Any] = {
    "Description": None, "Documentation": None, "DockerVersion": None,
    "Entrypoint": None, "WorkDir": None, "PropagatedMount": None,
    "IpcHost": None, "PidHost": None,
    "User": {"UID": None, "GID": None},
    "Network": {"Type": None},
    "Interface": {"Types": None, "Socket": None, "ProtocolScheme": None},
    "Linux": {"Capabilities": None, "AllowAllDevices": None,
              "Devices": [{"Name": None, "Description": None, "Settable": None,
                           "Path": None}]},
    "Mounts": [{"Name": None, "Description": None, "Settable": None, "Source": None,
                "Destination": None, "Type": None, "Options": None}],
    "Env": [{"Name": None, "Description": None, "Settable": None, "Value": None}],
    "Args": {"Name": None, "Description": None, "Settable": None, "Value": None},
    "rootfs": {"type": None, "diff_ids": None},
}


def _canon(value: Any, schema: Any, where: str) -> Any:
    """``value`` with its keys renamed to the schema's spelling (matched without
    regard to case, as Go's JSON decoder does); unknown keys are dropped."""
    if schema is None:
        return value
    if isinstance(schema, list):
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidArgument(f"{where}: expected a list")
        return [_canon(v, schema[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected an object")
    by_lower = {k.lower(): k for k in schema}
    out: dict[str, Any] = {}
    for key, v in value.items():
        canon = by_lower.get(str(key).lower())
        if canon is not None:
            out[canon] = _canon(v, schema[canon], f"{where}.{canon}")
    return out


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise InvalidArgument(f"{where}: expected a list of strings")
    return list(value)


def parse_config(raw: bytes | str | dict, origin: str = "config.json") -> dict[str, Any]:
    """Docker's plugin config in canonical form, checked; errors name ``origin``.

    Every field is present afterwards (empty when absent), so the rest of the engine
    reads ``cfg["Linux"]["Capabilities"]`` without guarding."""
    if isinstance(raw, dict):
        doc = raw
    else:
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"{origin}: invalid JSON: {e}") from None
    cfg = _canon(doc, _SCHEMA, origin)
    for key, sub in _SCHEMA.items():
        if key not in cfg:
            cfg[key] = [] if isinstance(sub, list) else ({} if isinstance(sub, dict) else None)
    for key in ("Description", "Documentation", "DockerVersion", "WorkDir", "PropagatedMount"):
        if not isinstance(cfg[key] or "", str):
            raise InvalidArgument(f"{origin}: {key} must be a string")
        cfg[key] = cfg[key] or ""
    cfg["IpcHost"], cfg["PidHost"] = bool(cfg["IpcHost"]), bool(cfg["PidHost"])
    cfg["Entrypoint"] = _strings(cfg["Entrypoint"], f"{origin}: Entrypoint")
    iface = cfg["Interface"]
    iface["Types"] = _strings(iface.get("Types"), f"{origin}: Interface.Types")
    iface["Socket"] = iface.get("Socket") or ""
    iface.setdefault("ProtocolScheme", "")
    if not iface["Types"]:
        raise InvalidArgument(f"{origin}: Interface.Types is empty: a plugin implements "
                              "at least one interface (docker.volumedriver/1.0, ...)")
    if not iface["Socket"] or "/" in iface["Socket"]:
        raise InvalidArgument(f"{origin}: Interface.Socket must name a socket file "
                              "(like \"plugin.sock\")")
    if not cfg["Entrypoint"]:
        raise InvalidArgument(f"{origin}: Entrypoint is empty")
    cfg["Network"]["Type"] = cfg["Network"].get("Type") or ""
    linux = cfg["Linux"]
    linux["Capabilities"] = _strings(linux.get("Capabilities"), f"{origin}: Linux.Capabilities")
    for cap in linux["Capabilities"]:
        try:
            _caps.normalize(cap)
        except ValueError as e:
            raise InvalidArgument(f"{origin}: Linux.Capabilities: {e}") from None
    linux["AllowAllDevices"] = bool(linux.get("AllowAllDevices"))
    linux.setdefault("Devices", [])
    for i, m in enumerate(cfg["Mounts"]):
        if not m.get("Destination"):
            raise InvalidArgument(f"{origin}: Mounts[{i}] has no Destination")
        m["Options"] = _strings(m.get("Options"), f"{origin}: Mounts[{i}].Options")
        m.setdefault("Type", "bind")
    for i, e in enumerate(cfg["Env"]):
        if not e.get("Name"):
            raise InvalidArgument(f"{origin}: Env[{i}] has no Name")
    args = cfg["Args"]
    args["Value"] = _strings(args.get("Value"), f"{origin}: Args.Value")
    args.setdefault("Name", "")
    args.setdefault("Settable", [])
    for key in ("UID", "GID"):
        if cfg["User"].get(key) is not None and not isinstance(cfg["User"][key], int):
            raise InvalidArgument(f"{origin}: User.{key} must be a number")
    if cfg["PropagatedMount"] and not cfg["PropagatedMount"].startswith("/"):
        raise InvalidArgument(f"{origin}: PropagatedMount must be an absolute path")
    return cfg


def privileges(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """What installing the plugin grants it, in Docker's words and order."""
    out: list[dict[str, Any]] = []
    net = cfg["Network"]["Type"]
    if net not in ("", "null", "bridge"):
        out.append({"Name": "network", "Description": "permissions to access a network",
                    "Value": [net]})
    if cfg["IpcHost"]:
        out.append({"Name": "host ipc namespace",
                    "Description": "allow access to host ipc namespace", "Value": ["true"]})
    if cfg["PidHost"]:
        out.append({"Name": "host pid namespace",
                    "Description": "allow access to host pid namespace", "Value": ["true"]})
    for m in cfg["Mounts"]:
        if m.get("Source") is not None:
            out.append({"Name": "mount", "Description": "host path to mount",
                        "Value": [m["Source"]]})
    for d in cfg["Linux"]["Devices"]:
        if d.get("Path") is not None:
            out.append({"Name": "device", "Description": "host device to access",
                        "Value": [d["Path"]]})
    if cfg["Linux"]["AllowAllDevices"]:
        out.append({"Name": "allow-all-devices",
                    "Description": "allow 'rwm' access to all devices", "Value": ["true"]})
    if cfg["Linux"]["Capabilities"]:
        out.append({"Name": "capabilities",
                    "Description": "list of additional capabilities required",
                    "Value": list(cfg["Linux"]["Capabilities"])})
    return out


def apply_settings(cfg: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """A copy of ``cfg`` with Docker's ``plugin set`` arguments applied:
    ``NAME=VALUE`` for an env variable or the args (space-separated), and
    ``MOUNT.source=PATH`` or ``DEVICE.path=PATH``; each only where the config lists
    the field as settable."""
    out = json.loads(json.dumps(cfg))
    for item in settings:
        if not isinstance(item, str) or "=" not in item:
            raise InvalidArgument(f"invalid setting {item!r}: expected NAME=VALUE")
        key, _, value = item.partition("=")
        name, _, fld = key.partition(".")
        if fld:
            table = {"source": out["Mounts"], "path": out["Linux"]["Devices"]}.get(fld)
            entry = next((e for e in table or [] if e.get("Name") == name), None)
            if entry is None:
                raise InvalidArgument(f"setting {key!r} not found in the plugin configuration")
            if fld not in (entry.get("Settable") or []):
                raise InvalidArgument(f"{key!r} is not settable")
            entry["Source" if fld == "source" else "Path"] = value
            continue
        env = next((e for e in out["Env"] if e.get("Name") == name), None)
        if env is not None:
            if "value" not in (env.get("Settable") or []):
                raise InvalidArgument(f"{name!r} is not settable")
            env["Value"] = value
        elif name and name == out["Args"].get("Name"):
            if "value" not in (out["Args"].get("Settable") or []):
                raise InvalidArgument(f"{name!r} is not settable")
            out["Args"]["Value"] = value.split()
        else:
            raise InvalidArgument(f"setting {name!r} not found in the plugin configuration")
    return out


#: served by the plugin's own network driver: the remote network driver asks a plugin
#: that implements ``IpamDriver`` for its pools and addresses (weaveworks/net-plugin
#: declares both); an IPAM plugin on its own is not served
IPAM_TYPE = "docker.ipamdriver/1.0"


def driver_kinds(cfg: dict[str, Any]) -> list[str]:
    """The engine driver kinds the plugin provides; an interface the engine cannot
    serve is refused with a clear "not supported"."""
    kinds = []
    types = cfg["Interface"]["Types"]
    for t in types:
        if t == IPAM_TYPE and "docker.networkdriver/1.0" in types:
            continue
        kind = DRIVER_KINDS.get(t)
        if kind is None:
            what = UNSUPPORTED_TYPES.get(t)
            raise NotSupported(f"plugin interface {t} is not supported"
                               + (f" ({what} as managed plugins)" if what else "")
                               + f": the engine runs {', '.join(sorted(DRIVER_KINDS))}")
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def has_tag(name: str) -> bool:
    """Whether a plugin name or reference carries a tag or a digest."""
    return "@" in name or ":" in name.rsplit("/", 1)[-1]


def local_name(name: str) -> str:
    """A managed plugin's name as Docker keeps it: with ``:latest`` unless tagged."""
    return name if has_tag(name) else f"{name}:latest"


def driver_name(plugin_name: str) -> str:
    """The driver name a plugin's drivers are known by: its name, ``:latest`` dropped
    (``weaveworks/net-plugin:latest`` -> ``weaveworks/net-plugin``), as Docker."""
    return plugin_name.removesuffix(":latest")


def is_managed_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a managed plugin's directory (``config.json`` and
    ``rootfs/``), as opposed to a Python plugin directory."""
    p = Path(path)
    return ((p / "config.json").is_file() and (p / "rootfs").is_dir()
            and not (p / "rootfs").is_symlink())


def read_plugin_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked config of a managed plugin directory."""
    p = Path(path)
    if not (p / "rootfs").is_dir() or (p / "rootfs").is_symlink():
        raise InvalidArgument(f"{p}: no rootfs/ directory: not a managed plugin")
    try:
        raw = (p / "config.json").read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{p}: no config.json: not a managed plugin") from None
    cfg = parse_config(raw, str(p / "config.json"))
    driver_kinds(cfg)
    return cfg


# ---------------------------------------------------------------- tar helpers


def _inside(root: Path, target: Path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(target)]) == real_root


def unpack_rootfs(fileobj: IO[bytes], into: Path) -> None:
    """Unpack a (gzipped) rootfs tar into ``into``, never outside it: absolute names,
    ``..`` and paths through symbolic links leaving the root are refused; device
    nodes are left out (``/dev`` is a tmpfs in the plugin). Owners, modes and times
    are kept. Blocks."""
    import tarfile
    import zlib

    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
            for member in tf:
                name = member.name.lstrip("/")
                parts = Path(name).parts
                if ".." in parts:
                    raise InvalidArgument(f"rootfs: {member.name!r} points outside the root")
                if not parts or member.isdev() or member.isfifo():
                    continue
                target = into.joinpath(*parts)
                if not _inside(into, target.parent):
                    raise InvalidArgument(f"rootfs: {member.name!r} leaves the root "
                                          "through a symbolic link")
                if member.islnk():
                    link = member.linkname.lstrip("/")
                    if ".." in Path(link).parts or not _inside(into, into / link):
                        raise InvalidArgument(f"rootfs: hard link {member.name!r} leaves "
                                              "the root")
                    member.linkname = link
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()
                member.name = name
                tf.extract(member, str(into), set_attrs=True, numeric_owner=True)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise InvalidArgument(f"invalid rootfs archive: {e}") from None


def pack_rootfs(root: Path, out: IO[bytes]) -> tuple[str, str, int]:
    """Write ``root`` as a gzipped tar to ``out``; return ``(digest of the gzip,
    digest of the tar (the diff id), size of the gzip)``. Entries are sorted and the
    gzip header carries no time, so the same tree gives the same bytes."""
    import gzip
    import tarfile

    class _Hashing(io.RawIOBase):
        def __init__(self, sink: IO[bytes]) -> None:
            self.sink, self.h, self.n = sink, hashlib.sha256(), 0

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            data = bytes(b)
            self.h.update(data)
            self.n += len(data)
            self.sink.write(data)
            return len(data)

    compressed = _Hashing(out)
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
        raw = _Hashing(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    path = os.path.join(dirpath, name)
                    arc = os.path.relpath(path, root)
                    info = tf.gettarinfo(path, arc)
                    if info is None:  # a socket: not part of a filesystem image
                        continue
                    if info.isreg():
                        with open(path, "rb") as f:
                            tf.addfile(info, f)
                    elif not (info.isdev() or info.isfifo()):
                        tf.addfile(info)
    return ("sha256:" + compressed.h.hexdigest(), "sha256:" + raw.h.hexdigest(),
            compressed.n)


# ---------------------------------------------------------------- the store


@dataclass
class ManagedPlugin:
    """One managed plugin, as stored in its ``plugin.json``."""

    id: str
    name: str
    config: dict[str, Any]
    reference: str = ""
    enabled: bool = False
    created: str = ""
    error: str = ""                                 # the last failure to enable
    drivers: dict[str, list[str]] = field(default_factory=dict)  # while enabled

    @property
    def privileges(self) -> list[dict[str, Any]]:
        return privileges(self.config)

    @property
    def description(self) -> str:
        return str(self.config.get("Description") or "")

    def to_api(self) -> dict[str, Any]:
        """Docker's Plugin object."""
        cfg = {k: v for k, v in self.config.items() if k != "rootfs"}
        cfg["Interface"] = dict(cfg["Interface"])
        return {
            "Id": self.id,
            "Name": self.name,
            "Enabled": self.enabled and not self.error,
            "PluginReference": self.reference,
            "Settings": {
                "Mounts": [dict(m) for m in self.config["Mounts"]],
                "Env": [f"{e['Name']}={e['Value']}" for e in self.config["Env"]
                        if e.get("Value") is not None],
                "Args": list(self.config["Args"]["Value"]),
                "Devices": [dict(d) for d in self.config["Linux"]["Devices"]],
            },
            "Config": cfg,
            "Error": self.error,
            "Builtin": False,
            "Drivers": self.drivers,
            "Distribution": None,
            "Managed": True,
        }

    def to_json(self) -> bytes:
        return json.dumps({"Id": self.id, "Name": self.name, "Reference": self.reference,
                           "Enabled": self.enabled, "Created": self.created,
                           "Config": self.config}, indent=1, sort_keys=True).encode()


class ManagedStore:
    """Managed plugins on disk: ``<data-root>/plugins/managed/<id>/``. Every method
    blocks; a plugin becomes visible only once complete (it is assembled in a
    ``.tmp-*`` directory and renamed into place)."""

    def __init__(self, data_root: str | os.PathLike[str]) -> None:
        self.root = Path(data_root, "plugins", "managed")

    def dir(self, plugin_id: str) -> Path:
        return self.root / plugin_id

    def rootfs(self, plugin_id: str) -> Path:
        return self.root / plugin_id / "rootfs"

    def load(self) -> list[ManagedPlugin]:
        """Every complete plugin; leftovers of an interrupted install are deleted."""
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".tmp-"):
                shutil.rmtree(d, ignore_errors=True)
                continue
            try:
                doc = json.loads((d / "plugin.json").read_bytes())
                out.append(ManagedPlugin(id=doc["Id"], name=doc["Name"],
                                         reference=doc.get("Reference", ""),
                                         enabled=bool(doc.get("Enabled")),
                                         created=doc.get("Created", ""),
                                         config=parse_config(doc["Config"], str(d))))
            except (OSError, ValueError, KeyError, InvalidArgument) as e:
                log.error("managed plugin %s: unreadable state (%s); skipped", d.name, e)
        return out

    def save(self, p: ManagedPlugin) -> None:
        atomic_write(self.dir(p.id) / "plugin.json", p.to_json())

    def add(self, name: str, reference: str, config: dict[str, Any],
            fill: Callable[[Path], None]) -> ManagedPlugin:
        """A new plugin whose rootfs ``fill(rootfs_dir)`` writes; disabled."""
        self.root.mkdir(parents=True, exist_ok=True)
        p = ManagedPlugin(id=new_id(), name=name, reference=reference, config=config,
                          created=rfc3339())
        tmp = self.root / f".tmp-{p.id}"
        try:
            (tmp / "rootfs").mkdir(parents=True)
            fill(tmp / "rootfs")
            atomic_write(tmp / "plugin.json", p.to_json())
            os.rename(tmp, self.dir(p.id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return p

    def add_from_dir(self, name: str, src: Path, config: dict[str, Any]) -> ManagedPlugin:
        """``docker plugin create``: copy ``src/rootfs`` (links and modes kept)."""
        def fill(rootfs: Path) -> None:
            shutil.copytree(src / "rootfs", rootfs, symlinks=True, dirs_exist_ok=True)
        return self.add(name, "", config, fill)

    def remove(self, plugin_id: str) -> None:
        d = self.dir(plugin_id)
        if d.exists():
            trash = self.root / f".tmp-rm-{plugin_id}"
            os.rename(d, trash)
            shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------- the runner


def plugin_spec(p: ManagedPlugin, *, rootfs: str, socket_dir: str,
                propagated: str | None) -> dict[str, Any]:
    """The OCI runtime spec of the plugin's process: its entrypoint and args, env,
    working directory and user; its capabilities on top of Docker's defaults; host
    network/ipc/pid when it asks; its mounts and devices; ``socket_dir`` at
    ``/run/docker/plugins``. Blocks briefly (reads the rootfs's passwd)."""
    from .runtime import spec as spec_mod

    cfg = p.config
    user = ""
    if cfg["User"].get("UID") is not None:
        user = str(cfg["User"]["UID"])
        if cfg["User"].get("GID") is not None:
            user += f":{cfg['User']['GID']}"
    host_net = cfg["Network"]["Type"] == "host"
    hc: dict[str, Any] = {
        "CapAdd": list(cfg["Linux"]["Capabilities"]),
        "PidMode": "host" if cfg["PidHost"] else "",
        "IpcMode": "host" if cfg["IpcHost"] else "",
        "UTSMode": "host" if host_net else "",
        "Devices": [{"PathOnHost": d["Path"], "PathInContainer": d["Path"],
                     "CgroupPermissions": "rwm"}
                    for d in cfg["Linux"]["Devices"] if d.get("Path")],
    }
    mounts: list[dict[str, Any]] = [
        {"destination": SOCKET_DIR, "type": "bind", "source": socket_dir,
         "options": ["rbind", "rw"]},
    ]
    if host_net:
        for f in ("/etc/hosts", "/etc/resolv.conf"):
            if os.path.exists(f) and os.path.isfile(os.path.join(rootfs, f.lstrip("/"))):
                mounts.append({"destination": f, "type": "bind", "source": f,
                               "options": ["rbind", "ro"]})
    for m in cfg["Mounts"]:
        mtype = m.get("Type") or "bind"
        if mtype == "bind" and not m.get("Source"):
            raise InvalidArgument(f"plugin {p.name}: mount {m.get('Name') or m['Destination']}"
                                  " has no source: set it with plugin set "
                                  f"{m.get('Name') or 'NAME'}.source=PATH")
        opts = list(m["Options"]) or (["rbind", "rw"] if mtype == "bind" else [])
        if mtype == "bind" and not any(o in ("bind", "rbind") for o in opts):
            opts.insert(0, "rbind")
        mounts.append({"destination": m["Destination"], "type": mtype,
                       "source": m.get("Source") or mtype, "options": opts})
    if propagated is not None:
        # the host directory's shared mount bound in: what the plugin writes or mounts
        # there, the host sees
        mounts.append({"destination": cfg["PropagatedMount"], "type": "bind",
                       "source": propagated, "options": ["rbind", "rw", "rshared"]})
    env = [f"{e['Name']}={e['Value']}" for e in cfg["Env"] if e.get("Value") is not None]
    try:
        spec = spec_mod.build_spec(
            container_id=p.id, args=list(cfg["Entrypoint"]) + list(cfg["Args"]["Value"]),
            env=[spec_mod.DEFAULT_PATH_ENV, *env], cwd=cfg["WorkDir"] or "/", user=user,
            hostname="" if host_net else p.id[:12], rootfs=rootfs, mounts=mounts,
            host_network=host_net, host_config=hc, cgroups_path=f"/engine-plugins/{p.id}",
            annotations={"org.engine.plugin.name": p.name})
    except ValueError as e:
        raise InvalidArgument(f"plugin {p.name}: {e}") from None
    if cfg["Linux"]["AllowAllDevices"]:
        spec["linux"]["resources"]["devices"].append({"allow": True, "access": "rwm"})
    if propagated is not None:
        spec["linux"]["rootfsPropagation"] = "rshared"  # keeps the bind's peer group
    return spec


def scope_path(p: ManagedPlugin, rootfs: str, propagated: str | None, path: str) -> str:
    """A path the plugin answered (inside its root) as the host sees it: under the
    propagated mount's host directory when it is below ``PropagatedMount``, else
    under the rootfs. The plugin's answer never leaves those directories."""
    if not path:
        return path
    mount = p.config["PropagatedMount"]
    base, rel = rootfs, path
    if propagated is not None and mount and (path == mount or path.startswith(mount + "/")):
        base, rel = propagated, path[len(mount):]
    parts = [x for x in Path("/" + rel.lstrip("/")).parts[1:] if x not in ("", ".")]
    if ".." in parts:
        raise DriverError(f"plugin {p.name} answered a path outside its root: {path}")
    return os.path.join(base, *parts)


def _read_log(log_dir: Path, limit: int = 2000) -> str:
    """The plugin's recent output (its json-file log), for error messages."""
    def mtime(f: Path) -> float:
        try:
            return f.stat().st_mtime
        except OSError:  # rotated away meanwhile
            return 0.0

    lines: list[str] = []
    files = [f for f in log_dir.glob("*-json.log*") if not f.name.endswith(".gz")]
    for f in sorted(files, key=mtime):
        try:
            for raw in f.read_text(errors="replace").splitlines():
                try:
                    lines.append(str(json.loads(raw).get("log", "")))
                except ValueError:
                    continue
        except OSError:
            continue
    text = "".join(lines).strip()
    return text[-limit:]


class ManagedRunner:
    """Starts and stops managed plugins' processes. ``exec_root`` holds, per plugin,
    ``plugins/<id12>/`` (the socket directory the plugin sees as
    ``/run/docker/plugins``) and ``pm/<id16>/`` (bundle, monitor and log)."""

    def __init__(self, exec_root: str | os.PathLike[str], store: ManagedStore,
                 log_writer: Callable[[], str]) -> None:
        self.exec_root = Path(exec_root)
        self.store = store
        self._log_writer = log_writer

    def socket_dir(self, p: ManagedPlugin) -> Path:
        return self.exec_root / "plugins" / p.id[:12]

    def socket_path(self, p: ManagedPlugin) -> Path:
        return self.socket_dir(p) / p.config["Interface"]["Socket"]

    def state_dir(self, p: ManagedPlugin) -> Path:
        return self.exec_root / "pm" / p.id[:16]

    def propagated_dir(self, p: ManagedPlugin) -> Path | None:
        if not p.config["PropagatedMount"]:
            return None
        return self.store.dir(p.id) / "propagated-mount"

    def monitor(self, p: ManagedPlugin):  # type: ignore[no-untyped-def]
        """The handle on the plugin's monitor (a :class:`~.runtime.client.Monitor`)."""
        from .runtime import client as monitor_client

        return monitor_client.Monitor(str(self.state_dir(p)))

    def output(self, p: ManagedPlugin) -> str:
        """The plugin's recent output. Blocks briefly."""
        return _read_log(self.state_dir(p))

    def running(self, p: ManagedPlugin) -> bool:
        """Whether the plugin's monitor (of this daemon or an earlier one) is alive."""
        sdir = self.state_dir(p)
        return sdir.is_dir() and self.monitor(p).alive()

    def _prepare(self, p: ManagedPlugin) -> dict[str, Any]:
        """Blocking half of start: directories, the propagated mount, the bundle."""
        from .runtime import spec as spec_mod

        sock_dir, sdir = self.socket_dir(p), self.state_dir(p)
        shutil.rmtree(sdir, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
        sock_dir.mkdir(parents=True, mode=0o700)
        sdir.mkdir(parents=True, mode=0o700)
        prop = self.propagated_dir(p)
        if prop is not None:
            prop.mkdir(parents=True, exist_ok=True)
            _share_mount(str(prop))
        spec = plugin_spec(p, rootfs=str(self.store.rootfs(p.id)), socket_dir=str(sock_dir),
                           propagated=str(prop) if prop is not None else None)
        spec_mod.write_bundle(str(sdir), spec)
        return spec

    async def start(self, p: ManagedPlugin, timeout: float = START_TIMEOUT) -> None:
        """Run the plugin and wait for its socket; on failure nothing keeps running
        and the error carries the plugin's own output."""
        from .runtime import client as monitor_client

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._prepare, p)
        except BaseException:
            await loop.run_in_executor(None, self._cleanup, p)
            raise
        sdir = self.state_dir(p)
        writer = self._log_writer()
        # kept small: the exec root is often a tmpfs and a plugin runs for months
        log_ctx = {"container_id": p.id, "container_name": p.name, "image": p.reference,
                   "log_dir": str(sdir), "options": dict(LOG_OPTIONS), "labels": {}}
        try:
            await monitor_client.create(
                container_id=p.id, bundle=str(sdir), state_dir=str(sdir),
                log_writer=writer or None, log_context=log_ctx if writer else None)
            m = self.monitor(p)
            await m.start()
        except monitor_client.MonitorError as e:
            await self.stop(p)
            raise DriverError(f"plugin {p.name} did not start: {e.message}") from None
        sock = self.socket_path(p)
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if m.read_exit() is not None or not m.alive():
                out = await loop.run_in_executor(None, self.output, p)
                await self.stop(p)
                raise DriverError(f"plugin {p.name} exited before creating its socket "
                                  f"{p.config['Interface']['Socket']}"
                                  + (f": {out}" if out else " (no output)"))
            if time.monotonic() > deadline:
                out = await loop.run_in_executor(None, self.output, p)
                await self.stop(p)
                raise DriverError(f"plugin {p.name} did not create its socket "
                                  f"{p.config['Interface']['Socket']} within {timeout:g} s"
                                  + (f"; its output: {out}" if out else " (no output)"))
            await asyncio.sleep(0.05)

    async def stop(self, p: ManagedPlugin, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; then clean up its runtime
        directories and the propagated mount. Tolerates a plugin already gone."""
        import signal

        sdir = self.state_dir(p)
        if sdir.is_dir():
            m = self.monitor(p)
            if m.alive():
                try:
                    await m.kill(signal.SIGTERM)
                    await asyncio.wait_for(m.wait(), grace)
                except Exception:
                    try:
                        await m.kill(signal.SIGKILL)
                        await asyncio.wait_for(m.wait(), 5)
                    except Exception as e:  # pragma: no cover - best effort
                        log.warning("plugin %s: stop: %s", p.name, e)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._cleanup, p)

    def _cleanup(self, p: ManagedPlugin) -> None:
        shutil.rmtree(self.state_dir(p), ignore_errors=True)
        shutil.rmtree(self.socket_dir(p), ignore_errors=True)
        prop = self.propagated_dir(p)
        if prop is not None:
            _unmount_tree(str(prop))


def _share_mount(path: str) -> None:
    """Make ``path`` a mount of its own in a peer group of its own (bound onto itself,
    private, then shared): what a plugin mounts below it reaches the host, and
    nothing else shares it. A mount left by an earlier run is reused."""
    from engine.sdk.mounts import is_mount_point

    from .runtime.rootfs import MS_BIND, MS_PRIVATE, MS_SHARED, mount

    if not is_mount_point(path):
        mount(path, path, None, MS_BIND)
    mount(None, path, None, MS_PRIVATE)
    mount(None, path, None, MS_SHARED)


def _unmount_tree(path: str) -> None:
    """Detach ``path`` and everything mounted below it; nothing when it is not a mount."""
    from engine.sdk.mounts import is_mount_point

    from .runtime.rootfs import MNT_DETACH, umount

    while is_mount_point(path):
        try:
            umount(path, MNT_DETACH)
        except OSError as e:
            log.warning("unmounting %s: %s", path, e)
            return


__all__ = [
    "CONFIG_MEDIA_TYPE", "LAYER_MEDIA_TYPE", "ManagedPlugin", "ManagedRunner", "ManagedStore",
    "NotSupported", "apply_settings", "driver_kinds", "driver_name", "has_tag", "is_managed_dir", "local_name",
    "pack_rootfs", "parse_config", "plugin_spec", "privileges", "read_plugin_dir",
    "scope_path", "unpack_rootfs"
]
