"""Every built-in driver runs the same conformance suites a third party runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.plugins.log.jsonfile import JsonFileDriver
from engine.plugins.log.none import NoneLogDriver
from engine.plugins.network.host import HostNetworkDriver
from engine.plugins.network.none import NoneNetworkDriver
from engine.plugins.volume.bind import BindDriver, LocalDriver
from engine.sdk.drivers import DriverContext
from engine.sdk.testing.log import LogDriverSuite
from engine.sdk.testing.network import NetworkDriverSuite
from engine.sdk.testing.volume import VolumeDriverSuite


def ctx(tmp_path: Path, name: str) -> DriverContext:
    state = tmp_path / "state" / name
    state.mkdir(parents=True)
    return DriverContext(name=name, state_dir=str(state), data_root=str(tmp_path),
                         exec_root=str(tmp_path / "run"))


class TestLocalVolumes(VolumeDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return LocalDriver(ctx(tmp_path, "local"))


class TestBindVolumes(VolumeDriverSuite):
    create_options = {"create_host_path": "true"}
    lists_volumes = False
    remove_forgets = False
    rejects_slashes = False
    keeps_labels = False

    def volume_name(self, base: str, scratch: Path) -> str:
        return str(scratch / "host" / base)

    @pytest.fixture
    def driver(self, tmp_path):
        return BindDriver(ctx(tmp_path, "bind"))


class TestJsonFileLogs(LogDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return JsonFileDriver(ctx(tmp_path, "json-file"))


class TestJsonFileLogsRotated(LogDriverSuite):
    """Rotation keeps every line readable while the files hold them all."""

    log_options = {"max-size": "1k", "max-file": "10"}

    @pytest.fixture
    def driver(self, tmp_path):
        return JsonFileDriver(ctx(tmp_path, "json-file"))


class TestNoneLogs(LogDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return NoneLogDriver(ctx(tmp_path, "none"))


class TestHostNetwork(NetworkDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return HostNetworkDriver(ctx(tmp_path, "host"))


class TestNullNetwork(NetworkDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return NoneNetworkDriver(ctx(tmp_path, "null"))


def test_unreadable_drivers_skip_rather_than_pass(tmp_path):
    """A suite test of behaviour a driver does not claim is skipped, never passed."""
    suite = TestNoneLogs()
    with pytest.raises(pytest.skip.Exception):
        suite.readable(NoneLogDriver(ctx(tmp_path, "none")))
