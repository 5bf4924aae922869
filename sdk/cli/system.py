"""Daemon-wide commands: ``info``, ``version``, ``events``, ``system df`` and
``system prune``."""
from __future__ import annotations

import platform

from . import Cli, StatusError, __version__
from .common import parse_filters, parse_time, rfc3339
from .flags import BOOL, LIST, STR, Flag, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from typing import Any


def _template(cli: Cli, fmt: str, value: Any) -> int:
    from engine.sdk.format import Template, TemplateError

    try:
        cli.print(Template(fmt.replace("\\t", "\t").replace("\\n", "\n")).execute(value))
    except TemplateError as e:
        raise StatusError(1, f"template parsing error: {e}") from None
    return 0


def client_info() -> dict[str, Any]:
    return {"Version": __version__, "ApiVersion": "1.41", "DefaultAPIVersion": "1.41",
            "GoVersion": "python" + platform.python_version(),
            "Os": "linux", "Arch": _arch(), "BuildTime": "", "GitCommit": "",
            "Context": "default", "Debug": False}


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# -- version ---------------------------------------------------------------------------

VERSION = Spec("version", "version [OPTIONS]", "Show the engine version information",
               [Flag("-f, --format", STR, "Format output using a custom template")],
               max_args=0)


def cmd_version(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.client import APIError, ConnectError

    opts, _ = cli.parse(VERSION, argv)
    client = client_info()
    server: dict[str, Any] | None = None
    error = ""
    try:
        server = cli.api.get("/version").json()
    except (APIError, ConnectError) as e:
        error = str(e)
    if opts.format:
        _template(cli, opts.format, {"Client": client, "Server": server})
    else:
        lines = ["Client:",
                 f" Version:           {client['Version']}",
                 f" API version:       {client['ApiVersion']}",
                 f" Python version:    {platform.python_version()}",
                 f" OS/Arch:           {client['Os']}/{client['Arch']}",
                 f" Context:           {client['Context']}"]
        if server:
            lines += ["", f"Server: {server.get('Platform', {}).get('Name', '')}".rstrip(),
                      " Engine:",
                      f"  Version:          {server.get('Version', '')}",
                      f"  API version:      {server.get('ApiVersion', '')} (minimum version "
                      f"{server.get('MinAPIVersion', '')})",
                      f"  Go version:       {server.get('GoVersion', '')}",
                      f"  Git commit:       {server.get('GitCommit', '')}",
                      f"  Built:            {server.get('BuildTime', '')}",
                      f"  OS/Arch:          {server.get('Os', '')}/{server.get('Arch', '')}",
                      f"  Experimental:     {str(bool(server.get('Experimental'))).lower()}"]
            for comp in server.get("Components") or []:
                if comp.get("Name") == "Engine":
                    continue
                lines += [f" {comp.get('Name', '')}:",
                          f"  Version:          {comp.get('Version', '')}"]
        cli.print("\n".join(lines))
    if error:
        raise StatusError(1, error)
    return 0


# -- info ------------------------------------------------------------------------------

INFO = Spec("info", "info [OPTIONS]", "Display system-wide information",
            [Flag("-f, --format", STR, "Format output using a custom template")], max_args=0)


def cmd_info(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import human_size

    opts, _ = cli.parse(INFO, argv)
    info = cli.api.get("/info").json() or {}
    if opts.format:
        return _template(cli, opts.format, info)
    plugins = info.get("Plugins") or {}
    lines = ["Client:", f" Version:    {__version__}", " Context:    default",
             f" Debug Mode: {str(cli.debug).lower()}", "", "Server:",
             f" Containers: {info.get('Containers', 0)}",
             f"  Running: {info.get('ContainersRunning', 0)}",
             f"  Paused: {info.get('ContainersPaused', 0)}",
             f"  Stopped: {info.get('ContainersStopped', 0)}",
             f" Images: {info.get('Images', 0)}",
             f" Server Version: {info.get('ServerVersion', '')}",
             f" Storage Driver: {info.get('Driver', '')}"]
    for pair in info.get("DriverStatus") or []:
        if len(pair) == 2:
            lines.append(f"  {pair[0]}: {pair[1]}")
    lines += [f" Logging Driver: {info.get('LoggingDriver', '')}",
              f" Cgroup Driver: {info.get('CgroupDriver', '')}",
              f" Cgroup Version: {info.get('CgroupVersion', '')}",
              " Plugins:",
              f"  Volume: {' '.join(plugins.get('Volume') or [])}",
              f"  Network: {' '.join(plugins.get('Network') or [])}",
              f"  Log: {' '.join(plugins.get('Log') or [])}"]
    runtimes = info.get("Runtimes") or {}
    if runtimes:
        lines.append(f" Runtimes: {' '.join(sorted(runtimes))}")
        lines.append(f" Default Runtime: {info.get('DefaultRuntime', '')}")
    lines += [" Security Options:"] + [f"  {o}" for o in info.get("SecurityOptions") or []]
    lines += [f" Kernel Version: {info.get('KernelVersion', '')}",
              f" Operating System: {info.get('OperatingSystem', '')}",
              f" OSType: {info.get('OSType', '')}",
              f" Architecture: {info.get('Architecture', '')}",
              f" CPUs: {info.get('NCPU', 0)}",
              f" Total Memory: {human_size(info.get('MemTotal', 0), 4, binary=True)}",
              f" Name: {info.get('Name', '')}",
              f" ID: {info.get('ID', '')}",
              f" Docker Root Dir: {info.get('DockerRootDir', '')}",
              f" Debug Mode: {str(bool(info.get('Debug'))).lower()}",
              f" Experimental: {str(bool(info.get('ExperimentalBuild'))).lower()}",
              f" Live Restore Enabled: {str(bool(info.get('LiveRestoreEnabled'))).lower()}"]
    cli.print("\n".join(lines))
    for warning in info.get("Warnings") or []:
        cli.warn(warning)
    return 0


# -- events ----------------------------------------------------------------------------

EVENTS = Spec("events", "events [OPTIONS]", "Get real time events from the server", [
    Flag("-f, --filter", LIST, "Filter output based on conditions provided"),
    Flag("--format", STR, "Format output using a custom template"),
    Flag("--since", STR, "Show all events created since timestamp"),
    Flag("--until", STR, "Stream events until this timestamp"),
], max_args=0, aliases=("system events",))


def format_event(event: dict[str, Any]) -> str:
    """Docker's default event line:
    ``2024-01-02T15:04:05.000000000Z container start ID (image=busybox, name=x)``."""
    nanos = event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000
    secs, frac = divmod(int(nanos), 1_000_000_000)
    stamp = rfc3339(secs, frac)
    actor = event.get("Actor") or {}
    kind = event.get("Type") or ""
    action = event.get("Action") or event.get("status") or ""
    ident = actor.get("ID") or event.get("id") or ""
    line = f"{stamp} {kind} {action} {ident}"
    attrs = actor.get("Attributes") or {}
    if attrs:
        line += " (" + ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) + ")"
    return line


def cmd_events(cli: Cli, argv: list[str]) -> int:
    opts, _ = cli.parse(EVENTS, argv)
    params = {"since": parse_time(opts.since) if opts.since else None,
              "until": parse_time(opts.until) if opts.until else None,
              "filters": parse_filters(opts.filter)}
    tmpl = None
    if opts.format:
        from engine.sdk.format import Template

        tmpl = Template("{{json .}}" if opts.format == "json" else opts.format)
    for event in cli.api.json_lines("GET", "/events", params):
        if not isinstance(event, dict):
            continue
        cli.print(tmpl.execute(event) if tmpl else format_event(event))
        cli.out.flush()
    return 0


# -- system df / prune -----------------------------------------------------------------

DF = Spec("system df", "system df [OPTIONS]", "Show engine disk usage", [
    Flag("--format", STR, "Format output using a custom template"),
    Flag("-v, --verbose", BOOL, "Show detailed information on space usage"),
], max_args=0)


class DfRow:
    HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
               "Reclaimable": "RECLAIMABLE"}

    def __init__(self, kind: str, total: int, active: int, size: int, reclaim: int) -> None:
        from engine.sdk.format import human_size

        self.Type = kind
        self.TotalCount = str(total)
        self.Active = str(active)
        self.Size = human_size(size)
        pct = f" ({int(reclaim * 100 / size)}%)" if size and kind != "Build Cache" else ""
        self.Reclaimable = human_size(reclaim) + pct


