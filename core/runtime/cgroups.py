"""Container cgroups on v1 (one hierarchy per controller) and v2 (unified).

A cgroup is named by a path relative to the hierarchy root, by convention
``engine/<container_id>``. On v1 it exists once per controller, under
``/sys/fs/cgroup/<controller>/<path>``; on v2 once, under ``/sys/fs/cgroup/<path>``.
``resources`` arguments are OCI ``linux.resources`` objects (memory, cpu, pids,
devices). All functions are plain blocking calls on cgroupfs.
"""
from __future__ import annotations

import errno
import os
import signal
import time

ROOT = "/sys/fs/cgroup"
#: v1 controllers a container is placed in (those the host has mounted).
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "cpuset", "devices", "blkio")
_V2_WANTED = ("cpuset", "cpu", "io", "memory", "pids")
_UNLIMITED = 2**63 - 4096  # what v1 memory files report for "no limit"


def version() -> int:
    """2 when the host uses the unified hierarchy, else 1."""
    return 2 if os.path.exists(os.path.join(ROOT, "cgroup.controllers")) else 1


def _rel(path: str) -> str:
    rel = os.path.normpath("/" + path).lstrip("/")
    if not rel or rel == ".":
        raise ValueError(f"refusing to use the root cgroup ({path!r})")
    return rel


def _v1_dirs(path: str) -> dict[str, str]:
    """controller -> directory for every mounted v1 controller (co-mounted controllers
    such as ``cpu,cpuacct`` map to the same directory)."""
    rel = _rel(path)
    dirs = {}
    for ctrl in V1_CONTROLLERS:
        base = os.path.join(ROOT, ctrl)
        if os.path.isdir(base):
            dirs[ctrl] = os.path.join(base, rel)
    return dirs


def _unique(dirs: dict[str, str]) -> list[str]:
    seen: dict[str, str] = {}
    for d in dirs.values():
        seen.setdefault(os.path.realpath(d), d)
    return list(seen.values())


def _dirs(path: str) -> list[str]:
    if version() == 2:
        return [os.path.join(ROOT, _rel(path))]
    return _unique(_v1_dirs(path))


def _write(directory: str, name: str, value: object) -> None:
    with open(os.path.join(directory, name), "w") as f:
        f.write(str(value))


def _read(directory: str, name: str) -> str | None:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except (FileNotFoundError, OSError):
        return None


