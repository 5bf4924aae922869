"""Container commands: ``run``, ``create``, ``ps`` and the lifecycle verbs."""
from __future__ import annotations

import os
import time

from . import PROG, Cli, StatusError
from .attach import attach_stream, check_tty, interact, send_wait, wait_status
from .common import (
    go_time,
    inspect_objects,
    is_terminal,
    parse_filters,
    parse_time,
    pull,
    split_ref,
)
from .flags import BOOL, INT, LIST, STR, Flag, Spec, UsageError
from .opts import CREATE_FLAGS, RUN_FLAGS, build_create

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from typing import Any

# -- run / create ----------------------------------------------------------------------

RUN = Spec("run", "run [OPTIONS] IMAGE [COMMAND] [ARG...]",
           "Create and run a new container from an image", RUN_FLAGS, min_args=1,
           interspersed=False, aliases=("container run",))
CREATE = Spec("create", "create [OPTIONS] IMAGE [COMMAND] [ARG...]",
              "Create a new container", CREATE_FLAGS, min_args=1, interspersed=False,
              aliases=("container create",))


def start_error_code(message: str) -> int:
    """The docker CLI's exit code for a failed start: 127 when the command is not
    found, 126 when it cannot be invoked, else 125."""
    if ("executable file not found" in message or "no such file or directory" in message
            or "system cannot find the file specified" in message):
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 125


