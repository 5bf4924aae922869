"""``run``/``create`` flags and their translation into a ``POST /containers/create`` body.

The translation follows the docker CLI: the same field names and the same parsing of
sizes (``64m``), publish specs (``127.0.0.1:8000-8001:80-81/udp``), volume specs
(``/host:/ctr:ro``, ``name:/ctr``, ``/ctr``), ``--mount`` CSV, restart policies,
ulimits, durations and capabilities, so that the daemon receives what ``docker`` would
send for the same command line.
"""
from __future__ import annotations

import os

from .flags import BOOL, INT, LIST, STR, Flag, Options, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from typing import Any

# -- value parsers ---------------------------------------------------------------------

_BINARY = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(text: str) -> int:
    """go-units ``RAMInBytes``: ``64m`` -> 67108864. Suffixes b/k/m/g/t/p, optionally
    followed by ``b`` or ``ib``, case-insensitive; a bare number is bytes."""
    s = text.strip().lower()
    i = 0
    while i < len(s) and (s[i].isdigit() or s[i] == "."):
        i += 1
    number, unit = s[:i], s[i:].strip()
    if unit.endswith("ib"):
        unit = unit[:-2]
    elif unit.endswith("b") and len(unit) == 2:
        unit = unit[:-1]
    if not number or unit not in _BINARY:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(number) * _BINARY[unit])


def parse_memory_swap(text: str) -> int:
    return -1 if text.strip() == "-1" else parse_bytes(text)


def parse_cpus(text: str) -> int:
    """``--cpus 1.5`` -> NanoCPUs 1500000000."""
    value = float(text)
    if value < 0:
        raise ValueError("invalid value: cpus must be positive")
    nano = round(value * 1e9)
    if value and not nano:
        raise ValueError("value is too precise")
    return nano


_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_duration(text: str) -> int:
    """A Go duration (``1m30s``, ``100ms``, ``2h``) in nanoseconds."""
    s = text.strip()
    if s in ("0", ""):
        return 0
    total, i = 0.0, 0
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        num, unit = s[i:j], s[j:k]
        if not num or unit not in _DURATION_UNITS:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(num) * _DURATION_UNITS[unit]
        i = k
    return sign * int(total)


def parse_restart(text: str) -> dict[str, Any]:
    name, _, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure", ""):
        raise ValueError(f"invalid restart policy {name!r}")
    if count and name != "on-failure":
        raise ValueError(f"maximum retry count cannot be used with restart policy '{name}'")
    return {"Name": name or "no", "MaximumRetryCount": int(count) if count else 0}


def parse_ulimit(text: str) -> dict[str, Any]:
    name, eq, limits = text.partition("=")
    if not eq or not name:
        raise ValueError(f"invalid ulimit argument: {text}")
    soft, _, hard = limits.partition(":")
    try:
        s = int(soft)
        h = int(hard) if hard else s
    except ValueError:
        raise ValueError(f"invalid ulimit argument: {text}") from None
    if s > h:
        raise ValueError(f"ulimit soft limit must be less than or equal to hard limit: {s} > {h}")
    return {"Name": name, "Hard": h, "Soft": s}


def _split_port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        start = int(lo)
        end = int(hi) if hi else start
    except ValueError:
        raise ValueError(f"invalid port: {text!r}") from None
    if not (0 <= start <= end <= 65535):
        raise ValueError(f"invalid port range: {text!r}")
    return start, end


