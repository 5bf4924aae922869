"""``network``, ``volume`` and ``plugin`` management commands: thin wrappers over the
API with docker's flags and output."""
from __future__ import annotations

from . import Cli, StatusError
from .common import inspect_objects, parse_filters
from .flags import BOOL, LIST, STR, Flag, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from typing import Any


def _kv(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _each(cli: Cli, names: list[str], action: Any) -> int:
    from engine.sdk.client import APIError

    failed = False
    for name in names:
        try:
            action(name)
            cli.print(name)
        except APIError as e:
            cli.warn(str(e))
            failed = True
    return 1 if failed else 0


def _list(cli: Cli, items: list[Any], fmt: str | None, quiet: bool, default: str,
          quiet_fmt: str, headers: dict[str, str]) -> int:
    from engine.sdk.format import TemplateError, render

    if fmt == "json":
        fmt = "{{json .}}"
    if quiet and not fmt:
        fmt = quiet_fmt
    try:
        cli.out.write(render(fmt or default, items, headers))
    except TemplateError as e:
        raise StatusError(1, f"template parsing error: {e}") from None
    return 0


def _prune_report(cli: Cli, report: dict[str, Any], key: str, title: str,
                  space: bool) -> None:
    deleted = report.get(key) or []
    if deleted:
        cli.print(title)
        for name in deleted:
            cli.print(name)
    if space:
        from engine.sdk.format import human_size

        if deleted:
            cli.print()
        cli.print(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}")


# -- network ---------------------------------------------------------------------------

class NetworkRow:
    HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
               "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS",
               "CreatedAt": "CREATED AT"}

    def __init__(self, n: dict[str, Any], trunc: bool) -> None:
        self.n = n
        self.trunc = trunc

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("CreatedAt", "Driver", "ID", "IPv6",
                                              "Internal", "Labels", "Name", "Scope")}

    @property
    def ID(self) -> str:
        ident = self.n.get("Id", "")
        return ident[:12] if self.trunc else ident

    Name = property(lambda self: self.n.get("Name", ""))
    Driver = property(lambda self: self.n.get("Driver", ""))
    Scope = property(lambda self: self.n.get("Scope", ""))
    IPv6 = property(lambda self: str(bool(self.n.get("EnableIPv6"))).lower())
    Internal = property(lambda self: str(bool(self.n.get("Internal"))).lower())
    CreatedAt = property(lambda self: self.n.get("Created", ""))

    @property
    def Labels(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted((self.n.get("Labels") or {}).items()))

    def Label(self, name: str) -> str:
        return (self.n.get("Labels") or {}).get(name, "")


NETWORK_LS = Spec("network ls", "network ls [OPTIONS]", "List networks", [
    Flag("-f, --filter", LIST, "Provide filter values (e.g. \"driver=bridge\")"),
    Flag("--format", STR, "Format output using a custom template"),
    Flag("--no-trunc", BOOL, "Do not truncate the output"),
    Flag("-q, --quiet", BOOL, "Only display network IDs"),
], max_args=0)


def cmd_network_ls(cli: Cli, argv: list[str]) -> int:
    opts, _ = cli.parse(NETWORK_LS, argv)
    nets = cli.api.get("/networks", {"filters": parse_filters(opts.filter)}).json() or []
    nets.sort(key=lambda n: n.get("Name", ""))
    rows = [NetworkRow(n, not opts.no_trunc) for n in nets]
    return _list(cli, rows, opts.format, opts.quiet,
                 "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}", "{{.ID}}",
                 NetworkRow.HEADERS)