def _create(cli: Cli, opts: Any, query: dict[str, Any], body: dict[str, Any]) -> str:
    """Create the container, pulling the image first when it is missing (per
    ``--pull``). Returns the container id; prints the daemon's warnings."""
    from engine.sdk.client import APIError

    image = body["Image"]
    if opts.pull == "always":
        pull(cli, image, out=cli.err, quiet=opts.quiet, platform=opts.platform)
    elif opts.pull not in ("missing", "never"):
        raise UsageError(f'invalid pull option: \'{opts.pull}\': must be one of "always", '
                         '"missing" or "never"')
    try:
        resp = cli.api.post("/containers/create", query, body)
    except APIError as e:
        if e.status != 404 or opts.pull == "never" or "image" not in e.message.lower():
            raise
        name, tag = split_ref(image)
        ref = f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"
        cli.err.write(f"Unable to find image '{ref}' locally\n")
        cli.err.flush()
        pull(cli, image, out=cli.err, quiet=opts.quiet, platform=opts.platform)
        resp = cli.api.post("/containers/create", query, body)
    data = resp.json() or {}
    for warning in data.get("Warnings") or []:
        cli.warn(f"WARNING: {warning}")
    cid = data["Id"]
    if opts.cidfile:
        try:
            fd = os.open(opts.cidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise StatusError(125, f"container ID file found, make sure the other "
                              f"container isn't running or delete {opts.cidfile}") from None
        with os.fdopen(fd, "w") as f:
            f.write(cid)
    return cid


def _tty_size(cli: Cli, tty: bool) -> tuple[int, int] | None:
    if not tty or not is_terminal(cli.out):
        return None
    try:
        size = os.get_terminal_size(cli.out.fileno())
    except OSError:
        return None
    return size.lines, size.columns


def _run_failed(cli: Cli, e: Exception) -> StatusError:
    return StatusError(125, f"{PROG}: {e}.\nSee '{PROG} {cli.command} --help'.")


def cmd_create(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.client import APIError, ConnectError

    opts, args = cli.parse(CREATE, argv)
    query, body = build_create(opts, args, _tty_size(cli, opts.tty))
    try:
        cli.print(_create(cli, opts, query, body))
    except (APIError, ConnectError) as e:
        raise _run_failed(cli, e) from None
    return 0


def cmd_run(cli: Cli, argv: list[str]) -> int:
    """``run``: create (pulling if needed), attach before start unless detached, wait
    with ``next-exit`` (``removed`` with ``--rm``), start, stream, return the exit code."""
    from engine.sdk.client import APIError, ConnectError

    opts, args = cli.parse(RUN, argv)
    query, body = build_create(opts, args, _tty_size(cli, opts.tty), detach=opts.detach)
    tty = body["Tty"]
    if not opts.detach:
        check_tty(cli, body["AttachStdin"], tty)
    try:
        cid = _create(cli, opts, query, body)
    except (APIError, ConnectError) as e:
        raise _run_failed(cli, e) from None
    api = cli.api
    if opts.detach:
        try:
            api.post(f"/containers/{cid}/start")
        except APIError as e:
            raise StatusError(start_error_code(e.message),
                              f"{PROG}: {e}.\nSee '{PROG} run --help'.") from None
        cli.print(cid)
        return 0

    attached = body["AttachStdin"] or body["AttachStdout"] or body["AttachStderr"]
    sock = waiter = None
    detached = False
    try:
        if attached:
            sock = attach_stream(cli, cid, body["AttachStdin"], body["AttachStdout"],
                                 body["AttachStderr"], opts.detach_keys)
        waiter = send_wait(cli, cid, "removed" if opts.rm else "next-exit")
        try:
            api.post(f"/containers/{cid}/start")
        except APIError as e:
            raise StatusError(start_error_code(e.message),
                              f"{PROG}: {e}.\nSee '{PROG} run --help'.") from None
        if sock is not None:
            detached = interact(cli, cid, sock, tty, body["AttachStdin"], opts.detach_keys,
                                opts.sig_proxy)
    except BaseException as e:
        if waiter is not None:
            waiter.close()
        if isinstance(e, (APIError, ConnectError)):
            raise _run_failed(cli, e) from None
        raise
    finally:
        if sock is not None:
            sock.close()
    if detached:  # the container keeps running
        waiter.close()
        return 0
    return wait_status(cli, waiter)


# -- ps --------------------------------------------------------------------------------

def ellipsis(text: str, width: int) -> str:
    """Shorten to ``width`` characters, the last one an ellipsis."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…" if width > 1 else text[:width]


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` for printable text: backslash and quote escaped."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def display_ports(ports: list[dict[str, Any]]) -> str:
    """Docker's ``DisplayablePorts``: ``0.0.0.0:8000-8001->80-81/tcp, 443/tcp``."""
    def key(p: dict[str, Any]) -> tuple:
        return (p.get("PrivatePort", 0), p.get("IP", "") or "", p.get("PublicPort", 0) or 0,
                p.get("Type", ""))

    groups: dict[str, list[int]] = {}
    order: list[str] = []
    result: list[str] = []
    host_maps: list[str] = []

    def form(portkey: str, first: int, last: int) -> str:
        ip, sep, kind = portkey.rpartition("/")
        group = str(first) if first == last else f"{first}-{last}"
        if sep and ip:
            host = f"[{ip}]" if ":" in ip else ip
            group = f"{host}:{group}->{group}"
        return f"{group}/{kind}"

    for p in sorted(ports, key=key):
        current = p.get("PrivatePort", 0)
        kind = p.get("Type", "tcp")
        portkey = kind
        ip = p.get("IP") or ""
        if ip:
            public = p.get("PublicPort", 0)
            if public != current:
                host = f"[{ip}]" if ":" in ip else ip
                host_maps.append(f"{host}:{public}->{current}/{kind}")
                continue
            portkey = f"{ip}/{kind}"
        group = groups.get(portkey)
        if group is None:
            groups[portkey] = [current, current]
            order.append(portkey)
            continue
        if current == group[1] + 1:
            group[1] = current
            continue
        result.append(form(portkey, group[0], group[1]))
        group[0] = group[1] = current
    result.extend(form(k, *groups[k]) for k in order)
    result.extend(host_maps)
    return ", ".join(result)


class ContainerRow:
    """The ``ps --format`` context for one container of ``GET /containers/json``."""

    HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
               "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
               "Status": "STATUS", "Size": "SIZE", "Names": "NAMES", "Labels": "LABELS",
               "Label": "LABEL", "Mounts": "MOUNTS", "Networks": "NETWORKS",
               "State": "STATE", "LocalVolumes": "LOCAL VOLUMES", "Platform": "PLATFORM"}

    def __init__(self, c: dict[str, Any], trunc: bool = True, now: float | None = None) -> None:
        self.c = c
        self.trunc = trunc
        self.now = time.time() if now is None else now

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes", "Mounts",
                 "Names", "Networks", "Ports", "RunningFor", "Size", "State", "Status")}

    @property
    def ID(self) -> str:
        cid = self.c.get("Id", "")
        return cid[:12] if self.trunc else cid

    @property
    def Image(self) -> str:
        image = self.c.get("Image", "") or "<no image>"
        if self.trunc:
            if image.startswith("sha256:"):
                return image[7:19]
            if "@sha256:" in image:
                image = image.split("@", 1)[0]
        return image

    @property
    def Command(self) -> str:
        cmd = self.c.get("Command", "")
        return go_quote(ellipsis(cmd, 20) if self.trunc else cmd)

    @property
    def CreatedAt(self) -> str:
        return go_time(self.c.get("Created", 0))

    @property
    def RunningFor(self) -> str:
        from engine.sdk.format import human_duration

        return human_duration(self.now - self.c.get("Created", 0)) + " ago"

    @property
    def Ports(self) -> str:
        return display_ports(self.c.get("Ports") or [])

    @property
    def Status(self) -> str:
        return self.c.get("Status", "")

    @property
    def State(self) -> str:
        return self.c.get("State", "")

    @property
    def Size(self) -> str:
        from engine.sdk.format import human_size

        srw = human_size(self.c.get("SizeRw") or 0)
        if self.c.get("SizeRootFs"):
            return f"{srw} (virtual {human_size(self.c['SizeRootFs'])})"
        return srw

    @property
    def Names(self) -> str:
        names = []
        for name in self.c.get("Names") or []:
            if self.trunc and name.count("/") > 1:
                continue  # a legacy link name
            names.append(name[1:] if name.startswith("/") else name)
        return ",".join(names)

    @property
    def Labels(self) -> str:
        labels = self.c.get("Labels") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def Label(self, name: str) -> str:
        return (self.c.get("Labels") or {}).get(name, "")

    @property
    def Mounts(self) -> str:
        names = []
        for m in self.c.get("Mounts") or []:
            name = m.get("Name") or m.get("Source", "")
            names.append(ellipsis(name, 15) if self.trunc else name)
        return ",".join(names)

    @property
    def LocalVolumes(self) -> str:
        return str(sum(1 for m in self.c.get("Mounts") or [] if m.get("Driver") == "local"))

    @property
    def Networks(self) -> str:
        nets = ((self.c.get("NetworkSettings") or {}).get("Networks") or {})
        return ",".join(nets)

    @property
    def Platform(self) -> str:
        return ""


