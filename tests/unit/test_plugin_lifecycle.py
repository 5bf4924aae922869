"""Installing third-party plugins into the engine's own plugin environment, live:
install (disabled), enable, use, disable, upgrade, remove — no daemon, no root."""
from __future__ import annotations

import asyncio
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from engine.core.plugins import PluginHost
from engine.sdk.errors import Conflict, Forbidden, InvalidArgument, NotFound
from engine.sdk.packaging import build_wheel

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MEMFS_PRIVILEGES = [{"Name": "mount", "Description": "", "Value": ["/dev/shm"]}]


@pytest.fixture(scope="module")
def memfs_wheel(tmp_path_factory) -> Path:
    return build_wheel(EXAMPLES / "volume-memfs", tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A plugin host on a temporary data root, discovering the real entry points;
    the import path and modules it adds are taken away afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    h = PluginHost(str(tmp_path / "data"), str(tmp_path / "run"),
                   driver_options={"memfs": {"root": str(tmp_path / "shm")}})
    h.discover()
    asyncio.run(h.start_drivers())
    yield h
    for name in set(sys.modules) - before:
        if name.startswith("engine_"):
            del sys.modules[name]


def never(kind: str, name: str) -> str:
    return ""


def other_wheel(directory: Path, requires: tuple[str, ...] = ()) -> Path:
    """A minimal wheel of another distribution, written by hand (no build)."""
    path = directory / "other-1.0-py3-none-any.whl"
    metadata = "Metadata-Version: 2.1\nName: other\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other/__init__.py", "")
        zf.writestr("other/engine-plugin.json", "{}")
        zf.writestr("other-1.0.dist-info/METADATA", metadata)
        zf.writestr("other-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("other-1.0.dist-info/entry_points.txt", "[engine.plugins]\nother = other\n")
        zf.writestr("other-1.0.dist-info/RECORD", "")
    return path


def test_dependencies_the_engine_has_are_not_installed_again(host, tmp_path):
    """The plugin environment sees the engine's packages (its .pth file), so a plugin
    that needs pluggy and msgspec gets the engine's copies."""
    wheel = other_wheel(tmp_path, ("pluggy>=1.0", "msgspec"))

    async def body():
        assert await host.install(str(wheel), "", []) == ["other"]
        site = host.env.site_dir
        assert (site / "other").is_dir()
        assert not list(site.glob("pluggy*")) and not list(site.glob("msgspec*"))
        assert (site / "_engine.pth").read_text().startswith("import site;")
        await host.remove("other", never)
    asyncio.run(body())


def test_install_from_a_wheel_enable_use_disable_remove(host, memfs_wheel):
    async def body():
        names = await host.install(str(memfs_wheel), "", MEMFS_PRIVILEGES)
        assert names == ["memfs"]
        rec = host.get("memfs")
        assert not rec.enabled and rec.dist == "engine-volume-memfs"
        assert rec.to_api()["Config"]["Description"] == "Volumes kept in memory, under /dev/shm"
        assert rec.to_api()["Config"]["Mounts"][0]["Source"] == "/dev/shm"
        assert rec.module_obj is None  # nothing imported before enable
        assert host.env.site_dir.joinpath("engine_memfs").is_dir()
        with pytest.raises(NotFound):
            host.volume("memfs")
        await host.enable("memfs")
        drv = host.volume("memfs")
        await drv.create("v1", {}, {})
        assert (await drv.mount("v1", "c1")).startswith(str(Path(drv.root)))
        with pytest.raises(Conflict, match="in use"):
            await host.disable("memfs", lambda k, n: "container web" if n == "memfs" else "")
        with pytest.raises(Conflict, match="enabled"):
            await host.remove("memfs", never)
        await host.disable("memfs", never)
        await host.remove("memfs", never)
        assert "memfs" not in host.plugins
        assert not host.env.site_dir.joinpath("engine_memfs").exists()
        assert "engine_memfs" not in sys.modules
    asyncio.run(body())


def test_privileges_and_names_are_checked_and_an_alias_survives_a_restart(host, memfs_wheel,
                                                                         tmp_path):
    async def body():
        assert host.privileges(str(memfs_wheel)) == [
            {"Name": "mount", "Description": "keeps volume data in a directory of /dev/shm",
             "Value": ["/dev/shm"]}]
        with pytest.raises(Forbidden, match="privileges"):
            await host.install(str(memfs_wheel), "", [])
        with pytest.raises(Conflict, match="already exists"):
            await host.install(str(memfs_wheel), "vol-bind", MEMFS_PRIVILEGES)
        assert not host.env.site_dir.joinpath("engine_memfs").exists()
        await host.install(str(memfs_wheel), "ramdisk", MEMFS_PRIVILEGES)
        with pytest.raises(Conflict, match="already installed"):
            await host.install(str(memfs_wheel), "", MEMFS_PRIVILEGES)
        await host.enable("ramdisk")
        assert host.volume("memfs").name == "memfs"
        await host.stop_drivers()
    asyncio.run(body())

    again = PluginHost(host.data_root, host.exec_root,
                       driver_options={"memfs": {"root": str(tmp_path / "shm")}})
    again.discover()
    assert again.get("ramdisk").enabled and again.volume("memfs").name == "memfs"
    assert again.get("ramdisk").source == str(memfs_wheel)

    async def remove():
        await again.remove("ramdisk", never, force=True)  # a forced removal disables first
        assert "memfs" not in again.drivers["volume"] and "ramdisk" not in again.plugins
    asyncio.run(remove())


def test_upgrade_needs_the_plugin_disabled_and_the_same_distribution(host, memfs_wheel,
                                                                      tmp_path):
    src = tmp_path / "memfs-2"
    shutil.copytree(EXAMPLES / "volume-memfs", src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    pyproject = src / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', 'version = "2.0.0"'))
    init = src / "engine_memfs" / "__init__.py"
    init.write_text(init.read_text() + "\nUPGRADED = True\n")

    async def body():
        await host.install(str(memfs_wheel), "", MEMFS_PRIVILEGES)
        await host.enable("memfs")
        with pytest.raises(Conflict, match="disabled before upgrading"):
            await host.upgrade("memfs", str(src), MEMFS_PRIVILEGES)
        await host.disable("memfs", never)
        with pytest.raises(InvalidArgument, match="not an upgrade"):
            await host.upgrade("memfs", str(other_wheel(tmp_path)), [])
        await host.upgrade("memfs", str(src), MEMFS_PRIVILEGES)
        rec = host.get("memfs")
        assert rec.version == "2.0.0" and not rec.enabled
        await host.enable("memfs")
        assert getattr(host.get("memfs").module_obj, "UPGRADED", False) is True
    asyncio.run(body())


def test_builtin_plugins_cannot_be_removed_or_upgraded(host):
    async def body():
        with pytest.raises(Forbidden, match="built in"):
            await host.remove("vol-bind", never, force=True)
        with pytest.raises(Forbidden, match="built in"):
            await host.upgrade("vol-bind", "/nowhere.whl", [])
    asyncio.run(body())


def test_sources_that_are_not_plugins_are_refused(host, tmp_path):
    # a reference is the daemon's to fetch (privileges_of); the local reader refuses it
    with pytest.raises(InvalidArgument, match="not the absolute path"):
        host.privileges("example/plugin:latest")
    with pytest.raises(NotFound):
        host.privileges(str(tmp_path / "missing.whl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidArgument, match="neither"):
        host.privileges(str(tmp_path / "notes.txt"))
    with pytest.raises(InvalidArgument, match="pyproject"):
        host.privileges(str(tmp_path))
