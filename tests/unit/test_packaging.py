"""Every Python package in the tree ships in the wheel: a package missing from
pyproject.toml works in an editable install and breaks a real one."""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(meta["packages"])
    dirs = meta["package-dir"]
    missing = []
    for name, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            pkg = ".".join([name, *rel.parts]) if rel.parts else name
            if "__pycache__" not in rel.parts and pkg not in listed:
                missing.append(pkg)
    assert not missing, f"add to [tool.setuptools] packages: {sorted(missing)}"


def test_builtin_drivers_are_entry_points():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["engine.plugins"]
    for module in eps.values():
        rel = module.removeprefix("engine.plugins.").replace(".", "/")
        assert (REPO / "plugins" / f"{rel}.py").exists() or (REPO / "plugins" / rel).is_dir(), module