PS = Spec("ps", "ps [OPTIONS]", "List containers", [
    Flag("-a, --all", BOOL, "Show all containers (default shows just running)"),
    Flag("-f, --filter", LIST, "Filter output based on conditions provided"),
    Flag("--format", STR, "Format output using a custom template"),
    Flag("-n, --last", INT, "Show n last created containers (includes all states)",
         default=-1),
    Flag("-l, --latest", BOOL, "Show the latest created container (includes all states)"),
    Flag("--no-trunc", BOOL, "Don't truncate output"),
    Flag("-q, --quiet", BOOL, "Only display container IDs"),
    Flag("-s, --size", BOOL, "Display total file sizes"),
], max_args=0, aliases=("container ls", "container list", "container ps"))

PS_TABLE = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t"
            "{{.Ports}}\t{{.Names}}")


def cmd_ps(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import TemplateError, render

    opts, _ = cli.parse(PS, argv)
    limit = 1 if opts.latest else opts.last
    fmt = opts.format or ""
    if fmt == "json":
        fmt = "{{json .}}"
    elif fmt == "table":
        fmt = ""
    size = opts.size or ".Size" in fmt
    params = {"all": opts.all or None, "limit": limit if limit > 0 else None,
              "size": size or None, "filters": parse_filters(opts.filter)}
    containers = cli.api.get("/containers/json", params).json() or []
    if opts.quiet and not opts.format:
        fmt = "{{.ID}}"
    elif not fmt:
        fmt = PS_TABLE + ("\t{{.Size}}" if opts.size else "")
    now = time.time()
    rows = [ContainerRow(c, trunc=not opts.no_trunc, now=now) for c in containers]
    try:
        cli.out.write(render(fmt, rows, ContainerRow.HEADERS))
    except TemplateError as e:
        raise StatusError(1, f"template parsing error: {e}") from None
    return 0


# -- simple verbs ----------------------------------------------------------------------

def _each(cli: Cli, names: list[str], action: Any, echo: bool = True) -> int:
    """Apply ``action`` to every name, print each success, report failures, exit 1 if
    any failed (docker's behaviour for multi-container verbs)."""
    from engine.sdk.client import APIError

    failed = False
    for name in names:
        try:
            action(name)
            if echo:
                cli.print(name)
        except APIError as e:
            cli.warn(str(e))
            failed = True
    return 1 if failed else 0


STOP = Spec("stop", "stop [OPTIONS] CONTAINER [CONTAINER...]",
            "Stop one or more running containers", [
                Flag("-s, --signal", STR, "Signal to send to the container"),
                Flag("-t, --time", INT, "Seconds to wait before killing the container")],
            min_args=1)


def cmd_stop(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(STOP, argv)
    params = {"t": opts.time if opts.given("time") else None, "signal": opts.signal or None}
    return _each(cli, args, lambda n: cli.api.post(f"/containers/{n}/stop", params))


RESTART = Spec("restart", "restart [OPTIONS] CONTAINER [CONTAINER...]",
               "Restart one or more containers", STOP.flags, min_args=1)


def cmd_restart(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(RESTART, argv)
    params = {"t": opts.time if opts.given("time") else None, "signal": opts.signal or None}
    return _each(cli, args, lambda n: cli.api.post(f"/containers/{n}/restart", params))


KILL = Spec("kill", "kill [OPTIONS] CONTAINER [CONTAINER...]",
            "Kill one or more running containers",
            [Flag("-s, --signal", STR, "Signal to send to the container")], min_args=1)


def cmd_kill(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(KILL, argv)
    params = {"signal": opts.signal or None}
    return _each(cli, args, lambda n: cli.api.post(f"/containers/{n}/kill", params))


RM = Spec("rm", "rm [OPTIONS] CONTAINER [CONTAINER...]", "Remove one or more containers", [
    Flag("-f, --force", BOOL, "Force the removal of a running container (uses SIGKILL)"),
    Flag("-l, --link", BOOL, "Remove the specified link"),
    Flag("-v, --volumes", BOOL, "Remove anonymous volumes associated with the container"),
], min_args=1)


def cmd_rm(cli: Cli, argv: list[str]) -> int:
    opts, args = cli.parse(RM, argv)
    params = {"force": opts.force or None, "v": opts.volumes or None, "link": opts.link or None}
    return _each(cli, args, lambda n: cli.api.delete(f"/containers/{n}", params))


PAUSE = Spec("pause", "pause CONTAINER [CONTAINER...]",
             "Pause all processes within one or more containers", min_args=1)
UNPAUSE = Spec("unpause", "unpause CONTAINER [CONTAINER...]",
               "Unpause all processes within one or more containers", min_args=1)


def cmd_pause(cli: Cli, argv: list[str]) -> int:
    _, args = cli.parse(PAUSE, argv)
    return _each(cli, args, lambda n: cli.api.post(f"/containers/{n}/pause"))


def cmd_unpause(cli: Cli, argv: list[str]) -> int:
    _, args = cli.parse(UNPAUSE, argv)
    return _each(cli, args, lambda n: cli.api.post(f"/containers/{n}/unpause"))


RENAME = Spec("rename", "rename CONTAINER NEW_NAME", "Rename a container",
              min_args=2, max_args=2)


def cmd_rename(cli: Cli, argv: list[str]) -> int:
    _, (old, new) = cli.parse(RENAME, argv)
    cli.api.post(f"/containers/{old}/rename", {"name": new})
    return 0


WAIT = Spec("wait", "wait CONTAINER [CONTAINER...]",
            "Block until one or more containers stop, then print their exit codes",
            min_args=1)


def cmd_wait(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.client import APIError

    _, args = cli.parse(WAIT, argv)
    failed = False
    for name in args:
        try:
            resp = cli.api.open("POST", f"/containers/{name}/wait")
            cli.print(str(wait_status(cli, resp)))
        except APIError as e:
            cli.warn(str(e))
            failed = True
    return 1 if failed else 0


# -- logs ------------------------------------------------------------------------------

LOGS = Spec("logs", "logs [OPTIONS] CONTAINER", "Fetch the logs of a container", [
    Flag("--details", BOOL, "Show extra details provided to logs"),
    Flag("-f, --follow", BOOL, "Follow log output"),
    Flag("--since", STR, "Show logs since timestamp (e.g. \"2013-01-02T13:23:37Z\") or "
         "relative (e.g. \"42m\" for 42 minutes)"),
    Flag("-n, --tail", STR, "Number of lines to show from the end of the logs",
         default="all"),
    Flag("-t, --timestamps", BOOL, "Show timestamps"),
    Flag("--until", STR, "Show logs before a timestamp (e.g. \"2013-01-02T13:23:37Z\") or "
         "relative (e.g. \"42m\" for 42 minutes)"),
], min_args=1, max_args=1)


def cmd_logs(cli: Cli, argv: list[str]) -> int:
    from .attach import FrameParser, _binary, _write

    opts, args = cli.parse(LOGS, argv)
    info = cli.api.get(f"/containers/{args[0]}/json").json()
    tty = bool((info.get("Config") or {}).get("Tty"))
    params = {"stdout": True, "stderr": True, "follow": opts.follow or None,
              "since": parse_time(opts.since) if opts.since else None,
              "until": parse_time(opts.until) if opts.until else None,
              "timestamps": opts.timestamps or None, "details": opts.details or None,
              "tail": opts.tail}
    out, err = _binary(cli.out), _binary(cli.err)
    cli.out.flush()
    parser = FrameParser()
    for chunk in cli.api.stream("GET", f"/containers/{info['Id']}/logs", params):
        if tty:
            _write(out, chunk)
            continue
        for stream, payload in parser.feed(chunk):
            _write(err if stream == 2 else out, payload)
    return 0


# -- inspect ---------------------------------------------------------------------------

INSPECT = Spec("inspect", "inspect [OPTIONS] NAME|ID [NAME|ID...]",
               "Return low-level information on objects", [
                   Flag("-f, --format", STR, "Format output using a custom template"),
                   Flag("-s, --size", BOOL, "Display total file sizes if the type is container"),
                   Flag("--type", STR, "Return JSON for specified type"),
               ], min_args=1)

_INSPECTORS = {
    "container": lambda cli, n, size: cli.api.get(
        f"/containers/{n}/json", {"size": size or None}).json(),
    "image": lambda cli, n, size: cli.api.get(f"/images/{n}/json").json(),
    "network": lambda cli, n, size: cli.api.get(f"/networks/{n}").json(),
    "volume": lambda cli, n, size: cli.api.get(f"/volumes/{n}").json(),
    "plugin": lambda cli, n, size: cli.api.get(f"/plugins/{n}/json").json(),
}


def _inspect(cli: Cli, argv: list[str], kind: str | None) -> int:
    from engine.sdk.client import APIError

    opts, args = cli.parse(INSPECT, argv)
    kind = kind or opts.type or None
    if kind and kind not in _INSPECTORS:
        raise StatusError(1, f'"{kind}" is not a valid value for --type')
    kinds = [kind] if kind else ["container", "image", "network", "volume", "plugin"]

    def get(name: str) -> Any:
        last: APIError | None = None
        for k in kinds:
            try:
                return _INSPECTORS[k](cli, name, opts.size)
            except APIError as e:
                if e.status not in (404, 400):
                    raise
                last = e
        assert last is not None
        raise APIError(404, last.message)

    def missing(name: str) -> str:
        if kind == "container":
            return f"Error response from daemon: No such container: {name}"
        if kind == "image":
            return f"Error response from daemon: No such image: {name}"
        if kind:
            return f"Error response from daemon: No such {kind}: {name}"
        return f"Error: No such object: {name}"

    return inspect_objects(cli, args, get, opts.format, missing)


def cmd_inspect(cli: Cli, argv: list[str]) -> int:
    return _inspect(cli, argv, None)


def cmd_container_inspect(cli: Cli, argv: list[str]) -> int:
    return _inspect(cli, argv, "container")


# -- top, port, diff, stats, prune -----------------------------------------------------

TOP = Spec("top", "top CONTAINER [ps OPTIONS]",
           "Display the running processes of a container", min_args=1, interspersed=False)


def cmd_top(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import tabwrite

    _, args = cli.parse(TOP, argv)
    params = {"ps_args": " ".join(args[1:])} if len(args) > 1 else None
    data = cli.api.get(f"/containers/{args[0]}/top", params).json() or {}
    lines = ["\t".join(data.get("Titles") or [])]
    lines += ["\t".join(row) for row in data.get("Processes") or []]
    cli.print(tabwrite("\n".join(lines), minwidth=0, padding=3).rstrip("\n"))
    return 0


PORT = Spec("port", "port CONTAINER [PRIVATE_PORT[/PROTO]]",
            "List port mappings or a specific mapping for the container",
            min_args=1, max_args=2)


def cmd_port(cli: Cli, argv: list[str]) -> int:
    _, args = cli.parse(PORT, argv)
    info = cli.api.get(f"/containers/{args[0]}/json").json()
    ports = ((info.get("NetworkSettings") or {}).get("Ports") or {})

    def show(binding: dict[str, str]) -> str:
        ip = binding.get("HostIp") or "0.0.0.0"
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{binding.get('HostPort', '')}"

    if len(args) == 2:
        want = args[1] if "/" in args[1] else args[1] + "/tcp"
        bindings = ports.get(want)
        if not bindings:
            raise StatusError(1, f"Error: No public port '{want}' published for {args[0]}")
        for b in bindings:
            cli.print(show(b))
        return 0

    def order(key: str) -> tuple[int, str]:
        num, _, proto = key.partition("/")
        return int(num) if num.isdigit() else 0, proto

    for key in sorted(ports, key=order):
        for b in ports[key] or []:
            cli.print(f"{key} -> {show(b)}")
    return 0


DIFF = Spec("diff", "diff CONTAINER",
            "Inspect changes to files or directories on a container's filesystem",
            min_args=1, max_args=1)


def cmd_diff(cli: Cli, argv: list[str]) -> int:
    _, args = cli.parse(DIFF, argv)
    for change in cli.api.get(f"/containers/{args[0]}/changes").json() or []:
        kind = {0: "C", 1: "A", 2: "D"}.get(change.get("Kind"), "?")
        cli.print(f"{kind} {change.get('Path', '')}")
    return 0


STATS = Spec("stats", "stats [OPTIONS] [CONTAINER...]",
             "Display a live stream of container(s) resource usage statistics", [
                 Flag("-a, --all", BOOL, "Show all containers (default shows just running)"),
                 Flag("--format", STR, "Format output using a custom template"),
                 Flag("--no-stream", BOOL, "Disable streaming stats and only pull the first "
                      "result"),
                 Flag("--no-trunc", BOOL, "Do not truncate output"),
             ])


class StatsRow:
    """The ``stats --format`` context computed from one ``/stats`` sample."""

    HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME",
               "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %",
               "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}

    def __init__(self, name: str, s: dict[str, Any], trunc: bool) -> None:
        from engine.sdk.format import human_size

        self.Container = name
        cid = s.get("id", "")
        self.ID = cid[:12] if trunc else cid
        self.Name = (s.get("name") or "").lstrip("/")
        cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
        cpu_delta = ((cpu.get("cpu_usage") or {}).get("total_usage", 0)
                     - (pre.get("cpu_usage") or {}).get("total_usage", 0))
        sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        ncpu = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {})
                                            .get("percpu_usage") or []) or 1
        perc = cpu_delta / sys_delta * ncpu * 100.0 if sys_delta > 0 and cpu_delta > 0 else 0.0
        self.CPUPerc = f"{perc:.2f}%"
        mem = s.get("memory_stats") or {}
        usage = mem.get("usage", 0) - ((mem.get("stats") or {}).get("total_inactive_file")
                                       or (mem.get("stats") or {}).get("inactive_file") or 0)
        limit = mem.get("limit", 0)
        self.MemUsage = (f"{human_size(usage, 4, binary=True)} / "
                         f"{human_size(limit, 4, binary=True)}")
        self.MemPerc = f"{(usage / limit * 100.0) if limit else 0.0:.2f}%"
        rx = sum(n.get("rx_bytes", 0) for n in (s.get("networks") or {}).values())
        tx = sum(n.get("tx_bytes", 0) for n in (s.get("networks") or {}).values())
        self.NetIO = f"{human_size(rx)} / {human_size(tx)}"
        rd = wr = 0
        for e in ((s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []):
            op = (e.get("op") or "").lower()
            if op == "read":
                rd += e.get("value", 0)
            elif op == "write":
                wr += e.get("value", 0)
        self.BlockIO = f"{human_size(rd)} / {human_size(wr)}"
        self.PIDs = str((s.get("pids_stats") or {}).get("current", 0))


STATS_TABLE = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
               "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")


def cmd_stats(cli: Cli, argv: list[str]) -> int:
    """``stats``: one sample per container (``--no-stream``); streaming mode repeats
    the samples until interrupted."""
    from engine.sdk.format import render

    opts, args = cli.parse(STATS, argv)
    names = args or [c["Id"] for c in cli.api.get(
        "/containers/json", {"all": opts.all or None}).json() or []]
    fmt = opts.format or STATS_TABLE
    if fmt == "json":
        fmt = "{{json .}}"
    while True:
        rows = []
        for name in names:
            sample = cli.api.get(f"/containers/{name}/stats",
                                 {"stream": False, "one-shot": False}).json() or {}
            rows.append(StatsRow(name, sample, not opts.no_trunc))
        text = render(fmt, rows, StatsRow.HEADERS)
        if not opts.no_stream and is_terminal(cli.out):
            cli.out.write("\x1b[2J\x1b[H")
        cli.out.write(text)
        cli.out.flush()
        if opts.no_stream:
            return 0
        time.sleep(1)


CONTAINER_PRUNE = Spec("container prune", "container prune [OPTIONS]",
                       "Remove all stopped containers", [
                           Flag("--filter", LIST, "Provide filter values (e.g. "
                                "\"until=<timestamp>\")"),
                           Flag("-f, --force", BOOL, "Do not prompt for confirmation"),
                       ], max_args=0)


def confirm(cli: Cli, force: bool, warning: str) -> bool:
    """Docker's prune prompt; ``--force`` skips it."""
    if force:
        return True
    cli.out.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    cli.out.flush()
    answer = cli.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def cmd_container_prune(cli: Cli, argv: list[str]) -> int:
    from engine.sdk.format import human_size

    opts, _ = cli.parse(CONTAINER_PRUNE, argv)
    if not confirm(cli, opts.force, "WARNING! This will remove all stopped containers."):
        return 0
    report = cli.api.post("/containers/prune", {"filters": parse_filters(opts.filter)}).json() or {}
    deleted = report.get("ContainersDeleted") or []
    if deleted:
        cli.print("Deleted Containers:")
        for cid in deleted:
            cli.print(cid)
        cli.print()
    cli.print(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}")
    return 0


__all__ = ["ContainerRow", "display_ports", "start_error_code"]
