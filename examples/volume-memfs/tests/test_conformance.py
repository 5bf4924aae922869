"""memfs passes the engine's volume driver suite."""
from __future__ import annotations

import asyncio

import pytest

from engine.sdk.drivers import DriverContext
from engine.sdk.testing.volume import VolumeDriverSuite
from engine_memfs import MemfsDriver


def make(tmp_path) -> MemfsDriver:
    return MemfsDriver(DriverContext(name="memfs", state_dir=str(tmp_path / "state"),
                                     options={"root": str(tmp_path / "shm")}))


class TestMemfs(VolumeDriverSuite):
    refuses_remove_while_mounted = True

    @pytest.fixture
    def driver(self, tmp_path):
        return make(tmp_path)


def test_status_counts_mounts(tmp_path):
    d = make(tmp_path)

    async def body():
        await d.create("v", {}, {})
        await d.mount("v", "a")
        await d.mount("v", "b")
        await d.mount("v", "b")
        assert (await d.get("v")).status == {"mounts": 2}
        await d.unmount("v", "a")
        assert (await d.get("v")).status == {"mounts": 1}
    asyncio.run(body())
