"""The map's boundaries, checked on the source: plugins import only the SDK, the SDK
imports nothing of the kernel or the plugins, and the kernel finds plugins only through
entry points."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    rel_parts = path.relative_to(REPO).with_suffix("").parts
    top = {"core": "engine.core", "plugins": "engine.plugins", "sdk": "engine.sdk",
           "registry": "engine.registry"}.get(rel_parts[0])
    pkg = [top] + list(rel_parts[1:-1]) if top else []
    if path.name == "__init__.py":
        pkg = [top] + list(rel_parts[1:-1]) if top else []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _files("plugins"), ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_import_only_the_sdk(path):
    bad = [(n, m) for n, m in _imports(path)
           if m.startswith("engine.") and not m.startswith(("engine.sdk", "engine.plugins"))]
    assert not bad, f"{path}: imports outside engine.sdk: {bad}"


@pytest.mark.parametrize("path", _files("sdk"), ids=lambda p: str(p.relative_to(REPO)))
def test_sdk_imports_nothing_of_core_or_plugins(path):
    bad = [(n, m) for n, m in _imports(path)
           if m.startswith(("engine.core", "engine.plugins"))]
    assert not bad, f"{path}: the SDK must stand alone: {bad}"


@pytest.mark.parametrize("path", _files("core"), ids=lambda p: str(p.relative_to(REPO)))
def test_core_never_imports_a_plugin_by_name(path):
    bad = [(n, m) for n, m in _imports(path) if m.startswith("engine.plugins")]
    assert not bad, f"{path}: the kernel finds drivers through entry points only: {bad}"


def test_the_checker_sees_relative_imports():
    # a guard on the guard: a relative import from plugins/ that climbed into core
    # would resolve to engine.core and be caught
    mods = [m for _, m in _imports(REPO / "plugins" / "log" / "jsonfile.py")]
    assert "engine.plugins.log._common" in mods
    assert "engine.sdk.drivers" in mods