def parse_publish(spec: str) -> list[tuple[str, str, str]]:
    """``[ip:][hostPort:]containerPort[/proto]`` -> ``(port/proto, hostIp, hostPort)``
    rows, one per container port (ranges map one to one, or a single container port to
    a host range)."""
    raw, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto: {proto}")
    ip = ""
    if raw.startswith("["):  # [::1]:80:80
        end = raw.find("]")
        if end < 0:
            raise ValueError(f"invalid IP address in {spec!r}")
        ip, raw = raw[1:end], raw[end + 1:].lstrip(":")
        parts = raw.split(":")
        host, ctr = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    else:
        parts = raw.split(":")
        if len(parts) == 1:
            host, ctr = "", parts[0]
        elif len(parts) == 2:
            host, ctr = parts
        elif len(parts) == 3:
            ip, host, ctr = parts
        else:
            raise ValueError(f"invalid port format for --publish: {spec}")
    if not ctr:
        raise ValueError(f"no port specified: {spec}<empty>")
    cstart, cend = _split_port_range(ctr)
    rows: list[tuple[str, str, str]] = []
    if host:
        hstart, hend = _split_port_range(host)
        if hend != hstart and cend != cstart and hend - hstart != cend - cstart:
            raise ValueError("invalid ranges specified for container and host Ports: "
                             f"{ctr} and {host}")
        # a single container port may take a host range: the daemon picks one of it
        host_range = cend == cstart and hend != hstart
        for k, port in enumerate(range(cstart, cend + 1)):
            hp = f"{hstart}-{hend}" if host_range else str(hstart + k)
            rows.append((f"{port}/{proto}", ip, hp))
    else:
        rows.extend((f"{p}/{proto}", ip, "") for p in range(cstart, cend + 1))
    return rows


def parse_expose(spec: str) -> list[str]:
    raw, _, proto = spec.partition("/")
    start, end = _split_port_range(raw)
    return [f"{p}/{proto or 'tcp'}" for p in range(start, end + 1)]


def parse_mount(spec: str) -> dict[str, Any]:
    """``--mount type=bind,src=/a,dst=/b,readonly`` -> a Mount object."""
    mount: dict[str, Any] = {"Type": "volume"}
    opts: dict[str, Any] = {}
    for field in _split_csv(spec):
        key, eq, value = field.partition("=")
        key = key.strip().lower()
        if key == "type":
            mount["Type"] = value
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "destination", "dst"):
            mount["Target"] = value
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _bool_value(value) if eq else True
        elif key == "consistency":
            mount["Consistency"] = value
        elif key == "bind-propagation":
            opts.setdefault("BindOptions", {})["Propagation"] = value
        elif key == "bind-nonrecursive":
            opts.setdefault("BindOptions", {})["NonRecursive"] = _bool_value(value) if eq else True
        elif key == "volume-nocopy":
            opts.setdefault("VolumeOptions", {})["NoCopy"] = _bool_value(value) if eq else True
        elif key == "volume-driver":
            opts.setdefault("VolumeOptions", {}).setdefault("DriverConfig", {})["Name"] = value
        elif key == "volume-opt":
            k, _, v = value.partition("=")
            (opts.setdefault("VolumeOptions", {}).setdefault("DriverConfig", {})
             .setdefault("Options", {}))[k] = v
        elif key == "volume-label":
            k, _, v = value.partition("=")
            opts.setdefault("VolumeOptions", {}).setdefault("Labels", {})[k] = v
        elif key == "tmpfs-size":
            opts.setdefault("TmpfsOptions", {})["SizeBytes"] = parse_bytes(value)
        elif key == "tmpfs-mode":
            opts.setdefault("TmpfsOptions", {})["Mode"] = int(value, 8)
        else:
            raise ValueError(f"unexpected key '{key}' in '{field}'")
    if "Target" not in mount:
        raise ValueError("target is required")
    kind = mount["Type"]
    wanted = {"bind": "BindOptions", "volume": "VolumeOptions", "tmpfs": "TmpfsOptions"}
    for name, value in opts.items():
        if wanted.get(kind) != name:
            raise ValueError(f"cannot mix '{name}' options with type '{kind}'")
        mount[name] = value
    if kind == "bind" and not mount.get("Source"):
        raise ValueError("source is required when specifying bind mount")
    return mount


def _bool_value(text: str) -> bool:
    if text.lower() in ("1", "true"):
        return True
    if text.lower() in ("0", "false"):
        return False
    raise ValueError(f"invalid value {text!r}")


def _split_csv(text: str) -> list[str]:
    """Split a CSV field list, honouring double quotes (``"a,b"``)."""
    fields, cur, quoted = [], [], False
    for c in text:
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    fields.append("".join(cur))
    return [f for f in fields if f]


