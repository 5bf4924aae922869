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


UNIFIED = "/sys/fs/cgroup/unified"


@pytest.fixture
def v2(monkeypatch):
    """The v2 code paths, run on the host's cgroup2 hierarchy: on a hybrid host that is
    the (controller-less) /sys/fs/cgroup/unified, which still has cgroup.procs,
    cgroup.freeze, cgroup.events and cgroup.kill."""
    if cgroups.version() == 2:
        root = cgroups.ROOT
    elif os.path.exists(os.path.join(UNIFIED, "cgroup.controllers")):
        root = UNIFIED
        monkeypatch.setattr(cgroups, "ROOT", UNIFIED)
    else:
        pytest.skip("no cgroup2 hierarchy mounted")
    path = f"engine-test-v2/{uuid.uuid4().hex[:12]}"
    yield path
    cgroups.destroy(path)
    try:
        os.rmdir(os.path.join(root, "engine-test-v2"))
    except OSError:
        pass


def test_v2_lifecycle(v2) -> None:
    assert cgroups.version() == 2
    cgroups.create(v2, {})
    directory = Path(cgroups.ROOT, v2)
    assert directory.is_dir()
    pid = _sleeper(v2)
    try:
        assert cgroups.pids(v2) == [pid]
        cgroups.freeze(v2)
        assert cgroups.is_frozen(v2)
        cgroups.thaw(v2)
        assert not cgroups.is_frozen(v2)
        stats = cgroups.stats(v2)
        assert stats["pids"]["current"] in (0, 1)  # 0 when the controller is elsewhere
        assert cgroups.oom_killed(v2) is False
        cgroups.destroy(v2)  # kills the sleeper (cgroup.kill) and removes the directory
        status = os.waitpid(pid, 0)[1]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert not directory.exists()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@needs_root
def test_concurrent_creates_under_a_new_parent_all_get_a_cpuset():
    """Losing the race to make the parent must not copy its still-empty cpuset."""
    import threading

    from engine.core.runtime import cgroups

    if cgroups.version() != 1:
        pytest.skip("cpuset inheritance is a cgroup v1 matter")
    base = f"/engine-race-{os.getpid()}"
    errors: list = []

    def make(i: int) -> None:
        try:
            cgroups.create(f"{base}/c{i}", {})
            with open(f"/sys/fs/cgroup/cpuset{base}/c{i}/cpuset.cpus") as f:
                if not f.read().strip():
                    errors.append(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append((i, e))

    try:
        threads = [threading.Thread(target=make, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    finally:
        for i in range(40):
            cgroups.destroy(f"{base}/c{i}")
        for ctrl in os.listdir("/sys/fs/cgroup"):
            try:
                os.rmdir(f"/sys/fs/cgroup/{ctrl}{base}")
            except OSError:
                pass
