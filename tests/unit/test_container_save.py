"""ContainerService.save: records written off the event loop, never going back in time."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from engine.core import containers as containers_mod
from engine.core.containers import ContainerService, _ENC
from engine.core.models import Container


@pytest.fixture
def svc(tmp_path):
    return ContainerService(data_root=str(tmp_path / "data"), exec_root=str(tmp_path / "exec"),
                            images=None, layers=None, plugins=None, events=None)


def record(svc: ContainerService, cid: str = "c" * 64) -> Container:
    c = Container(id=cid, name="/x", created="2026-01-01T00:00:00Z", image="sha256:1",
                  image_ref="busybox")
    svc.dir(cid).mkdir(parents=True)
    svc.containers[cid] = c
    return c


def on_disk(svc: ContainerService, c: Container) -> dict:
    return json.loads((svc.dir(c.id) / "config.json").read_bytes())


def slow_writes(monkeypatch, delay: float = 0.05) -> list[tuple[str, bytes]]:
    """Make every record write slow (like an fsync on a busy disk) and log them."""
    writes: list[tuple[str, bytes]] = []
    real = containers_mod.atomic_write

    def write(path, data, *a, **kw):
        writes.append((threading.current_thread().name, data))
        time.sleep(delay)
        real(path, data, *a, **kw)

    monkeypatch.setattr(containers_mod, "atomic_write", write)
    return writes


def test_the_event_loop_runs_while_a_record_is_written(svc, monkeypatch):
    writes = slow_writes(monkeypatch, delay=0.2)
    c = record(svc)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await svc.save(c)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 5  # the loop kept turning during the 200 ms write
    assert writes and writes[0][0] != threading.main_thread().name
    assert on_disk(svc, c)["id"] == c.id


def test_concurrent_saves_end_with_the_latest_state_and_share_writes(svc, monkeypatch):
    writes = slow_writes(monkeypatch)
    c = record(svc)

    async def main():
        tasks = []
        for code in range(10):
            c.state.exit_code = code
            tasks.append(asyncio.create_task(svc.save(c)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert on_disk(svc, c)["state"]["exit_code"] == 9
    # the first write was under way while the others queued: one more write covers them
    assert len(writes) == 2
    codes = [json.loads(d)["state"]["exit_code"] for _, d in writes]
    assert codes == sorted(codes)


def test_a_removed_container_is_not_written_again(svc, monkeypatch):
    c = record(svc)
    asyncio.run(svc.save(c))
    svc.runtime(c).gone = True
    c.state.exit_code = 7
    asyncio.run(svc.save(c))
    assert on_disk(svc, c)["state"]["exit_code"] == 0


def test_a_record_whose_directory_vanished_is_skipped_but_other_errors_raise(svc, monkeypatch):
    c = record(svc)
    svc.dir(c.id).rmdir()
    asyncio.run(svc.save(c))   # removed meanwhile: nothing to write, no error
    svc.dir(c.id).mkdir()

    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(containers_mod, "atomic_write", full)
    with pytest.raises(OSError):
        asyncio.run(svc.save(c))
    assert _ENC.encode(c)  # the record itself is intact in memory


class _Layers:
    def remove_rw(self, cid: str) -> None:
        pass


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def emit(self, kind, action, ident, attrs=None) -> None:
        self.seen.append((kind, action))


@pytest.mark.parametrize("auto_remove", [False, True])
def test_a_start_failing_with_a_raw_error_is_recorded_and_auto_removed(tmp_path, auto_remove):
    """A driver that raises something other than an engine error (a raw netlink error,
    say) still fails the start cleanly: the record says why, and a --rm container is
    removed, so a client waiting for its removal is not left hanging."""
    events = _Events()
    svc = ContainerService(data_root=str(tmp_path / "data"), exec_root=str(tmp_path / "exec"),
                           images=None, layers=_Layers(), plugins=None, events=events)
    c = record(svc)
    c.host_config = {"AutoRemove": auto_remove}
    svc.names["x"] = c.id

    async def boom(c, rt):
        raise OSError(101, "Network is unreachable")

    svc._start = boom

    async def main():
        with pytest.raises(OSError):
            await svc.start(c.id)

    asyncio.run(main())
    if auto_remove:
        assert c.id not in svc.containers and not svc.dir(c.id).exists()
        assert ("container", "destroy") in events.seen
    else:
        assert c.state.error == "OSError: [Errno 101] Network is unreachable"
        assert on_disk(svc, c)["state"]["error"] == c.state.error