def parse_volume(spec: str) -> tuple[str | None, str]:
    """``-v`` spec -> ``(bind, anonymous_target)``: exactly one is set. A spec with a
    source (``/host:/ctr[:mode]`` or ``name:/ctr[:mode]``) is a bind string; a lone
    ``/ctr`` is an anonymous volume. ``./rel`` sources are made absolute."""
    parts = spec.split(":")
    if len(parts) == 1:
        if not spec.startswith("/"):
            raise ValueError(f"invalid volume specification: '{spec}'")
        return None, spec
    if len(parts) > 3:
        raise ValueError(f"invalid volume specification: '{spec}'")
    src, dst = parts[0], parts[1]
    if not dst.startswith("/"):
        raise ValueError(f"invalid volume specification: '{spec}': "
                         "mount path must be absolute")
    if not src:
        raise ValueError(f"invalid volume specification: '{spec}'")
    if src == "." or src.startswith("./") or src == ".." or src.startswith("../"):
        src = os.path.abspath(src)
        return ":".join([src, *parts[1:]]), ""
    return spec, ""


def read_kv_file(path: str, env_lookup: bool) -> list[str]:
    """Lines of an ``--env-file``/``--label-file``; ``#`` comments and blank lines are
    skipped. In an env file a bare ``NAME`` takes its value from our environment and
    is dropped when unset."""
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.lstrip().rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            if "=" not in line and env_lookup:
                if line in os.environ:
                    out.append(f"{line}={os.environ[line]}")
                continue
            out.append(line)
    return out


def normalize_cap(cap: str) -> str:
    cap = cap.strip().upper()
    if cap == "ALL" or cap.startswith("CAP_"):
        return cap
    return "CAP_" + cap


# -- the flag table --------------------------------------------------------------------

