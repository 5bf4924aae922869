"""OCI runtime spec (``config.json``, runtime-spec 1.0.2) for a Docker container.

:func:`build_spec` turns what the daemon knows about a container (its command, the
prepared rootfs and mounts, Docker's ``HostConfig``) into the same document ``runc``
accepts, with Docker's defaults: capabilities, masked and read-only paths, the standard
mounts, namespaces and ``RLIMIT_NOFILE``. :func:`write_bundle` stores it atomically.
The built-in runtime (:mod:`engine.core.runtime.linux`) executes this document too.
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping

from engine.core.runtime import caps as _caps
from engine.core.runtime import user as _user

OCI_VERSION = "1.0.2"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
DEFAULT_NOFILE = 1048576
DEFAULT_CPU_PERIOD = 100000

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

#: Device cgroup rules of a non-privileged container: deny everything, then allow
#: mknod of anything and use of the standard nodes, ptys and /dev/net/tun.
DEFAULT_DEVICE_RULES: tuple[dict, ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
)

_RLIMITS = {
    "as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE", "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}
_HOST_DEV_SKIP = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/console", "/dev/ptmx")


def default_mounts(*, shm_size: int = DEFAULT_SHM_SIZE, privileged: bool = False,
                   readonly_rootfs: bool = False) -> list[dict]:
    """Docker's standard mounts: /proc, /dev, /dev/pts, /sys, /sys/fs/cgroup,
    /dev/mqueue and /dev/shm. A privileged container with a writable rootfs gets
    /sys and its cgroups read-write."""
    sys_ro = [] if privileged and not readonly_rootfs else ["ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *sys_ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*sys_ro, "nosuid", "noexec", "nodev"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"]},
    ]


def namespaces(*, netns: str | None, host_network: bool, host_config: Mapping) -> list[dict]:
    """The namespaces list: mount always; pid, ipc, uts unless the matching
    ``HostConfig`` mode is ``host``; network per ``netns``/``host_network``; cgroup on
    a v2 host (Docker's default there is a private cgroup namespace)."""
    out: list[dict] = [{"type": "mount"}]
    if host_network:
        pass
    elif netns:
        out.append({"type": "network", "path": netns})
    else:
        out.append({"type": "network"})
    for kind, mode_key in (("uts", "UTSMode"), ("pid", "PidMode"), ("ipc", "IpcMode")):
        if (host_config.get(mode_key) or "") != "host":
            out.append({"type": kind})
    cgroupns = host_config.get("CgroupnsMode") or (
        "private" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "host")
    if cgroupns == "private":
        out.append({"type": "cgroup"})
    return out


def capabilities(host_config: Mapping) -> list[str]:
    """The container's capability set from Privileged, CapAdd and CapDrop."""
    if host_config.get("Privileged"):
        return _caps.all_caps()
    return _caps.adjust(_caps.DEFAULT_CAPS, host_config.get("CapAdd") or (),
                        host_config.get("CapDrop") or ())


def resources(host_config: Mapping) -> dict:
    """OCI ``linux.resources`` from Docker's HostConfig resource fields."""
    res: dict = {}
    memory: dict = {}
    mem = int(host_config.get("Memory") or 0)
    swap = int(host_config.get("MemorySwap") or 0)
    if mem > 0:
        memory["limit"] = mem
        if swap == 0:
            swap = 2 * mem  # Docker's default: as much swap as memory
        memory["swap"] = swap if swap > 0 else -1
    elif swap:
        memory["swap"] = swap
    if host_config.get("MemoryReservation"):
        memory["reservation"] = int(host_config["MemoryReservation"])
    if host_config.get("OomKillDisable"):
        memory["disableOOMKiller"] = True
    swappiness = host_config.get("MemorySwappiness")
    if swappiness is not None and swappiness >= 0:
        memory["swappiness"] = int(swappiness)
    if memory:
        res["memory"] = memory

    cpu: dict = {}
    if host_config.get("CpuShares"):
        cpu["shares"] = int(host_config["CpuShares"])
    nano = int(host_config.get("NanoCpus") or 0)
    if nano > 0:
        cpu["period"] = DEFAULT_CPU_PERIOD
        cpu["quota"] = nano * DEFAULT_CPU_PERIOD // 10**9
    if host_config.get("CpuPeriod"):
        cpu["period"] = int(host_config["CpuPeriod"])
    if host_config.get("CpuQuota"):
        cpu["quota"] = int(host_config["CpuQuota"])
    if host_config.get("CpusetCpus"):
        cpu["cpus"] = str(host_config["CpusetCpus"])
    if host_config.get("CpusetMems"):
        cpu["mems"] = str(host_config["CpusetMems"])
    if cpu:
        res["cpu"] = cpu

    pids_limit = host_config.get("PidsLimit")
    if pids_limit is not None and int(pids_limit) > 0:
        res["pids"] = {"limit": int(pids_limit)}

    if host_config.get("Privileged"):
        res["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        res["devices"] = [dict(rule) for rule in DEFAULT_DEVICE_RULES]
    return res


_CAP_SYS_RESOURCE = 24


def default_nofile() -> int:
    """Docker's default open-file limit, or the daemon's own hard limit when that is
    lower and the daemon lacks CAP_SYS_RESOURCE to raise it (some sandboxes): a limit
    the runtime cannot set would fail every start (runc: "error setting rlimit")."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= DEFAULT_NOFILE:
        return DEFAULT_NOFILE
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1:
                        return DEFAULT_NOFILE
    except OSError:
        pass
    return hard


def rlimits(host_config: Mapping) -> list[dict]:
    """``process.rlimits`` from HostConfig.Ulimits, with Docker's default
    ``RLIMIT_NOFILE`` of 1048576 unless overridden."""
    nofile = default_nofile()
    limits: dict[str, dict] = {
        "RLIMIT_NOFILE": {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
    }
    for ulimit in host_config.get("Ulimits") or ():
        name = str(ulimit.get("Name", "")).lower()
        if name not in _RLIMITS:
            raise ValueError(f"invalid ulimit type: {name}")
        kind = _RLIMITS[name]
        limits[kind] = {"type": kind, "hard": int(ulimit.get("Hard", 0)),
                        "soft": int(ulimit.get("Soft", 0))}
    return list(limits.values())


def no_new_privileges(security_opt: Iterable[str]) -> bool:
    """Whether SecurityOpt asks for ``no-new-privileges`` (bare, ``:true``, ``=true``)."""
    enabled = False
    for opt in security_opt:
        key, sep, value = opt.replace("=", ":", 1).partition(":")
        if key == "no-new-privileges":
            if not sep or value.lower() in ("true", "1"):
                enabled = True
            elif value.lower() in ("false", "0"):
                enabled = False
            else:
                raise ValueError(f"invalid --security-opt {opt}: expected a boolean")
    return enabled


def host_devices() -> list[dict]:
    """Every device node in the host's /dev, as OCI ``linux.devices`` entries (what a
    privileged container gets)."""
    devices = []
    for current, dirs, files in os.walk("/dev"):
        dirs[:] = [d for d in dirs if os.path.join(current, d) not in _HOST_DEV_SKIP]
        for name in files:
            path = os.path.join(current, name)
            if path in _HOST_DEV_SKIP:
                continue
            device = _device_entry(path, path)
            if device is not None:
                devices.append(device)
    return devices


def _device_entry(host_path: str, container_path: str) -> dict | None:
    try:
        st = os.lstat(host_path)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return {"path": container_path, "type": kind, "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid}


def _env(env: Iterable[str], *, home: str, tty: bool, hostname: str) -> list[str]:
    out = list(env)
    keys = {e.partition("=")[0] for e in out}
    if "PATH" not in keys:
        out.insert(0, DEFAULT_PATH_ENV)
    if hostname and "HOSTNAME" not in keys:
        out.append(f"HOSTNAME={hostname}")
    if tty and "TERM" not in keys:
        out.append("TERM=xterm")
    if "HOME" not in keys:
        out.append(f"HOME={home}")
    return out


def console_size(value) -> dict | None:
    """OCI ``consoleSize`` from Docker's ``ConsoleSize`` ``[height, width]``: the size
    the terminal has before the process starts (``docker run -t`` sends the client's),
    or ``None`` when it is missing or zero."""
    try:
        height, width = (int(v) for v in value or ())
    except (TypeError, ValueError):
        return None
    if height <= 0 or width <= 0:
        return None
    return {"height": height, "width": width}


def build_spec(
    *,
    container_id: str,
    args: list[str],
    env: list[str],
    cwd: str = "/",
    user: str = "",
    tty: bool = False,
    hostname: str = "",
    domainname: str = "",
    rootfs: str,
    readonly_rootfs: bool = False,
    mounts: Iterable[dict] = (),
    netns: str | None = None,
    host_network: bool = False,
    host_config: dict | None = None,
    cgroups_path: str,
    annotations: dict | None = None,
) -> dict:
    """The OCI runtime spec for one container.

    ``rootfs`` must already hold the container's filesystem: ``user`` is resolved
    against its /etc/passwd and /etc/group (:func:`engine.core.runtime.user.lookup`).
    ``mounts`` (OCI mount objects prepared by the daemon) come after Docker's default
    mounts, so they can shadow them. Raises :class:`ValueError` for an unknown user,
    group, capability or ulimit.
    """
    hc: Mapping = host_config or {}
    if not args:
        raise ValueError("no command specified")
    privileged = bool(hc.get("Privileged"))
    readonly = bool(readonly_rootfs or hc.get("ReadonlyRootfs"))
    exec_user = _user.lookup(rootfs, user, tuple(hc.get("GroupAdd") or ()))
    cap_list = capabilities(hc)
    uts_private = (hc.get("UTSMode") or "") != "host"

    process: dict = {
        "terminal": bool(tty),
        "user": {"uid": exec_user.uid, "gid": exec_user.gid,
                 "additionalGids": list(exec_user.additional_gids)},
        "args": list(args),
        "env": _env(env, home=exec_user.home, tty=tty, hostname=hostname),
        "cwd": cwd or "/",
        "capabilities": {"bounding": cap_list, "effective": cap_list,
                         "permitted": cap_list},
        "rlimits": rlimits(hc),
        "noNewPrivileges": no_new_privileges(hc.get("SecurityOpt") or ()),
    }
    if hc.get("OomScoreAdj"):
        process["oomScoreAdj"] = int(hc["OomScoreAdj"])
    size = console_size(hc.get("ConsoleSize")) if tty else None
    if size:
        process["consoleSize"] = size
    if not process["cwd"].startswith("/"):
        raise ValueError(f"the working directory '{cwd}' is invalid, it needs to be an "
                         "absolute path")

    shm_size = int(hc.get("ShmSize") or 0) or DEFAULT_SHM_SIZE
    all_mounts = default_mounts(shm_size=shm_size, privileged=privileged,
                                readonly_rootfs=readonly)
    all_mounts.extend(dict(m) for m in mounts)

    linux: dict = {
        "namespaces": namespaces(netns=netns, host_network=host_network, host_config=hc),
        "resources": resources(hc),
        "cgroupsPath": cgroups_path,
        "maskedPaths": [] if privileged else list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": [] if privileged else list(DEFAULT_READONLY_PATHS),
    }
    devices = host_devices() if privileged else []
    for mapping in hc.get("Devices") or ():
        device = _device_entry(mapping["PathOnHost"],
                               mapping.get("PathInContainer") or mapping["PathOnHost"])
        if device is None:
            raise ValueError(f"error gathering device information while adding custom "
                             f"device \"{mapping['PathOnHost']}\": not a device node")
        devices.append(device)
        if not privileged:
            linux["resources"]["devices"].append(
                {"allow": True, "type": device["type"], "major": device["major"],
                 "minor": device["minor"],
                 "access": mapping.get("CgroupPermissions") or "rwm"})
    if devices:
        linux["devices"] = devices
    if hc.get("Sysctls"):
        linux["sysctl"] = {str(k): str(v) for k, v in hc["Sysctls"].items()}

    spec: dict = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": readonly},
        "mounts": all_mounts,
        "linux": linux,
        "annotations": {"org.engine.container.id": container_id, **(annotations or {})},
    }
    if uts_private:
        if hostname:
            spec["hostname"] = hostname
        if domainname:
            spec["domainname"] = domainname
    return spec


def write_bundle(bundle_dir: str, spec: dict) -> str:
    """Write ``spec`` as ``bundle_dir/config.json`` atomically (temp file, rename) and
    return the file's path. Not fsynced: a bundle is runtime state, written again at
    every start and worthless after a reboot, so a crash may lose it but a reader
    never sees half of one."""
    os.makedirs(bundle_dir, 0o711, exist_ok=True)
    final = os.path.join(bundle_dir, "config.json")
    tmp = os.path.join(bundle_dir, f".config.json.{os.getpid()}.tmp")
    data = json.dumps(spec, indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(tmp, final)
    return final
