"""The plugin manifest, reading wheels and directories without importing them, and
building wheels of plugin directories."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from engine.sdk.errors import InvalidArgument
from engine.sdk.packaging import (
    Manifest,
    build_wheel,
    privileges_match,
    read_manifest,
    read_wheel,
    validate_plugin_dir,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_manifest_is_validated():
    m = Manifest.parse('{"description": "d", "privileges": [{"Name": "network", '
                       '"Value": ["host"]}]}')
    assert m.description == "d"
    assert m.privileges == [{"Name": "network", "Description": "", "Value": ["host"]}]
    assert Manifest.parse("{}") == Manifest()
    for bad, why in [("[]", "object"), ("{", "invalid JSON"), ('{"x": 1}', "unknown keys"),
                     ('{"privileges": [{"Name": "root"}]}', "unknown privilege"),
                     ('{"privileges": [{"Name": "mount", "Value": "/"}]}', "list of strings"),
                     ('{"privileges": {}}', "must be a list")]:
        with pytest.raises(InvalidArgument, match=why):
            Manifest.parse(bad)


def test_privileges_match_ignores_order_and_descriptions():
    asked = [{"Name": "mount", "Description": "x", "Value": ["/a", "/b"]},
             {"Name": "network", "Description": "", "Value": ["host"]}]
    assert privileges_match(asked, [{"Name": "network", "Value": ["host"]},
                                    {"Name": "mount", "Value": ["/b", "/a"]}])
    assert not privileges_match(asked, asked[:1])
    assert not privileges_match(asked, None)
    assert not privileges_match(asked, ["mount"])  # type: ignore[list-item]
    assert privileges_match([], None)


def test_every_example_is_a_valid_plugin_directory():
    for example, entry in [("volume-memfs", "memfs"), ("log-counter", "log-counter"),
                           ("net-dummy", "net-dummy")]:
        name, eps, manifest = validate_plugin_dir(EXAMPLES / example)
        assert name.startswith("engine-") and entry in eps
        assert manifest.description
        assert read_manifest(EXAMPLES / example) == manifest


def test_a_directory_without_entry_points_or_manifest_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="no pyproject.toml"):
        validate_plugin_dir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\n')
    with pytest.raises(InvalidArgument, match="entry points"):
        validate_plugin_dir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\n[project.entry-points."engine.plugins"]\np = "p"\n')
    with pytest.raises(InvalidArgument, match="no engine-plugin.json"):
        validate_plugin_dir(tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "engine-plugin.json").write_text('{"privileges": 3}')
    with pytest.raises(InvalidArgument, match="must be a list"):
        validate_plugin_dir(tmp_path)


def test_read_wheel_finds_entry_points_and_manifest(tmp_path):
    path = tmp_path / "demo-2.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo/__init__.py", "raise SystemExit('never imported')")
        zf.writestr("demo/engine-plugin.json", json.dumps({"description": "Demo"}))
        zf.writestr("demo-2.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: Demo\n"
                    "Version: 2.0\n\nLong description: not a header\n")
        zf.writestr("demo-2.0.dist-info/entry_points.txt",
                    "[console_scripts]\ndemo = demo:main\n\n[engine.plugins]\nDemo-X = demo\n")
    info = read_wheel(path)
    assert (info.name, info.version) == ("Demo", "2.0")
    assert info.entry_points == {"Demo-X": "demo"}
    assert info.manifest == Manifest(description="Demo")
    assert read_manifest(path).description == "Demo"
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgument, match="not a wheel"):
        read_wheel(tmp_path / "junk.whl")


def test_build_wheel_checks_the_manifest_is_shipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(EXAMPLES / "log-counter", src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    wheel = build_wheel(src, tmp_path / "out")
    info = read_wheel(wheel)
    assert info.name == "engine-log-counter" and "log-counter" in info.entry_points
    assert info.manifest is not None
    assert not (src / "build").exists()  # the user's tree is left alone
    # without the package-data line the manifest stays behind: refused
    pyproject = src / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        'engine_log_counter = ["engine-plugin.json"]', ""))
    with pytest.raises(InvalidArgument, match="package data"):
        build_wheel(src, tmp_path / "out2")