CREATE_FLAGS: list[Flag] = [
    Flag("-a, --attach", LIST, "Attach to STDIN, STDOUT or STDERR"),
    Flag("--blkio-weight", INT, "Block IO (relative weight), between 10 and 1000, or 0 to "
         "disable"),
    Flag("--add-host", LIST, "Add a custom host-to-IP mapping (host:ip)"),
    Flag("--cap-add", LIST, "Add Linux capabilities"),
    Flag("--cap-drop", LIST, "Drop Linux capabilities"),
    Flag("--cgroup-parent", STR, "Optional parent cgroup for the container"),
    Flag("--cgroupns", STR, "Cgroup namespace to use (host|private)"),
    Flag("--cidfile", STR, "Write the container ID to the file"),
    Flag("--cpu-period", INT, "Limit CPU CFS (Completely Fair Scheduler) period"),
    Flag("--cpu-quota", INT, "Limit CPU CFS (Completely Fair Scheduler) quota"),
    Flag("--cpu-rt-period", INT, "Limit CPU real-time period in microseconds"),
    Flag("--cpu-rt-runtime", INT, "Limit CPU real-time runtime in microseconds"),
    Flag("-c, --cpu-shares", INT, "CPU shares (relative weight)"),
    Flag("--cpus", STR, "Number of CPUs", check=parse_cpus),
    Flag("--cpuset-cpus", STR, "CPUs in which to allow execution (0-3, 0,1)"),
    Flag("--cpuset-mems", STR, "MEMs in which to allow execution (0-3, 0,1)"),
    Flag("--device", LIST, "Add a host device to the container"),
    Flag("--device-cgroup-rule", LIST, "Add a rule to the cgroup allowed devices list"),
    Flag("--disable-content-trust", BOOL, "Skip image verification", default=True,
         hidden=True),
    Flag("--dns", LIST, "Set custom DNS servers"),
    Flag("--dns-option", LIST, "Set DNS options"),
    Flag("--dns-search", LIST, "Set custom DNS search domains"),
    Flag("--domainname", STR, "Container NIS domain name"),
    Flag("--entrypoint", STR, "Overwrite the default ENTRYPOINT of the image"),
    Flag("-e, --env", LIST, "Set environment variables"),
    Flag("--env-file", LIST, "Read in a file of environment variables"),
    Flag("--expose", LIST, "Expose a port or a range of ports"),
    Flag("--group-add", LIST, "Add additional groups to join"),
    Flag("--health-cmd", STR, "Command to run to check health"),
    Flag("--health-interval", STR, "Time between running the check (ms|s|m|h) (default 0s)",
         check=parse_duration),
    Flag("--health-retries", INT, "Consecutive failures needed to report unhealthy"),
    Flag("--health-start-period", STR, "Start period for the container to initialize "
         "before starting health-retries countdown (ms|s|m|h) (default 0s)",
         check=parse_duration),
    Flag("--health-start-interval", STR, "Time between running the check during the "
         "start period (ms|s|m|h) (default 0s)", check=parse_duration),
    Flag("--health-timeout", STR, "Maximum time to allow one check to run (ms|s|m|h) "
         "(default 0s)", check=parse_duration),
    Flag("-h, --hostname", STR, "Container host name"),
    Flag("--init", BOOL, "Run an init inside the container that forwards signals and "
         "reaps processes"),
    Flag("-i, --interactive", BOOL, "Keep STDIN open even if not attached"),
    Flag("--ip", STR, "IPv4 address (e.g., 172.30.100.104)"),
    Flag("--ip6", STR, "IPv6 address (e.g., 2001:db8::33)"),
    Flag("--ipc", STR, "IPC mode to use"),
    Flag("--isolation", STR, "Container isolation technology", hidden=True),
    Flag("-l, --label", LIST, "Set meta data on a container"),
    Flag("--label-file", LIST, "Read in a line delimited file of labels"),
    Flag("--link", LIST, "Add link to another container", hidden=True),
    Flag("--link-local-ip", LIST, "Container IPv4/IPv6 link-local addresses"),
    Flag("--log-driver", STR, "Logging driver for the container"),
    Flag("--log-opt", LIST, "Log driver options"),
    Flag("--mac-address", STR, "Container MAC address (e.g., 92:d0:c6:0a:29:33)"),
    Flag("-m, --memory", STR, "Memory limit", check=parse_bytes),
    Flag("--memory-reservation", STR, "Memory soft limit", check=parse_bytes),
    Flag("--memory-swap", STR, "Swap limit equal to memory plus swap: '-1' to enable "
         "unlimited swap", check=parse_memory_swap),
    Flag("--memory-swappiness", INT, "Tune container memory swappiness (0 to 100)",
         default=-1),
    Flag("--mount", LIST, "Attach a filesystem mount to the container", check=parse_mount),
    Flag("--name", STR, "Assign a name to the container"),
    Flag("--network", STR, "Connect a container to a network"),
    Flag("--net", STR, "Connect a container to a network", hidden=True),
    Flag("--network-alias", LIST, "Add network-scoped alias for the container"),
    Flag("--net-alias", LIST, "Add network-scoped alias for the container", hidden=True),
    Flag("--no-healthcheck", BOOL, "Disable any container-specified HEALTHCHECK"),
    Flag("--oom-kill-disable", BOOL, "Disable OOM Killer"),
    Flag("--oom-score-adj", INT, "Tune host's OOM preferences (-1000 to 1000)"),
    Flag("--pid", STR, "PID namespace to use"),
    Flag("--pids-limit", INT, "Tune container pids limit (set -1 for unlimited)"),
    Flag("--platform", STR, "Set platform if server is multi-platform capable"),
    Flag("--privileged", BOOL, "Give extended privileges to this container"),
    Flag("-p, --publish", LIST, "Publish a container's port(s) to the host"),
    Flag("-P, --publish-all", BOOL, "Publish all exposed ports to random ports"),
    Flag("--pull", STR, 'Pull image before running ("always", "missing", "never")',
         default="missing"),
    Flag("-q, --quiet", BOOL, "Suppress the pull output"),
    Flag("--read-only", BOOL, "Mount the container's root filesystem as read only"),
    Flag("--restart", STR, "Restart policy to apply when a container exits", default="no"),
    Flag("--rm", BOOL, "Automatically remove the container when it exits"),
    Flag("--runtime", STR, "Runtime to use for this container"),
    Flag("--security-opt", LIST, "Security Options"),
    Flag("--shm-size", STR, "Size of /dev/shm", check=parse_bytes),
    Flag("--stop-signal", STR, "Signal to stop the container"),
    Flag("--stop-timeout", INT, "Timeout (in seconds) to stop a container"),
    Flag("--storage-opt", LIST, "Storage driver options for the container"),
    Flag("--sysctl", LIST, "Sysctl options"),
    Flag("--tmpfs", LIST, "Mount a tmpfs directory"),
    Flag("-t, --tty", BOOL, "Allocate a pseudo-TTY"),
    Flag("--ulimit", LIST, "Ulimit options", check=parse_ulimit),
    Flag("-u, --user", STR, "Username or UID (format: <name|uid>[:<group|gid>])"),
    Flag("--userns", STR, "User namespace to use"),
    Flag("--uts", STR, "UTS namespace to use"),
    Flag("-v, --volume", LIST, "Bind mount a volume"),
    Flag("--volume-driver", STR, "Optional volume driver for the container"),
    Flag("--volumes-from", LIST, "Mount volumes from the specified container(s)"),
    Flag("-w, --workdir", STR, "Working directory inside the container"),
]