NETWORK_CREATE = Spec("network create", "network create [OPTIONS] NETWORK",
                      "Create a network", [
                          Flag("--attachable", BOOL, "Enable manual container attachment"),
                          Flag("--aux-address", LIST, "Auxiliary IPv4 or IPv6 addresses used "
                               "by Network driver"),
                          Flag("-d, --driver", STR, "Driver to manage the Network",
                               default="bridge"),
                          Flag("--gateway", LIST, "IPv4 or IPv6 Gateway for the master subnet"),
                          Flag("--internal", BOOL, "Restrict external access to the network"),
                          Flag("--ip-range", LIST, "Allocate container ip from a sub-range"),
                          Flag("--ipam-driver", STR, "IP Address Management Driver",
                               default="default"),
                          Flag("--ipam-opt", LIST, "Set IPAM driver specific options"),
                          Flag("--ipv6", BOOL, "Enable or disable IPv6 networking"),
                          Flag("--label", LIST, "Set metadata on a network"),
                          Flag("-o, --opt", LIST, "Set driver specific options"),
                          Flag("--scope", STR, "Control the network's scope"),
                          Flag("--subnet", LIST, "Subnet in CIDR format that represents a "
                               "network segment"),
                      ], min_args=1, max_args=1)


def network_create_body(opts: Any, name: str) -> dict[str, Any]:
    if len(opts.gateway) > len(opts.subnet) or len(opts.ip_range) > len(opts.subnet):
        raise StatusError(1, "every gateway and ip-range must belong to a --subnet")
    configs = []
    for k, subnet in enumerate(opts.subnet):
        cfg = {"Subnet": subnet}
        if k < len(opts.ip_range):
            cfg["IPRange"] = opts.ip_range[k]
        if k < len(opts.gateway):
            cfg["Gateway"] = opts.gateway[k]
        if opts.aux_address:
            cfg["AuxiliaryAddresses"] = _kv(opts.aux_address)
        configs.append(cfg)
    return {
        "Name": name,
        "CheckDuplicate": True,
        "Driver": opts.driver,
        "Scope": opts.scope or "",
        "EnableIPv6": bool(opts.ipv6),
        "IPAM": {"Driver": opts.ipam_driver, "Config": configs,
                 "Options": _kv(opts.ipam_opt)},
        "Internal": bool(opts.internal),
        "Attachable": bool(opts.attachable),
        "Options": _kv(opts.opt),
        "Labels": _kv(opts.label),
    }