def df_rows(df: dict[str, Any]) -> list[DfRow]:
    images = df.get("Images") or []
    containers = df.get("Containers") or []
    volumes = df.get("Volumes") or []
    cache = df.get("BuildCache") or []
    img_size = df.get("LayersSize") or sum(i.get("Size", 0) for i in images)
    img_active = sum(1 for i in images if (i.get("Containers") or 0) > 0)
    img_used = sum(i.get("Size", 0) - max(i.get("SharedSize", 0), 0)
                   for i in images if (i.get("Containers") or 0) > 0)
    ctr_size = sum(c.get("SizeRw", 0) or 0 for c in containers)
    ctr_active = sum(1 for c in containers if c.get("State") in ("running", "paused"))
    ctr_reclaim = sum(c.get("SizeRw", 0) or 0 for c in containers
                      if c.get("State") not in ("running", "paused"))
    vol_size = sum(max((v.get("UsageData") or {}).get("Size", 0), 0) for v in volumes)
    vol_active = sum(1 for v in volumes if (v.get("UsageData") or {}).get("RefCount", 0) > 0)
    vol_reclaim = sum(max((v.get("UsageData") or {}).get("Size", 0), 0) for v in volumes
                      if (v.get("UsageData") or {}).get("RefCount", 0) == 0)
    cache_size = sum(b.get("Size", 0) for b in cache)
    return [
        DfRow("Images", len(images), img_active, img_size, max(img_size - img_used, 0)),
        DfRow("Containers", len(containers), ctr_active, ctr_size, ctr_reclaim),
        DfRow("Local Volumes", len(volumes), vol_active, vol_size, vol_reclaim),
        DfRow("Build Cache", len(cache), sum(1 for b in cache if b.get("InUse")),
              cache_size, sum(b.get("Size", 0) for b in cache if not b.get("InUse"))),
    ]