RUN_ONLY_FLAGS: list[Flag] = [
    Flag("-d, --detach", BOOL, "Run container in background and print container ID"),
    Flag("--detach-keys", STR, "Override the key sequence for detaching a container"),
    Flag("--sig-proxy", BOOL, "Proxy received signals to the process", default=True),
]

RUN_FLAGS: list[Flag] = CREATE_FLAGS + RUN_ONLY_FLAGS


# -- translation -----------------------------------------------------------------------

_BUILTIN_NETWORKS = ("default", "bridge", "host", "none")


def build_create(opts: Options, args: list[str], tty_size: tuple[int, int] | None = None,
                 detach: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(query, body)`` for ``POST /containers/create`` from parsed flags and
    ``IMAGE [COMMAND] [ARG...]``. Raises :class:`UsageError` for invalid combinations."""
    image, cmd = args[0], args[1:]

    if opts.rm and opts.restart not in ("", "no"):
        raise UsageError("conflicting options: cannot specify both --restart and --rm")
    try:
        restart = parse_restart(opts.restart)
    except ValueError as e:
        raise UsageError(str(e)) from None

    # attach: -a given -> exactly those; else stdout+stderr; -i adds stdin
    attach = {a.lower() for a in opts.attach}
    for a in attach:
        if a not in ("stdin", "stdout", "stderr"):
            raise UsageError(f"invalid argument {a!r} for -a: valid streams are STDIN, "
                             "STDOUT and STDERR")
    attach_stdin = "stdin" in attach or opts.interactive
    attach_stdout = "stdout" in attach or not attach
    attach_stderr = "stderr" in attach or not attach
    if detach:
        if opts.attach:
            raise UsageError("conflicting options: cannot specify both --attach and --detach")
        attach_stdin = attach_stdout = attach_stderr = False

    # environment: env files first, then -e; bare NAME takes our value when set
    env: list[str] = []
    try:
        for path in opts.env_file:
            env.extend(read_kv_file(path, env_lookup=True))
        labels_raw: list[str] = []
        for path in opts.label_file:
            labels_raw.extend(read_kv_file(path, env_lookup=False))
    except OSError as e:
        raise UsageError(f"{e.filename}: {e.strerror}") from None
    for item in opts.env:
        if "=" not in item and item in os.environ:
            item = f"{item}={os.environ[item]}"
        elif item.startswith("="):
            raise UsageError(f"invalid environment variable: {item}")
        env.append(item)
    labels: dict[str, str] = {}
    for item in labels_raw + list(opts.label):
        k, _, v = item.partition("=")
        labels[k] = v

    # ports
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    try:
        for spec in opts.publish:
            for port, ip, host in parse_publish(spec):
                exposed[port] = {}
                bindings.setdefault(port, []).append({"HostIp": ip, "HostPort": host})
        for spec in opts.expose:
            for port in parse_expose(spec):
                exposed[port] = {}
    except ValueError as e:
        raise UsageError(str(e)) from None

    # volumes
    binds: list[str] = []
    volumes: dict[str, dict] = {}
    for spec in opts.volume:
        try:
            bind, anon = parse_volume(spec)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if bind:
            binds.append(bind)
        else:
            volumes[anon] = {}
    tmpfs: dict[str, str] = {}
    for spec in opts.tmpfs:
        path, _, options = spec.partition(":")
        tmpfs[path] = options

    # network
    network = opts.network or opts.net or "default"
    aliases = list(opts.network_alias) + list(opts.net_alias)
    endpoints: dict[str, Any] = {}
    if aliases or opts.ip or opts.ip6 or opts.link_local_ip or opts.mac_address:
        builtin = network in _BUILTIN_NETWORKS or network.startswith("container:")
        if builtin and aliases:
            raise UsageError("network-scoped aliases are only supported for user-defined "
                             "networks")
        ep: dict[str, Any] = {}
        if aliases:
            ep["Aliases"] = aliases
        if opts.ip or opts.ip6 or opts.link_local_ip:
            ipam: dict[str, Any] = {}
            if opts.ip:
                ipam["IPv4Address"] = opts.ip
            if opts.ip6:
                ipam["IPv6Address"] = opts.ip6
            if opts.link_local_ip:
                ipam["LinkLocalIPs"] = list(opts.link_local_ip)
            ep["IPAMConfig"] = ipam
        if opts.mac_address:
            ep["MacAddress"] = opts.mac_address
        endpoints[network] = ep

    # healthcheck
    health: dict[str, Any] | None = None
    health_given = any(opts.given(f.long) for f in CREATE_FLAGS if f.long.startswith("health-"))
    if opts.no_healthcheck and health_given:
        raise UsageError("--no-healthcheck conflicts with --health-* options")
    if opts.no_healthcheck:
        health = {"Test": ["NONE"]}
    elif (opts.health_cmd or opts.health_interval or opts.health_timeout
          or opts.health_start_period or opts.health_retries or opts.health_start_interval):
        health = {"Test": ["CMD-SHELL", opts.health_cmd] if opts.health_cmd else None,
                  "Interval": opts.health_interval or 0,
                  "Timeout": opts.health_timeout or 0,
                  "StartPeriod": opts.health_start_period or 0,
                  "Retries": opts.health_retries}
        if opts.health_start_interval:
            health["StartInterval"] = opts.health_start_interval

    entrypoint: list[str] | None = None
    if opts.entrypoint:
        entrypoint = [opts.entrypoint]
    elif opts.given("entrypoint"):
        entrypoint = [""]

    log_config: dict[str, Any] = {"Type": opts.log_driver or "", "Config": {}}
    for item in opts.log_opt:
        k, _, v = item.partition("=")
        log_config["Config"][k] = v

    sysctls: dict[str, str] = {}
    for item in opts.sysctl:
        k, eq, v = item.partition("=")
        if not eq:
            raise UsageError(f"sysctl '{item}' is not allowed")
        sysctls[k] = v

    security_opt = [_load_security_opt(s) for s in opts.security_opt]
    devices = [_parse_device(d) for d in opts.device]
    storage_opt: dict[str, str] = {}
    for item in opts.storage_opt:
        k, _, v = item.partition("=")
        storage_opt[k] = v

    host_config: dict[str, Any] = {
        "Binds": binds or None,
        "ContainerIDFile": opts.cidfile or "",
        "LogConfig": log_config,
        "NetworkMode": network,
        "PortBindings": bindings,
        "RestartPolicy": restart,
        "AutoRemove": bool(opts.rm),
        "VolumeDriver": opts.volume_driver or "",
        "VolumesFrom": list(opts.volumes_from) or None,
        "CapAdd": [normalize_cap(c) for c in opts.cap_add] or None,
        "CapDrop": [normalize_cap(c) for c in opts.cap_drop] or None,
        "CgroupnsMode": opts.cgroupns or "",
        "Dns": list(opts.dns),
        "DnsOptions": list(opts.dns_option),
        "DnsSearch": list(opts.dns_search),
        "ExtraHosts": [h.replace("=", ":", 1) for h in opts.add_host] or None,
        "GroupAdd": list(opts.group_add) or None,
        "IpcMode": opts.ipc or "",
        "Links": list(opts.link) or None,
        "OomScoreAdj": opts.oom_score_adj,
        "PidMode": opts.pid or "",
        "Privileged": bool(opts.privileged),
        "PublishAllPorts": bool(opts.publish_all),
        "ReadonlyRootfs": bool(opts.read_only),
        "SecurityOpt": security_opt or None,
        "StorageOpt": storage_opt or None,
        "Tmpfs": tmpfs or None,
        "UTSMode": opts.uts or "",
        "UsernsMode": opts.userns or "",
        "ShmSize": opts.shm_size or 0,
        "Sysctls": sysctls or None,
        "Runtime": opts.runtime or "",
        "ConsoleSize": list(tty_size) if tty_size else [0, 0],
        "Isolation": opts.isolation or "",
        "CpuShares": opts.cpu_shares,
        "Memory": opts.memory or 0,
        "NanoCpus": opts.cpus or 0,
        "CgroupParent": opts.cgroup_parent or "",
        "CpuPeriod": opts.cpu_period,
        "CpuQuota": opts.cpu_quota,
        "CpuRealtimePeriod": opts.cpu_rt_period,
        "CpuRealtimeRuntime": opts.cpu_rt_runtime,
        "BlkioWeight": opts.blkio_weight,
        "DeviceCgroupRules": list(opts.device_cgroup_rule) or None,
        "CpusetCpus": opts.cpuset_cpus or "",
        "CpusetMems": opts.cpuset_mems or "",
        "Devices": devices,
        "MemoryReservation": opts.memory_reservation or 0,
        "MemorySwap": opts.memory_swap or 0,
        "MemorySwappiness": opts.memory_swappiness,
        "OomKillDisable": bool(opts.oom_kill_disable),
        "PidsLimit": opts.pids_limit,
        "Ulimits": list(opts.ulimit),
        "Mounts": list(opts.mount) or None,
    }
    if opts.given("init"):
        host_config["Init"] = bool(opts.init)

    body: dict[str, Any] = {
        "Hostname": opts.hostname or "",
        "Domainname": opts.domainname or "",
        "User": opts.user or "",
        "AttachStdin": attach_stdin,
        "AttachStdout": attach_stdout,
        "AttachStderr": attach_stderr,
        "Tty": bool(opts.tty),
        "OpenStdin": bool(opts.interactive),
        "StdinOnce": bool(opts.interactive) and attach_stdin,
        "Env": env,
        "Cmd": cmd or None,
        "Image": image,
        "Volumes": volumes,
        "WorkingDir": opts.workdir or "",
        "Entrypoint": entrypoint,
        "OnBuild": None,
        "Labels": labels,
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": endpoints},
    }
    if exposed:
        body["ExposedPorts"] = exposed
    if health is not None:
        body["Healthcheck"] = health
    if opts.stop_signal:
        body["StopSignal"] = opts.stop_signal
    if opts.given("stop-timeout"):
        body["StopTimeout"] = opts.stop_timeout
    if opts.mac_address:
        body["MacAddress"] = opts.mac_address

    query: dict[str, Any] = {"name": opts.name or None, "platform": opts.platform or None}
    return query, body


def _load_security_opt(opt: str) -> str:
    """``seccomp=<file>`` carries the profile's content, as the docker CLI sends it."""
    key, sep, value = opt.partition("=" if "=" in opt else ":")
    if key == "seccomp" and value not in ("unconfined", "builtin", ""):
        try:
            with open(value, encoding="utf-8") as f:
                import json

                content = json.dumps(json.load(f), separators=(",", ":"))
        except (OSError, ValueError) as e:
            raise UsageError(f"opening seccomp profile ({value}) failed: {e}") from None
        return f"seccomp={content}"
    return opt


def _parse_device(spec: str) -> dict[str, str]:
    parts = spec.split(":")
    src = parts[0]
    dst, perms = src, "rwm"
    if len(parts) == 2:
        if all(c in "rwm" for c in parts[1]) and not parts[1].startswith("/"):
            perms = parts[1]
        else:
            dst = parts[1]
    elif len(parts) == 3:
        dst, perms = parts[1], parts[2]
    elif len(parts) > 3:
        raise UsageError(f"invalid device specification: {spec}")
    return {"PathOnHost": src, "PathInContainer": dst, "CgroupPermissions": perms}


__all__ = ["CREATE_FLAGS", "RUN_FLAGS", "build_create", "parse_bytes", "parse_cpus",
           "parse_duration", "parse_expose", "parse_mount", "parse_publish",
           "parse_restart", "parse_ulimit", "parse_volume", "read_kv_file"]