def _read_int(directory: str, name: str) -> int:
    value = _read(directory, name)
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _keyed(directory: str, name: str) -> dict[str, int]:
    """A flat keyed file (``memory.stat``, ``cpu.stat``...) as a dict."""
    out: dict[str, int] = {}
    for line in (_read(directory, name) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


# --- creation --------------------------------------------------------------------------


def create(path: str, resources: dict | None = None) -> None:
    """Create the cgroup ``path`` in every controller and apply ``resources``."""
    if version() == 2:
        _create_v2(path)
    else:
        dirs = _v1_dirs(path)
        for ctrl, directory in dirs.items():
            _mkdir_v1(ctrl, directory)
    update(path, resources or {})


def _mkdir_v1(ctrl: str, directory: str) -> None:
    base = os.path.join(ROOT, ctrl)
    rel = os.path.relpath(directory, base)
    current = base
    for comp in rel.split("/"):
        parent, current = current, os.path.join(current, comp)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            pass  # maybe made a moment ago by a concurrent create: still check its cpuset
        if ctrl == "cpuset":
            _fill_cpuset(parent, current)


def _fill_cpuset(parent: str, current: str, timeout: float = 2.0) -> None:
    """A new cpuset is empty, and an empty cpuset cannot take tasks: copy the parent's
    cpus and mems. The parent may itself have been made a moment ago by a concurrent
    create that has not filled it yet: wait for it rather than copy an empty value."""
    deadline = time.monotonic() + timeout
    for name in ("cpuset.cpus", "cpuset.mems"):
        while not _read(current, name):
            value = _read(parent, name)
            if value:
                try:
                    _write(current, name, value)
                except OSError:
                    if not _read(current, name):
                        raise
                break
            if time.monotonic() > deadline:
                raise OSError(f"cgroup {parent} has an empty {name}")
            time.sleep(0.002)


def _create_v2(path: str) -> None:
    rel = _rel(path)
    current = ROOT
    for comp in rel.split("/"):
        available = set((_read(current, "cgroup.controllers") or "").split())
        enable = " ".join("+" + c for c in _V2_WANTED if c in available)
        if enable:
            try:
                _write(current, "cgroup.subtree_control", enable)
            except OSError:
                pass  # e.g. a parent with processes of its own: use what we have
        current = os.path.join(current, comp)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            pass


def update(path: str, resources: dict) -> None:
    """Apply OCI ``resources`` to an existing cgroup (only the keys present)."""
    if version() == 2:
        _update_v2(os.path.join(ROOT, _rel(path)), resources)
    else:
        _update_v1(_v1_dirs(path), resources)


def _set_memory_v1(directory: str, limit: int | None, swap: int | None) -> None:
    """memory.limit_in_bytes and memory.memsw.limit_in_bytes must stay ordered
    (memsw >= limit), so the write order depends on the direction of the change."""
    writes = []
    if limit is not None:
        writes.append(("memory.limit_in_bytes", limit))
    has_memsw = os.path.exists(os.path.join(directory, "memory.memsw.limit_in_bytes"))
    if swap is not None and has_memsw:
        writes.append(("memory.memsw.limit_in_bytes", swap))
    current = _read_int(directory, "memory.memsw.limit_in_bytes") if has_memsw else 0
    if limit is not None and swap is not None and (limit == -1 or limit > current):
        writes.reverse()
    for name, value in writes:
        _write(directory, name, value)


def _update_v1(dirs: dict[str, str], resources: dict) -> None:
    memory = resources.get("memory") or {}
    if "memory" in dirs and memory:
        d = dirs["memory"]
        _set_memory_v1(d, memory.get("limit"), memory.get("swap"))
        if memory.get("reservation") is not None:
            _write(d, "memory.soft_limit_in_bytes", memory["reservation"])
        if memory.get("disableOOMKiller"):
            _write(d, "memory.oom_control", 1)
        if memory.get("swappiness") is not None and memory["swappiness"] >= 0:
            _write(d, "memory.swappiness", memory["swappiness"])
    cpu = resources.get("cpu") or {}
    if "cpu" in dirs and cpu:
        d = dirs["cpu"]
        if cpu.get("shares"):
            _write(d, "cpu.shares", cpu["shares"])
        if cpu.get("period"):
            _write(d, "cpu.cfs_period_us", cpu["period"])
        if cpu.get("quota"):
            _write(d, "cpu.cfs_quota_us", cpu["quota"])
    if "cpuset" in dirs:
        if cpu.get("cpus"):
            _write(dirs["cpuset"], "cpuset.cpus", cpu["cpus"])
        if cpu.get("mems"):
            _write(dirs["cpuset"], "cpuset.mems", cpu["mems"])
    pids = resources.get("pids") or {}
    if "pids" in dirs and "limit" in pids:
        _write(dirs["pids"], "pids.max", pids["limit"] if pids["limit"] > 0 else "max")
    if "devices" in dirs and resources.get("devices"):
        for rule in resources["devices"]:
            name = "devices.allow" if rule.get("allow") else "devices.deny"
            _write(dirs["devices"], name, _device_rule(rule))


def _device_rule(rule: dict) -> str:
    kind = rule.get("type") or "a"
    if kind == "a":
        return "a"

    def num(value: int | None) -> str:
        return "*" if value is None or value < 0 else str(value)

    return f"{kind} {num(rule.get('major'))}:{num(rule.get('minor'))} {rule.get('access') or 'rwm'}"


def _update_v2(d: str, resources: dict) -> None:
    memory = resources.get("memory") or {}
    if memory.get("limit") is not None:
        limit = memory["limit"]
        _write(d, "memory.max", "max" if limit < 0 else limit)
        swap = memory.get("swap")
        if swap is not None and os.path.exists(os.path.join(d, "memory.swap.max")):
            _write(d, "memory.swap.max", "max" if swap < 0 or limit < 0 else max(swap - limit, 0))
    if memory.get("reservation") is not None:
        _write(d, "memory.low", memory["reservation"])
    cpu = resources.get("cpu") or {}
    if cpu.get("shares"):
        # The runc/crun mapping of [2, 262144] onto [1, 10000].
        _write(d, "cpu.weight", 1 + ((cpu["shares"] - 2) * 9999) // 262142)
    if cpu.get("quota") or cpu.get("period"):
        quota = cpu.get("quota") or 0
        _write(d, "cpu.max", f"{quota if quota > 0 else 'max'} {cpu.get('period') or 100000}")
    if cpu.get("cpus"):
        _write(d, "cpuset.cpus", cpu["cpus"])
    if cpu.get("mems"):
        _write(d, "cpuset.mems", cpu["mems"])
    pids = resources.get("pids") or {}
    if "limit" in pids:
        _write(d, "pids.max", pids["limit"] if pids["limit"] > 0 else "max")


# --- membership ------------------------------------------------------------------------


def join(path: str, pid: int = 0) -> None:
    """Move ``pid`` (0: the calling process) into the cgroup in every controller."""
    for directory in _dirs(path):
        _write(directory, "cgroup.procs", pid)


def pids(path: str) -> list[int]:
    """Processes in the cgroup and its descendants (host pids, sorted)."""
    found: set[int] = set()
    directory = _dirs(path)[0] if version() == 2 else _v1_dirs(path).get(
        "pids", _dirs(path)[0])
    for current, _subdirs, _files in os.walk(directory):
        for line in (_read(current, "cgroup.procs") or "").split():
            found.add(int(line))
    return sorted(found)


# --- freezer ---------------------------------------------------------------------------


def _freezer_dir(path: str) -> str:
    if version() == 2:
        return os.path.join(ROOT, _rel(path))
    return _v1_dirs(path)["freezer"]


def freeze(path: str, timeout: float = 5.0) -> None:
    """Freeze every process in the cgroup and wait until the kernel says it is frozen."""
    _set_frozen(path, True, timeout)


def thaw(path: str, timeout: float = 5.0) -> None:
    """Undo :func:`freeze`."""
    _set_frozen(path, False, timeout)


def _set_frozen(path: str, frozen: bool, timeout: float) -> None:
    d = _freezer_dir(path)
    v2 = version() == 2
    if v2:
        _write(d, "cgroup.freeze", int(frozen))
    else:
        _write(d, "freezer.state", "FROZEN" if frozen else "THAWED")
    deadline = time.monotonic() + timeout
    while is_frozen(path) != frozen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cgroup {path} did not {'freeze' if frozen else 'thaw'}")
        if not v2 and frozen:
            _write(d, "freezer.state", "FROZEN")  # v1 may need a nudge
        time.sleep(0.001)


def is_frozen(path: str) -> bool:
    """Whether the cgroup is (completely) frozen."""
    d = _freezer_dir(path)
    if version() == 2:
        return _keyed(d, "cgroup.events").get("frozen") == 1
    return _read(d, "freezer.state") == "FROZEN"


# --- accounting ------------------------------------------------------------------------


def oom_killed(path: str) -> bool:
    """Whether the kernel OOM-killed a process in this cgroup."""
    if version() == 2:
        return _keyed(os.path.join(ROOT, _rel(path)), "memory.events").get("oom_kill", 0) > 0
    d = _v1_dirs(path).get("memory")
    return bool(d) and _keyed(d, "memory.oom_control").get("oom_kill", 0) > 0


def stats(path: str) -> dict:
    """A snapshot of usage for ``/containers/{id}/stats``.

    ``{"memory": {"usage", "max_usage", "limit", "stats"}, "cpu": {"usage_total",
    "usage_user", "usage_system", "percpu", "throttling"}, "pids": {"current",
    "limit"}}``; CPU times are nanoseconds, a ``limit`` of 0 means unlimited.
    """
    if version() == 2:
        return _stats_v2(os.path.join(ROOT, _rel(path)))
    dirs = _v1_dirs(path)
    mem = dirs.get("memory", "")
    limit = _read_int(mem, "memory.limit_in_bytes")
    acct = dirs.get("cpuacct", "")
    ticks = os.sysconf("SC_CLK_TCK") or 100
    cpustat = _keyed(acct, "cpuacct.stat")
    throttle = _keyed(dirs.get("cpu", ""), "cpu.stat")
    pids_limit = _read(dirs.get("pids", ""), "pids.max")
    return {
        "memory": {
            "usage": _read_int(mem, "memory.usage_in_bytes"),
            "max_usage": _read_int(mem, "memory.max_usage_in_bytes"),
            "limit": 0 if limit >= _UNLIMITED else limit,
            "stats": _keyed(mem, "memory.stat"),
        },
        "cpu": {
            "usage_total": _read_int(acct, "cpuacct.usage"),
            "usage_user": cpustat.get("user", 0) * 10**9 // ticks,
            "usage_system": cpustat.get("system", 0) * 10**9 // ticks,
            "percpu": [int(x) for x in (_read(acct, "cpuacct.usage_percpu") or "").split()],
            "throttling": {
                "periods": throttle.get("nr_periods", 0),
                "throttled_periods": throttle.get("nr_throttled", 0),
                "throttled_time": throttle.get("throttled_time", 0),
            },
        },
        "pids": {
            "current": _read_int(dirs.get("pids", ""), "pids.current"),
            "limit": int(pids_limit) if pids_limit and pids_limit.isdigit() else 0,
        },
    }


def _stats_v2(d: str) -> dict:
    limit = _read(d, "memory.max")
    cpustat = _keyed(d, "cpu.stat")
    pids_limit = _read(d, "pids.max")
    return {
        "memory": {
            "usage": _read_int(d, "memory.current"),
            "max_usage": _read_int(d, "memory.peak"),
            "limit": int(limit) if limit and limit.isdigit() else 0,
            "stats": _keyed(d, "memory.stat"),
        },
        "cpu": {
            "usage_total": cpustat.get("usage_usec", 0) * 1000,
            "usage_user": cpustat.get("user_usec", 0) * 1000,
            "usage_system": cpustat.get("system_usec", 0) * 1000,
            "percpu": [],
            "throttling": {
                "periods": cpustat.get("nr_periods", 0),
                "throttled_periods": cpustat.get("nr_throttled", 0),
                "throttled_time": cpustat.get("throttled_usec", 0) * 1000,
            },
        },
        "pids": {
            "current": _read_int(d, "pids.current"),
            "limit": int(pids_limit) if pids_limit and pids_limit.isdigit() else 0,
        },
    }


# --- teardown --------------------------------------------------------------------------


def destroy(path: str, timeout: float = 2.0) -> None:
    """Kill whatever still runs in the cgroup and remove it from every controller.

    Missing directories are fine; a busy directory is retried until ``timeout``.
    """
    dirs = _dirs(path)
    if not any(os.path.isdir(d) for d in dirs):
        return
    _kill_all(path)
    deadline = time.monotonic() + timeout
    for directory in dirs:
        # Children first: walk bottom-up.
        tree = [root for root, _d, _f in os.walk(directory, topdown=False)]
        for current in tree:
            while True:
                try:
                    os.rmdir(current)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    _kill_all(path)
                    time.sleep(0.005)


def _kill_all(path: str) -> None:
    if version() == 2:
        d = os.path.join(ROOT, _rel(path))
        if os.path.exists(os.path.join(d, "cgroup.kill")):
            try:
                _write(d, "cgroup.kill", 1)
                return
            except OSError:
                pass
    try:
        members = pids(path)
    except (FileNotFoundError, KeyError):
        return
    if not members:
        return
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Frozen tasks only die once thawed.
    try:
        if is_frozen(path):
            d = _freezer_dir(path)
            if version() == 2:
                _write(d, "cgroup.freeze", 0)
            else:
                _write(d, "freezer.state", "THAWED")
    except (OSError, KeyError):
        pass