def cmd_system_df(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import human_size, render

    from .containers import ContainerRow
    from .images import ImageRow, image_rows

    opts, _ = cli.parse(DF, argv)
    df = cli.api.get("/system/df").json() or {}
    if not opts.verbose:
        fmt = opts.format or ("table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t"
                              "{{.Reclaimable}}")
        cli.out.write(render(fmt, df_rows(df), DfRow.HEADERS))
        return 0
    cli.print("Images space usage:\n")
    rows = image_rows(df.get("Images") or [], False, True)
    cli.out.write(render("table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t"
                         "{{.Size}}\t{{.SharedSize}}\t{{.UniqueSize}}\t{{.Containers}}",
                         rows, ImageRow.HEADERS))
    cli.print("\nContainers space usage:\n")
    crow = [ContainerRow(c) for c in df.get("Containers") or []]
    cli.out.write(render("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.LocalVolumes}}\t"
                         "{{.Size}}\t{{.RunningFor}}\t{{.Status}}\t{{.Names}}", crow,
                         ContainerRow.HEADERS))
    cli.print("\nLocal Volumes space usage:\n")
    vols = [{"Name": v.get("Name", ""), "Links": str((v.get("UsageData") or {}).get("RefCount", 0)),
             "Size": human_size(max((v.get("UsageData") or {}).get("Size", 0), 0))}
            for v in df.get("Volumes") or []]
    cli.out.write(render("table {{.Name}}\t{{.Links}}\t{{.Size}}", vols,
                         {"Name": "VOLUME NAME", "Links": "LINKS", "Size": "SIZE"}))
    cli.print("\nBuild cache usage: " + human_size(sum(b.get("Size", 0) for b in
                                                        df.get("BuildCache") or [])))
    return 0


PRUNE = Spec("system prune", "system prune [OPTIONS]", "Remove unused data", [
    Flag("-a, --all", BOOL, "Remove all unused images not just dangling ones"),
    Flag("--filter", LIST, 'Provide filter values (e.g. "label=<key>=<value>")'),
    Flag("-f, --force", BOOL, "Do not prompt for confirmation"),
    Flag("--volumes", BOOL, "Prune anonymous volumes"),
], max_args=0)


def cmd_system_prune(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import human_size

    from .containers import confirm
    from .images import print_image_prune

    opts, _ = cli.parse(PRUNE, argv)
    warning = ["WARNING! This will remove:", "  - all stopped containers",
               "  - all networks not used by at least one container"]
    if opts.volumes:
        warning.append("  - all anonymous volumes not used by at least one container")
    warning.append("  - all images without at least one container associated to them"
                   if opts.all else "  - all dangling images")
    warning.append("  - unused build cache\n")
    if not confirm(cli, opts.force, "\n".join(warning)):
        return 0
    base = parse_filters(opts.filter) or {}
    total = 0
    report = cli.api.post("/containers/prune", {"filters": base or None}).json() or {}
    if report.get("ContainersDeleted"):
        cli.print("Deleted Containers:")
        for cid in report["ContainersDeleted"]:
            cli.print(cid)
        cli.print()
    total += report.get("SpaceReclaimed") or 0
    report = cli.api.post("/networks/prune", {"filters": base or None}).json() or {}
    if report.get("NetworksDeleted"):
        cli.print("Deleted Networks:")
        for name in report["NetworksDeleted"]:
            cli.print(name)
        cli.print()
    if opts.volumes:
        report = cli.api.post("/volumes/prune", {"filters": base or None}).json() or {}
        if report.get("VolumesDeleted"):
            cli.print("Deleted Volumes:")
            for name in report["VolumesDeleted"]:
                cli.print(name)
            cli.print()
        total += report.get("SpaceReclaimed") or 0
    filters = dict(base)
    filters["dangling"] = {"false" if opts.all else "true": True}
    report = cli.api.post("/images/prune", {"filters": filters}).json() or {}
    total += print_image_prune(cli, report)
    cli.print(f"Total reclaimed space: {human_size(total)}")
    return 0


def cmd_registry(cli: Cli, argv: list[str]) -> int:
    """``engine registry serve --addr 127.0.0.1:5000 --root DIR`` and ``registry gc``:
    the registry server is its own program; this hands it the arguments."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        cli.print("Usage:  engine registry serve --addr HOST:PORT --root DIR [--htpasswd FILE]"
                  " [--tls-cert F --tls-key F] [--read-only]\n"
                  "        engine registry gc --root DIR [--dry-run] [--delete-untagged]")
        return 0
    from engine.registry.server import main as registry_main

    return registry_main(argv)
