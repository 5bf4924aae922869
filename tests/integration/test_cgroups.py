"""cgroups on the real kernel: create, limits, membership, freezer, stats, destroy."""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from conftest import needs_root
from engine.core.runtime import cgroups

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def cg():
    path = f"engine-test/{uuid.uuid4().hex[:12]}"
    yield path
    cgroups.destroy(path)
    for base in _bases():
        parent = Path(base, "engine-test")
        try:
            parent.rmdir()
        except OSError:
            pass


def _bases() -> list[str]:
    if cgroups.version() == 2:
        return [cgroups.ROOT]
    return [os.path.join(cgroups.ROOT, c) for c in cgroups.V1_CONTROLLERS
            if os.path.isdir(os.path.join(cgroups.ROOT, c))]


def _dirs(path: str) -> list[Path]:
    return [Path(base, path) for base in _bases()]


def _sleeper(path: str | None = None) -> int:
    """Fork a child that (optionally) joins ``path`` itself, then sleeps."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if path:
                cgroups.join(path)
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    return pid


def _reap(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return os.waitpid(pid, 0)[1]


def test_version_matches_the_host() -> None:
    expected = 2 if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else 1
    assert cgroups.version() == expected


def test_create_writes_resources(cg) -> None:
    res = {"memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 16 << 20},
           "cpu": {"shares": 256, "quota": 20000, "period": 100000, "cpus": "0"},
           "pids": {"limit": 10}}
    cgroups.create(cg, res)
    assert all(d.is_dir() for d in _dirs(cg))
    if cgroups.version() == 1:
        mem = Path(cgroups.ROOT, "memory", cg)
        assert int((mem / "memory.limit_in_bytes").read_text()) == 64 << 20
        assert int((mem / "memory.soft_limit_in_bytes").read_text()) == 16 << 20
        cpu = Path(cgroups.ROOT, "cpu", cg)
        assert (cpu / "cpu.shares").read_text().strip() == "256"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert Path(cgroups.ROOT, "cpuset", cg, "cpuset.cpus").read_text().strip() == "0"
        # The parent cpuset was filled in from its own parent so tasks can join.
        assert Path(cgroups.ROOT, "cpuset", "engine-test", "cpuset.mems").read_text().strip()
        assert Path(cgroups.ROOT, "pids", cg, "pids.max").read_text().strip() == "10"
    else:
        d = Path(cgroups.ROOT, cg)
        assert (d / "memory.max").read_text().strip() == str(64 << 20)
        assert (d / "cpu.max").read_text().split() == ["20000", "100000"]
        assert (d / "pids.max").read_text().strip() == "10"


def test_update_raises_and_lowers_memory(cg) -> None:
    cgroups.create(cg, {"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    cgroups.update(cg, {"memory": {"limit": 256 << 20, "swap": 512 << 20},
                        "pids": {"limit": 0}})
    stats = cgroups.stats(cg)
    assert stats["memory"]["limit"] == 256 << 20
    assert stats["pids"]["limit"] == 0  # "max"
    cgroups.update(cg, {"memory": {"limit": 16 << 20, "swap": 16 << 20}})
    assert cgroups.stats(cg)["memory"]["limit"] == 16 << 20
    cgroups.update(cg, {"memory": {"limit": -1, "swap": -1}})
    assert cgroups.stats(cg)["memory"]["limit"] == 0  # unlimited


def test_join_pids_stats_and_oom_flag(cg) -> None:
    cgroups.create(cg, {})
    pid = _sleeper(cg)
    try:
        assert cgroups.pids(cg) == [pid]
        for d in _dirs(cg):
            assert str(pid) in (d / "cgroup.procs").read_text().split()
        stats = cgroups.stats(cg)
        assert stats["memory"]["usage"] > 0
        assert stats["pids"]["current"] == 1
        assert stats["cpu"]["usage_total"] > 0
        assert cgroups.oom_killed(cg) is False
    finally:
        _reap(pid)


def test_join_other_pid(cg) -> None:
    cgroups.create(cg, {})
    pid = _sleeper()
    try:
        cgroups.join(cg, pid)
        assert cgroups.pids(cg) == [pid]
    finally:
        _reap(pid)


def test_freeze_and_thaw(cg) -> None:
    cgroups.create(cg, {})
    pid = _sleeper(cg)
    try:
        cgroups.freeze(cg)
        assert cgroups.is_frozen(cg)
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
        assert "D" in state or "S" in state  # frozen tasks sleep in the freezer
        cgroups.thaw(cg)
        assert not cgroups.is_frozen(cg)
    finally:
        _reap(pid)


def test_destroy_kills_remaining_even_frozen(cg) -> None:
    cgroups.create(cg, {})
    pid = _sleeper(cg)
    cgroups.freeze(cg)
    cgroups.destroy(cg)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not any(d.exists() for d in _dirs(cg))


def test_destroy_removes_nested_and_tolerates_missing(cg) -> None:
    cgroups.create(cg, {})
    for d in _dirs(cg):
        if not (d / "child").exists():
            (d / "child").mkdir()
    cgroups.destroy(cg)
    assert not any(d.exists() for d in _dirs(cg))
    cgroups.destroy(cg)  # a second time is fine


def test_root_cgroup_is_refused() -> None:
    with pytest.raises(ValueError):
        cgroups.destroy("/")
    with pytest.raises(ValueError):
        cgroups.create("..", {})
