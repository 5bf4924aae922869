"""Process, memory, mount and cgroup helpers for the benchmark, over /proc and /sys.

Every function here acts on PIDs, paths or cgroup names that the benchmark itself
created; nothing is found or killed by a process name.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: what ends a run early, then cleans up (SIGINT too: a shell starts background jobs
#: with it ignored, and Python keeps that)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> dict[int, Any]:
    """Make :data:`STOP_SIGNALS` raise KeyboardInterrupt; return their handlers."""
    return {s: signal.signal(s, _raise_interrupt) for s in STOP_SIGNALS}


def ignore_signals() -> None:
    """While cleaning up: a second Ctrl-C must not leave daemons, mounts or
    directories behind."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def restore_signals(handlers: dict[int, Any]) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _status_bytes(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (VmRSS), or None when it is gone."""
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int | None:
    """The highest resident set size ``pid`` had (VmHWM), or None when it is gone."""
    return _status_bytes(pid, "VmHWM")


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of ``pid`` (from smaps_rollup), or None when it is gone:
    shared pages are divided among the processes that map them, so it is the fair
    per-process cost of many copies of one program."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time ``pid`` has used, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def load_average() -> float:
    """The one-minute load average: how busy the machine was while measuring."""
    return os.getloadavg()[0]


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command may contain spaces and parentheses: split after the last ')'
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    return [p for p in all_pids() if parent_of(p) == pid]


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (a temporary directory of ours:
    how shims and monitors that outlived their daemon are found), excluding this one."""
    me = os.getpid()
    return [p for p in all_pids() if p != me and any(text in a for a in cmdline(p))]


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds, then SIGKILL it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_ping(sock: str, timeout: float = 1.0) -> bool:
    """GET /_ping over the unix socket ``sock``; True on HTTP 200."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        head = s.recv(64)
        return head.startswith(b"HTTP/1.") and head[9:12] == b"200"
    except OSError:
        return False
    finally:
        s.close()


def wait_ready(proc: subprocess.Popen, sock: str, started: float,
               timeout: float = 30.0) -> float:
    """Poll ``sock`` until /_ping answers; return the seconds since ``started`` (a
    ``time.perf_counter()`` taken just before the exec). Raises RuntimeError when the
    process exits or the timeout passes."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        if os.path.exists(sock) and http_ping(sock):
            return time.perf_counter() - started
        time.sleep(0.002)
    raise RuntimeError(f"daemon did not answer /_ping on {sock} within {timeout:.0f} s")


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below ``base``, deepest first."""
    prefix = str(base).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(set(found), key=len, reverse=True)


def unmount_under(base: Path) -> None:
    """Lazily unmount everything at or below ``base`` (deepest first)."""
    for target in mounts_under(base):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def remove_cgroup_tree(name: str) -> None:
    """Remove the cgroup ``name`` (relative, e.g. ``bench-docker-1a2b``) and everything
    below it in every v1 hierarchy and the unified one. Only empty cgroups can be
    removed: the processes in them must be gone first."""
    name = name.strip("/")
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / name
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda e: len(e[0]),
                                             reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
