"""The driver conformance kit: shared pytest suites every driver implementation runs.

A third party subclasses a suite in its own tests and provides a ``driver`` fixture
that returns a *new, unstarted* driver instance; the suite starts it, exercises it and
stops it in every test::

    import pytest
    from engine.sdk.drivers import DriverContext
    from engine.sdk.testing.volume import VolumeDriverSuite

    from engine_memfs import MemfsDriver

    class TestMemfs(VolumeDriverSuite):
        @pytest.fixture
        def driver(self, tmp_path):
            return MemfsDriver(DriverContext(name="memfs", state_dir=str(tmp_path / "state"),
                                             options={"root": str(tmp_path / "data")}))

Suites: :class:`~engine.sdk.testing.volume.VolumeDriverSuite`,
:class:`~engine.sdk.testing.network.NetworkDriverSuite` and
:class:`~engine.sdk.testing.log.LogDriverSuite`. Class attributes of each suite
describe optional behaviour (a driver that does not list its volumes, one whose log
cannot be read back); tests of behaviour a driver does not claim are skipped, never
silently passed. The suites need pytest and nothing else: no root, no daemon.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

import pytest

from ..drivers import Driver

# the suites' asserts explain themselves, as in a test module of one's own
pytest.register_assert_rewrite("engine.sdk.testing.volume", "engine.sdk.testing.network",
                               "engine.sdk.testing.log")

D = TypeVar("D", bound=Driver)
T = TypeVar("T")


def drive(driver: D, body: Callable[[D], Awaitable[T]], *, timeout: float = 30.0) -> T:
    """Run ``body(driver)`` in a fresh event loop between ``driver.start()`` and
    ``driver.stop()``; a test never waits more than ``timeout`` seconds."""
    async def main() -> T:
        await driver.start()
        try:
            return await asyncio.wait_for(body(driver), timeout)
        finally:
            await driver.stop()
    return asyncio.run(main())


__all__ = ["drive"]
