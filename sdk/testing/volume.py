"""The volume driver suite: what every :class:`~engine.sdk.drivers.VolumeDriver` does.

Subclass :class:`VolumeDriverSuite` and provide a ``driver`` fixture (a new, unstarted
instance). Class attributes say which optional behaviour the driver claims.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest

from ..drivers import VolumeDriver
from ..errors import EngineError, InvalidArgument, NotFound
from . import drive


class VolumeDriverSuite:
    """Shared tests for volume drivers."""

    #: options passed to every ``create``
    create_options: ClassVar[dict[str, str]] = {}
    #: ``list`` returns the volumes created (``bind`` lists nothing: host paths)
    lists_volumes: ClassVar[bool] = True
    #: after ``remove``, ``get`` raises NotFound (``bind`` never forgets host paths)
    remove_forgets: ClassVar[bool] = True
    #: names with a ``/`` are refused with InvalidArgument (``bind`` names are paths)
    rejects_slashes: ClassVar[bool] = True
    #: labels given to ``create`` come back from ``get``
    keeps_labels: ClassVar[bool] = True
    #: ``remove`` of a volume that is still mounted is refused
    refuses_remove_while_mounted: ClassVar[bool] = False

    def volume_name(self, base: str, scratch: Path) -> str:
        """The name to use for a volume called ``base`` (``bind`` uses a path under
        ``scratch``)."""
        return base

    # ------------------------------------------------------------ tests

    def test_driver_has_a_name(self, driver: VolumeDriver) -> None:
        assert isinstance(driver, VolumeDriver)
        assert driver.name and isinstance(driver.name, str)
        assert driver.scope in ("local", "global")

    def test_create_then_get(self, driver: VolumeDriver, tmp_path: Path) -> None:
        name = self.volume_name("vol1", tmp_path)

        async def body(d: VolumeDriver) -> None:
            created = await d.create(name, dict(self.create_options), {"team": "a"})
            assert created.name == name
            got = await d.get(name)
            assert got.name == name
            assert got.mountpoint == created.mountpoint
            if self.keeps_labels:
                assert got.labels == {"team": "a"}
        drive(driver, body)

    def test_create_is_idempotent(self, driver: VolumeDriver, tmp_path: Path) -> None:
        name = self.volume_name("same", tmp_path)

        async def body(d: VolumeDriver) -> None:
            first = await d.create(name, dict(self.create_options), {})
            second = await d.create(name, dict(self.create_options), {})
            assert first.mountpoint == second.mountpoint
            if self.lists_volumes:
                assert [v.name for v in await d.list()].count(name) == 1
        drive(driver, body)

    def test_list_shows_created_volumes(self, driver: VolumeDriver, tmp_path: Path) -> None:
        if not self.lists_volumes:
            pytest.skip("the driver does not list its volumes")
        names = [self.volume_name(n, tmp_path) for n in ("alpha", "beta")]

        async def body(d: VolumeDriver) -> None:
            before = {v.name for v in await d.list()}
            for n in names:
                await d.create(n, dict(self.create_options), {})
            after = {v.name for v in await d.list()}
            assert after - before == set(names)
            await d.remove(names[0])
            assert {v.name for v in await d.list()} - before == {names[1]}
        drive(driver, body)

    def test_get_unknown_is_not_found(self, driver: VolumeDriver, tmp_path: Path) -> None:
        name = self.volume_name("never-created", tmp_path)

        async def body(d: VolumeDriver) -> None:
            with pytest.raises(NotFound):
                await d.get(name)
        drive(driver, body)

    def test_remove_then_get_is_not_found(self, driver: VolumeDriver, tmp_path: Path) -> None:
        if not self.remove_forgets:
            pytest.skip("the driver keeps what it was given (host paths)")
        name = self.volume_name("gone", tmp_path)

        async def body(d: VolumeDriver) -> None:
            await d.create(name, dict(self.create_options), {})
            await d.remove(name)
            with pytest.raises(NotFound):
                await d.get(name)
            with pytest.raises(NotFound):
                await d.remove(name)
        drive(driver, body)

    def test_names_with_slashes_are_rejected(self, driver: VolumeDriver) -> None:
        if not self.rejects_slashes:
            pytest.skip("the driver's names are paths")

        async def body(d: VolumeDriver) -> None:
            for bad in ("a/b", "../escape", "/abs"):
                with pytest.raises(InvalidArgument):
                    await d.create(bad, dict(self.create_options), {})
        drive(driver, body)

    def test_mounts_are_counted_per_mount_id(self, driver: VolumeDriver, tmp_path: Path) -> None:
        name = self.volume_name("shared", tmp_path)

        async def body(d: VolumeDriver) -> None:
            await d.create(name, dict(self.create_options), {})
            p1 = await d.mount(name, "container-1")
            p2 = await d.mount(name, "container-2")
            assert p1 == p2 and os.path.isdir(p1)
            Path(p1, "hello").write_text("from container-1")
            await d.unmount(name, "container-1")
            # still mounted for container-2: the data is there
            assert Path(p2, "hello").read_text() == "from container-1"
            if self.refuses_remove_while_mounted:
                with pytest.raises(EngineError):
                    await d.remove(name)
            await d.unmount(name, "container-2")
            # the volume outlives its mounts
            p3 = await d.mount(name, "container-3")
            assert Path(p3, "hello").read_text() == "from container-1"
            await d.unmount(name, "container-3")
            if self.remove_forgets:
                await d.remove(name)
        drive(driver, body)

    def test_mount_unknown_is_not_found(self, driver: VolumeDriver, tmp_path: Path) -> None:
        name = self.volume_name("nowhere", tmp_path)

        async def body(d: VolumeDriver) -> None:
            with pytest.raises(NotFound):
                await d.mount(name, "container-1")
        drive(driver, body)

    def test_state_survives_a_restart(self, driver: VolumeDriver, tmp_path: Path) -> None:
        """A second instance on the same state directory sees the same volumes."""
        if not self.lists_volumes:
            pytest.skip("the driver does not list its volumes")
        name = self.volume_name("durable", tmp_path)

        async def create(d: VolumeDriver) -> str:
            return (await d.create(name, dict(self.create_options), {})).mountpoint
        mountpoint = drive(driver, create)

        again = type(driver)(driver.ctx)

        async def check(d: VolumeDriver) -> None:
            assert name in [v.name for v in await d.list()]
            assert (await d.get(name)).mountpoint == mountpoint
            await d.remove(name)
        drive(again, check)