def cmd_network_create(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(NETWORK_CREATE, argv)
    resp = cli.api.post("/networks/create", body=network_create_body(opts, args[0])).json() or {}
    if resp.get("Warning"):
        cli.warn(resp["Warning"])
    cli.print(resp.get("Id", ""))
    return 0


NETWORK_RM = Spec("network rm", "network rm NETWORK [NETWORK...]",
                  "Remove one or more networks",
                  [Flag("-f, --force", BOOL, "Do not error if the network does not exist")],
                  min_args=1)


def cmd_network_rm(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.client import APIError

    opts, args = cli.parse(NETWORK_RM, argv)

    def remove(name: str) -> None:
        try:
            cli.api.delete(f"/networks/{name}")
        except APIError as e:
            if not (opts.force and e.status == 404):
                raise

    return _each(cli, args, remove)


NETWORK_INSPECT = Spec("network inspect", "network inspect [OPTIONS] NETWORK [NETWORK...]",
                       "Display detailed information on one or more networks", [
                           Flag("-f, --format", STR, "Format output using a custom template"),
                           Flag("-v, --verbose", BOOL, "Verbose output for diagnostics"),
                       ], min_args=1)


def cmd_network_inspect(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(NETWORK_INSPECT, argv)
    return inspect_objects(
        cli, args,
        lambda n: cli.api.get(f"/networks/{n}", {"verbose": opts.verbose or None}).json(),
        opts.format, lambda n: f"Error response from daemon: network {n} not found")


NETWORK_CONNECT = Spec("network connect", "network connect [OPTIONS] NETWORK CONTAINER",
                       "Connect a container to a network", [
                           Flag("--alias", LIST, "Add network-scoped alias for the container"),
                           Flag("--driver-opt", LIST, "driver options for the network"),
                           Flag("--ip", STR, "IPv4 address (e.g., \"172.30.100.104\")"),
                           Flag("--ip6", STR, "IPv6 address (e.g., \"2001:db8::33\")"),
                           Flag("--link", LIST, "Add link to another container", hidden=True),
                           Flag("--link-local-ip", LIST, "Add a link-local address for the "
                                "container"),
                       ], min_args=2, max_args=2)


def cmd_network_connect(cli: Cli, argv: list[str]) -> int:
    opts, (network, container) = cli.parse(NETWORK_CONNECT, argv)
    endpoint: dict[str, Any] = {"Aliases": list(opts.alias) or None,
                                "DriverOpts": _kv(opts.driver_opt) or None}
    if opts.ip or opts.ip6 or opts.link_local_ip:
        endpoint["IPAMConfig"] = {"IPv4Address": opts.ip or "", "IPv6Address": opts.ip6 or "",
                                  "LinkLocalIPs": list(opts.link_local_ip) or None}
    cli.api.post(f"/networks/{network}/connect",
                 body={"Container": container, "EndpointConfig": endpoint})
    return 0


NETWORK_DISCONNECT = Spec("network disconnect",
                          "network disconnect [OPTIONS] NETWORK CONTAINER",
                          "Disconnect a container from a network",
                          [Flag("-f, --force", BOOL, "Force the container to disconnect from "
                                "a network")], min_args=2, max_args=2)


def cmd_network_disconnect(cli: Cli, argv: list[str]) -> int:
    opts, (network, container) = cli.parse(NETWORK_DISCONNECT, argv)
    cli.api.post(f"/networks/{network}/disconnect",
                 body={"Container": container, "Force": bool(opts.force)})
    return 0


NETWORK_PRUNE = Spec("network prune", "network prune [OPTIONS]", "Remove all unused networks",
                     [Flag("--filter", LIST, "Provide filter values (e.g. "
                           "\"until=<timestamp>\")"),
                      Flag("-f, --force", BOOL, "Do not prompt for confirmation")], max_args=0)


def cmd_network_prune(cli: Cli, argv: list[str]) -> int:
    from .containers import confirm

    opts, _ = cli.parse(NETWORK_PRUNE, argv)
    if not confirm(cli, opts.force, "WARNING! This will remove all custom networks not "
                   "used by at least one container."):
        return 0
    report = cli.api.post("/networks/prune", {"filters": parse_filters(opts.filter)}).json() or {}
    _prune_report(cli, report, "NetworksDeleted", "Deleted Networks:", space=False)
    return 0


# -- volume ----------------------------------------------------------------------------

class VolumeRow:
    HEADERS = {"Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE",
               "Mountpoint": "MOUNTPOINT", "Labels": "LABELS", "Links": "LINKS",
               "Size": "SIZE", "CreatedAt": "CREATED AT"}

    def __init__(self, v: dict[str, Any]) -> None:
        self.v = v

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("Driver", "Labels", "Links", "Mountpoint",
                                              "Name", "Scope", "Size")}

    Name = property(lambda self: self.v.get("Name", ""))
    Driver = property(lambda self: self.v.get("Driver", ""))
    Scope = property(lambda self: self.v.get("Scope", ""))
    Mountpoint = property(lambda self: self.v.get("Mountpoint", ""))
    CreatedAt = property(lambda self: self.v.get("CreatedAt", ""))

    @property
    def Labels(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted((self.v.get("Labels") or {}).items()))

    def Label(self, name: str) -> str:
        return (self.v.get("Labels") or {}).get(name, "")

    @property
    def Links(self) -> str:
        usage = self.v.get("UsageData")
        return str(usage.get("RefCount", -1)) if usage else "N/A"

    @property
    def Size(self) -> str:
        from engine.sdk.format import human_size

        usage = self.v.get("UsageData")
        if not usage or usage.get("Size", -1) < 0:
            return "N/A"
        return human_size(usage["Size"])


VOLUME_LS = Spec("volume ls", "volume ls [OPTIONS]", "List volumes", [
    Flag("-f, --filter", LIST, "Provide filter values (e.g. \"dangling=true\")"),
    Flag("--format", STR, "Format output using a custom template"),
    Flag("-q, --quiet", BOOL, "Only display volume names"),
], max_args=0)


def cmd_volume_ls(cli: Cli, argv: list[str]) -> int:
    opts, _ = cli.parse(VOLUME_LS, argv)
    data = cli.api.get("/volumes", {"filters": parse_filters(opts.filter)}).json() or {}
    vols = sorted(data.get("Volumes") or [], key=lambda v: v.get("Name", ""))
    for warning in data.get("Warnings") or []:
        cli.warn(warning)
    return _list(cli, [VolumeRow(v) for v in vols], opts.format, opts.quiet,
                 "table {{.Driver}}\t{{.Name}}", "{{.Name}}", VolumeRow.HEADERS)


VOLUME_CREATE = Spec("volume create", "volume create [OPTIONS] [VOLUME]", "Create a volume", [
    Flag("-d, --driver", STR, "Specify volume driver name", default="local"),
    Flag("--label", LIST, "Set metadata for a volume"),
    Flag("--name", STR, "Specify volume name", hidden=True),
    Flag("-o, --opt", LIST, "Set driver specific options"),
], max_args=1)


def cmd_volume_create(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(VOLUME_CREATE, argv)
    if args and opts.name and args[0] != opts.name:
        raise StatusError(1, "conflicting options: cannot specify a volume-name through "
                             "both --name and as a positional arg")
    body = {"Name": args[0] if args else (opts.name or ""), "Driver": opts.driver,
            "DriverOpts": _kv(opts.opt), "Labels": _kv(opts.label)}
    vol = cli.api.post("/volumes/create", body=body).json() or {}
    cli.print(vol.get("Name", ""))
    return 0


VOLUME_RM = Spec("volume rm", "volume rm [OPTIONS] VOLUME [VOLUME...]",
                 "Remove one or more volumes",
                 [Flag("-f, --force", BOOL, "Force the removal of one or more volumes")],
                 min_args=1)


def cmd_volume_rm(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(VOLUME_RM, argv)
    return _each(cli, args, lambda n: cli.api.delete(f"/volumes/{n}",
                                                     {"force": opts.force or None}))


VOLUME_INSPECT = Spec("volume inspect", "volume inspect [OPTIONS] VOLUME [VOLUME...]",
                      "Display detailed information on one or more volumes",
                      [Flag("-f, --format", STR, "Format output using a custom template")],
                      min_args=1)


def cmd_volume_inspect(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(VOLUME_INSPECT, argv)
    return inspect_objects(cli, args, lambda n: cli.api.get(f"/volumes/{n}").json(),
                           opts.format, lambda n: f"Error response from daemon: get {n}: "
                           "no such volume")


VOLUME_PRUNE = Spec("volume prune", "volume prune [OPTIONS]", "Remove unused local volumes", [
    Flag("-a, --all", BOOL, "Remove all unused volumes, not just anonymous ones"),
    Flag("--filter", LIST, "Provide filter values (e.g. \"label=<label>\")"),
    Flag("-f, --force", BOOL, "Do not prompt for confirmation"),
], max_args=0)


def cmd_volume_prune(cli: Cli, argv: list[str]) -> int:
    from .containers import confirm

    opts, _ = cli.parse(VOLUME_PRUNE, argv)
    if not confirm(cli, opts.force, "WARNING! This will remove anonymous local volumes not "
                   "used by at least one container."):
        return 0
    filters = parse_filters(opts.filter) or {}
    if opts.all:
        filters["all"] = {"true": True}
    report = cli.api.post("/volumes/prune", {"filters": filters or None}).json() or {}
    _prune_report(cli, report, "VolumesDeleted", "Deleted Volumes:", space=True)
    return 0


# -- plugin ----------------------------------------------------------------------------

class PluginRow:
    HEADERS = {"ID": "ID", "Name": "NAME", "Description": "DESCRIPTION",
               "Enabled": "ENABLED", "PluginReference": "PLUGIN REFERENCE"}

    def __init__(self, p: dict[str, Any], trunc: bool) -> None:
        self.p = p
        self.trunc = trunc

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("Description", "Enabled", "ID", "Name",
                                              "PluginReference")}

    @property
    def ID(self) -> str:
        ident = self.p.get("Id", "")
        return ident[:12] if self.trunc else ident

    Name = property(lambda self: self.p.get("Name", ""))
    Enabled = property(lambda self: str(bool(self.p.get("Enabled"))).lower())
    PluginReference = property(lambda self: self.p.get("PluginReference", ""))

    @property
    def Description(self) -> str:
        from .containers import ellipsis

        desc = ((self.p.get("Config") or {}).get("Description") or "").replace("\n", " ")
        if self.p.get("Error"):  # why a plugin is not running, where ``ls`` shows it
            desc = f"error: {self.p['Error']}".replace("\n", " ")
        desc = desc.replace("\r", " ")
        return ellipsis(desc, 45) if self.trunc else desc


PLUGIN_LS = Spec("plugin ls", "plugin ls [OPTIONS]", "List plugins", [
    Flag("-f, --filter", LIST, "Provide filter values (e.g. \"enabled=true\")"),
    Flag("--format", STR, "Format output using a custom template"),
    Flag("--no-trunc", BOOL, "Don't truncate output"),
    Flag("-q, --quiet", BOOL, "Only display plugin IDs"),
], max_args=0)


def cmd_plugin_ls(cli: Cli, argv: list[str]) -> int:
    opts, _ = cli.parse(PLUGIN_LS, argv)
    plugins = cli.api.get("/plugins", {"filters": parse_filters(opts.filter)}).json() or []
    rows = [PluginRow(p, not opts.no_trunc) for p in plugins]
    return _list(cli, rows, opts.format, opts.quiet,
                 "table {{.ID}}\t{{.Name}}\t{{.Description}}\t{{.Enabled}}", "{{.ID}}",
                 PluginRow.HEADERS)


PLUGIN_INSPECT = Spec("plugin inspect", "plugin inspect [OPTIONS] PLUGIN [PLUGIN...]",
                      "Display detailed information on one or more plugins",
                      [Flag("-f, --format", STR, "Format output using a custom template")],
                      min_args=1)


def cmd_plugin_inspect(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PLUGIN_INSPECT, argv)
    return inspect_objects(cli, args, lambda n: cli.api.get(f"/plugins/{n}/json").json(),
                           opts.format, lambda n: f"Error response from daemon: plugin {n} "
                           "not found")


PLUGIN_INSTALL = Spec("plugin install", "plugin install [OPTIONS] PLUGIN [KEY=VALUE...]",
                      "Install a plugin (a wheel file, a plugin directory or a registry "
                      "reference)", [
                          Flag("--alias", STR, "Local name for plugin"),
                          Flag("--disable", BOOL, "Do not enable the plugin on install"),
                          Flag("--grant-all-permissions", BOOL, "Grant all permissions "
                               "necessary to run the plugin"),
                      ], min_args=1)


def _plugin_remote(ref: str) -> str:
    """A local wheel or directory travels as an absolute path (the daemon runs on
    this machine); anything else is passed on as a registry reference."""
    import os

    if ref.startswith(("/", "./", "../", "~")) or ref.endswith(".whl") or os.path.exists(ref):
        return os.path.abspath(os.path.expanduser(ref))
    return ref


def _grant(cli: Cli, remote: str, shown: str, grant_all: bool) -> list[dict[str, Any]]:
    """Docker's privilege prompt: show what the plugin asks for and ask, on a
    terminal; without one, only ``--grant-all-permissions`` grants."""
    privileges = cli.api.get("/plugins/privileges", {"remote": remote}).json() or []
    if not privileges or grant_all:
        return privileges
    cli.print(f"Plugin \"{shown}\" is requesting the following privileges:")
    for p in privileges:
        cli.print(f" - {p.get('Name', '')}: [{' '.join(p.get('Value') or [])}]")
    isatty = getattr(cli.stdin, "isatty", None)
    if not (isatty and isatty()):
        raise StatusError(1, "plugin installation cancelled: the plugin asks for privileges "
                          "and there is no terminal to ask; use --grant-all-permissions")
    cli.out.write("Do you grant the above permissions? [y/N] ")
    cli.out.flush()
    if cli.stdin.readline().strip().lower() not in ("y", "yes"):
        raise StatusError(1, "plugin installation cancelled")
    return privileges


def _progress(cli: Cli, messages: Any) -> list[str]:
    """Print a progress stream; return the plugin names its ``aux`` carried."""
    names: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("error"):
            raise StatusError(1, str(msg["error"]))
        aux = msg.get("aux")
        if isinstance(aux, dict):
            names.extend(aux.get("Plugins") or [])
        elif msg.get("status"):
            cli.print(str(msg["status"]))
    return names


def cmd_plugin_install(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PLUGIN_INSTALL, argv)
    remote, settings = _plugin_remote(args[0]), args[1:]
    privileges = _grant(cli, remote, args[0], opts.grant_all_permissions)
    params = {"remote": remote, "name": opts.alias or None}
    names = _progress(cli, cli.api.json_lines("POST", "/plugins/pull", params, body=privileges))
    names = [opts.alias] if opts.alias else names
    for name in names:
        if settings:
            cli.api.post(f"/plugins/{name}/set", body=settings)
        if not opts.disable:
            cli.api.post(f"/plugins/{name}/enable", {"timeout": 30})
        cli.print(f"Installed plugin {name}")
    return 0


PLUGIN_UPGRADE = Spec("plugin upgrade", "plugin upgrade [OPTIONS] PLUGIN [REMOTE]",
                      "Upgrade an existing plugin (it must be disabled)", [
                          Flag("--grant-all-permissions", BOOL, "Grant all permissions "
                               "necessary to run the plugin"),
                          Flag("--skip-remote-check", BOOL, "Do not check if specified "
                               "remote plugin matches existing plugin image"),
                      ], min_args=1, max_args=2)


def cmd_plugin_upgrade(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PLUGIN_UPGRADE, argv)
    name = args[0]
    current = cli.api.get(f"/plugins/{name}/json").json() or {}
    ref = args[1] if len(args) > 1 else current.get("PluginReference", "")
    remote = _plugin_remote(ref)
    cli.print(f"Upgrading plugin {name} from {current.get('PluginReference', '')} to {remote}")
    privileges = _grant(cli, remote, ref, opts.grant_all_permissions)
    _progress(cli, cli.api.json_lines("POST", f"/plugins/{name}/upgrade", {"remote": remote},
                                      body=privileges))
    cli.print(f"Upgraded plugin {name} to {remote}")
    return 0


PLUGIN_CREATE = Spec("plugin create", "plugin create [OPTIONS] [PLUGIN] PLUGIN-DATA-DIR",
                     "Create a plugin from a plugin directory: a Python plugin "
                     "(pyproject.toml and engine-plugin.json; with only the directory, "
                     "build its wheel locally) or a Docker managed plugin (config.json "
                     "and rootfs/)", [
                         Flag("--compress", BOOL, "Compress the context using gzip"),
                         Flag("-o, --output", STR, "Where a local build puts the wheel "
                              "(default DIR/dist)"),
                     ], min_args=1, max_args=2)


def _is_managed_dir(directory: str) -> bool:
    """A Docker managed plugin's directory: ``config.json`` and ``rootfs/``."""
    import os

    return (os.path.isfile(os.path.join(directory, "config.json"))
            and os.path.isdir(os.path.join(directory, "rootfs")))


def _tar_tree(directory: str, compress: bool) -> bytes:
    """Everything under ``directory`` as ``docker plugin create`` sends it: links
    stay links, modes and owners are kept."""
    import io
    import os
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tf:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(root, name)
                tf.add(path, os.path.relpath(path, directory), recursive=False)
    return buf.getvalue()


def _tar_dir(directory: str, compress: bool) -> bytes:
    import io
    import os
    import tarfile

    skip = {"build", "dist", ".git", "__pycache__", ".venv", ".tox", ".pytest_cache"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tf:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in skip and not d.endswith(".egg-info"))
            for f in sorted(files):
                path = os.path.join(root, f)
                tf.add(path, os.path.relpath(path, directory), recursive=False)
    return buf.getvalue()


def cmd_plugin_create(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.errors import EngineError
    from engine.sdk.packaging import build_wheel, validate_plugin_dir

    opts, args = cli.parse(PLUGIN_CREATE, argv)
    directory = args[-1]
    if _is_managed_dir(directory):
        if len(args) == 1:
            raise StatusError(1, "a managed plugin (config.json and rootfs/) needs a name: "
                              "plugin create NAME DIR")
        cli.api.post("/plugins/create", {"name": args[0]},
                     body=_tar_tree(directory, opts.compress),
                     headers={"Content-Type": "application/x-tar"})
        cli.print(args[0])
        return 0
    try:
        validate_plugin_dir(directory)
        if len(args) == 1:
            import os

            out = opts.output or os.path.join(directory, "dist")
            cli.print(str(build_wheel(directory, out)))
            return 0
    except EngineError as e:
        raise StatusError(1, str(e)) from None
    cli.api.post("/plugins/create", {"name": args[0]}, body=_tar_dir(directory, opts.compress),
                 headers={"Content-Type": "application/x-tar"})
    cli.print(args[0])
    return 0


PLUGIN_PUSH = Spec("plugin push", "plugin push [OPTIONS] PLUGIN[:TAG]",
                   "Push a plugin to a registry", [
                       Flag("--disable-content-trust", BOOL, "Skip image signing",
                            default=True),
                   ], min_args=1, max_args=1)


def cmd_plugin_push(cli: Cli, argv: list[str]) -> int:
    import base64

    _, args = cli.parse(PLUGIN_PUSH, argv)
    # the daemon takes credentials from its Docker config when the header is empty
    auth = base64.urlsafe_b64encode(b"{}").decode()
    for msg in cli.api.json_lines("POST", f"/plugins/{args[0]}/push",
                                  headers={"X-Registry-Auth": auth}):
        if not isinstance(msg, dict):
            continue
        if msg.get("error"):
            raise StatusError(1, str(msg["error"]))
        aux = msg.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            continue
        if msg.get("status"):
            ident = msg.get("id")
            cli.print(f"{ident}: {msg['status']}" if ident else str(msg["status"]))
    return 0


PLUGIN_SET = Spec("plugin set", "plugin set PLUGIN KEY=VALUE [KEY=VALUE...]",
                  "Change settings for a plugin (a disabled managed plugin's settable env, "
                  "args, mount sources and device paths)", [], min_args=2)


def cmd_plugin_set(cli: Cli, argv: list[str]) -> int:
    _, args = cli.parse(PLUGIN_SET, argv)
    cli.api.post(f"/plugins/{args[0]}/set", body=args[1:])
    return 0


PLUGIN_ENABLE = Spec("plugin enable", "plugin enable [OPTIONS] PLUGIN", "Enable a plugin",
                     [Flag("--timeout", STR, "HTTP client timeout (in seconds)", default="30")],
                     min_args=1, max_args=1)


def cmd_plugin_enable(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PLUGIN_ENABLE, argv)
    cli.api.post(f"/plugins/{args[0]}/enable", {"timeout": opts.timeout})
    cli.print(args[0])
    return 0


PLUGIN_DISABLE = Spec("plugin disable", "plugin disable [OPTIONS] PLUGIN", "Disable a plugin",
                      [Flag("-f, --force", BOOL, "Force the disable of an active plugin")],
                      min_args=1, max_args=1)


def cmd_plugin_disable(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PLUGIN_DISABLE, argv)
    cli.api.post(f"/plugins/{args[0]}/disable", {"force": opts.force or None})
    cli.print(args[0])
    return 0


PLUGIN_RM = Spec("plugin rm", "plugin rm [OPTIONS] PLUGIN [PLUGIN...]",
                 "Remove one or more plugins",
                 [Flag("-f, --force", BOOL, "Force the removal of an active plugin")],
                 min_args=1)


def cmd_plugin_rm(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(PLUGIN_RM, argv)
    return _each(cli, args, lambda n: cli.api.delete(f"/plugins/{n}",
                                                     {"force": opts.force or None}))
