"""The plugin host: discovery, failures recorded not fatal, enable/disable, clashes."""
from __future__ import annotations

import asyncio
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from engine.core.plugins import GROUP, PluginHost
from engine.sdk.errors import Conflict, NotFound

sys.path.insert(0, str(Path(__file__).parent))


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


BUILTIN = [ep("log-json-file", "engine.plugins.log.jsonfile"),
           ep("vol-bind", "engine.plugins.volume.bind"),
           ep("net-host", "engine.plugins.network.host")]


def host(tmp_path, extra=()) -> PluginHost:
    h = PluginHost(str(tmp_path / "data"), str(tmp_path / "run"))
    h.discover(BUILTIN + list(extra))
    asyncio.run(h.start_drivers())
    return h


def test_builtin_drivers_are_found_through_entry_points(tmp_path):
    h = host(tmp_path)
    assert set(h.drivers["log"]) == {"json-file"}
    assert {"bind", "local"} <= set(h.drivers["volume"])
    assert h.network("host").needs_netns is False
    assert all(not p.error for p in h.plugins.values())


def test_a_broken_plugin_is_recorded_and_the_rest_loads(tmp_path):
    h = host(tmp_path, [ep("broken", "plugin_samples.broken"), ep("good", "plugin_samples.good")])
    assert "broken on purpose" in h.plugins["broken"].error
    assert h.volume("memory").name == "memory"
    api = h.plugins["broken"].to_api()
    assert api["Enabled"] is False and "broken on purpose" in api["Error"]


def test_a_misspelled_hook_fails_loudly(tmp_path):
    h = host(tmp_path, [ep("typo", "plugin_samples.typo")])
    assert "engine_register_driverz" in h.plugins["typo"].error


def test_a_driver_name_clash_is_an_error_not_a_silent_replace(tmp_path):
    h = host(tmp_path, [ep("clash", "plugin_samples.clash")])
    assert "already provided" in h.plugins["clash"].error
    assert type(h.log("json-file")).__module__ == "engine.plugins.log.jsonfile"


def test_disable_refuses_while_in_use_and_persists(tmp_path):
    h = host(tmp_path, [ep("good", "plugin_samples.good")])
    with pytest.raises(Conflict, match="in use"):
        asyncio.run(h.disable("good",
                              lambda kind, name: "container web" if name == "memory" else ""))
    asyncio.run(h.disable("good", lambda kind, name: ""))
    with pytest.raises(NotFound):
        h.volume("memory")
    # a new host on the same data root keeps it disabled
    h2 = host(tmp_path, [ep("good", "plugin_samples.good")])
    assert h2.plugins["good"].enabled is False
    assert "memory" not in h2.drivers["volume"]
    asyncio.run(h2.enable("good"))
    assert h2.volume("memory").name == "memory"
    h3 = host(tmp_path, [ep("good", "plugin_samples.good")])
    assert h3.plugins["good"].enabled is True


def test_unknown_driver_names_the_installed_ones(tmp_path):
    h = host(tmp_path)
    with pytest.raises(NotFound, match="json-file"):
        h.log("syslogx")


def test_plugins_have_docker_like_ids_that_find_them(tmp_path):
    h = host(tmp_path)
    rec = h.get("vol-bind")
    api = rec.to_api()
    assert len(api["Id"]) == 64 and int(api["Id"], 16) >= 0 and api["Name"] == "vol-bind"
    assert h.get(api["Id"]) is rec and h.get(api["Id"][:12]) is rec
    with pytest.raises(NotFound):
        h.get("0000000000ff")
    asyncio.run(h.disable(api["Id"][:12], lambda kind, name: ""))
    assert h.get("vol-bind").enabled is False
    asyncio.run(h.enable(api["Id"]))
    assert h.volume("local").name == "local"


def test_entry_points_on_path_agree_with_importlib_metadata(tmp_path):
    from importlib.metadata import entry_points

    from engine.core.plugins import entry_points_on_path

    ours = sorted((e.name, e.value) for e in entry_points_on_path(GROUP))
    theirs = sorted((e.name, e.value) for e in entry_points(group=GROUP))
    assert ours == theirs and ("log-json-file", "engine.plugins.log.jsonfile") in ours


def test_entry_points_on_path_first_distribution_of_a_name_wins(tmp_path):
    from engine.core.plugins import entry_points_on_path

    first, second = tmp_path / "a", tmp_path / "b"
    for d, value in ((first, "one"), (second, "two")):
        info = d / "demo_pkg-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "entry_points.txt").write_text(
            f"[console_scripts]\nx = y\n\n# a comment\n[{GROUP}]\ndemo = {value}:hook\n")
    (second / "other-2.0.dist-info").mkdir()   # no entry_points.txt: skipped
    (second / "not-a-dist").mkdir()
    found = entry_points_on_path(GROUP, [str(first), str(second), str(tmp_path / "missing")])
    assert [(e.name, e.value, e.dist.name) for e in found] == [("demo", "one:hook", "demo_pkg")]
    assert found[0].dist.metadata().read_text("entry_points.txt").startswith("[console")


def test_parse_entry_points_reads_one_section():
    from engine.sdk.packaging import parse_entry_points

    text = ("; head\n[engine.plugins]\n a = m.a \nb=m.b:x\n# c = no\na = again\n"
            "[other]\nz = q\n")
    assert parse_entry_points(text) == {"a": "m.a", "b": "m.b:x"}
    assert parse_entry_points(text, "other") == {"z": "q"}
    assert parse_entry_points("") == {}
