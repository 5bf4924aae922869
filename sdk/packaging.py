"""Plugin packaging: the manifest, reading it without importing code, building wheels.

An engine plugin is an ordinary Python distribution that declares one or more entry
points in the ``engine.plugins`` group. Next to its code it ships a small manifest,
``engine-plugin.json``, inside its top-level package (as package data), so that the
daemon can show what the plugin asks for *before* any of its code runs::

    {
      "description": "Volumes kept in memory (tmpfs)",
      "privileges": [
        {"Name": "mount", "Description": "keeps volume data under /dev/shm",
         "Value": ["/dev/shm"]}
      ]
    }

``privileges`` uses the shape of Docker's plugin privileges. The names the engine
knows are listed in :data:`PRIVILEGE_NAMES`; ``Value`` is a list of strings. Plugins
run inside the daemon, so privileges are a statement the user consents to at install
time (``engine plugin install`` shows them and asks), not a sandbox.

A plugin directory needs, in its ``pyproject.toml``::

    [project.entry-points."engine.plugins"]
    memfs = "engine_memfs.plugin"

    [tool.setuptools.package-data]
    engine_memfs = ["engine-plugin.json"]

:func:`validate_plugin_dir` checks both, :func:`build_wheel` turns the directory into a
wheel (and checks the manifest made it in), and :func:`read_manifest` reads the
manifest of a wheel file, a directory or an installed distribution.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidArgument

if TYPE_CHECKING:  # pragma: no cover
    from importlib.metadata import Distribution

MANIFEST = "engine-plugin.json"
GROUP = "engine.plugins"
PRIVILEGE_NAMES = frozenset({
    "network", "mount", "device", "allow-all-devices", "capabilities", "host pid",
    "host ipc",
})
# what a source tree may hold that never belongs in a build
_IGNORED = shutil.ignore_patterns("build", "dist", ".git", "__pycache__", "*.egg-info",
                                  ".venv", ".tox", ".pytest_cache")


@dataclass
class Manifest:
    """What a plugin declares about itself, readable without importing it."""

    description: str = ""
    privileges: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes | str, origin: str = MANIFEST) -> "Manifest":
        """Decode and validate a manifest; errors name ``origin``."""
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"{origin}: invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"{origin}: expected a JSON object")
        unknown = set(data) - {"description", "privileges"}
        if unknown:
            raise InvalidArgument(f"{origin}: unknown keys: {', '.join(sorted(unknown))}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise InvalidArgument(f"{origin}: description must be a string")
        privileges = data.get("privileges", [])
        if not isinstance(privileges, list):
            raise InvalidArgument(f"{origin}: privileges must be a list")
        out = []
        for i, p in enumerate(privileges):
            where = f"{origin}: privileges[{i}]"
            if not isinstance(p, dict) or set(p) - {"Name", "Description", "Value"}:
                raise InvalidArgument(f"{where}: expected {{Name, Description, Value}}")
            name = p.get("Name")
            if name not in PRIVILEGE_NAMES:
                raise InvalidArgument(f"{where}: unknown privilege {name!r} (known: "
                                      f"{', '.join(sorted(PRIVILEGE_NAMES))})")
            value = p.get("Value", [])
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise InvalidArgument(f"{where}: Value must be a list of strings")
            desc = p.get("Description", "")
            if not isinstance(desc, str):
                raise InvalidArgument(f"{where}: Description must be a string")
            out.append({"Name": name, "Description": desc, "Value": list(value)})
        return cls(description=description, privileges=out)


def privileges_match(asked: list[dict], granted: list[dict] | None) -> bool:
    """Whether ``granted`` (what the user accepted) covers exactly what is ``asked``.

    Descriptions are ignored; the order of privileges and of their values is not
    significant."""
    def key(items: list[dict] | None) -> list[tuple[str, tuple[str, ...]]]:
        out = []
        for p in items or []:
            if not isinstance(p, dict):
                return [("<invalid>", ())]
            out.append((str(p.get("Name", "")), tuple(sorted(map(str, p.get("Value") or [])))))
        return sorted(out)
    return key(asked) == key(granted)


# ---------------------------------------------------------------- wheels


@dataclass
class WheelInfo:
    """The parts of a wheel the plugin host needs, read from its metadata."""

    path: Path
    name: str
    version: str
    entry_points: dict[str, str]
    manifest: Manifest | None


def parse_entry_points(text: str, group: str = GROUP) -> dict[str, str]:
    """The ``group`` section of an ``entry_points.txt`` (an INI file: ``[group]``, then
    ``name = module:attr`` lines; ``#`` and ``;`` start comments), name -> value. The
    first of a repeated name wins. Read by hand: the daemon discovers plugins with it
    at every start and configparser is not worth its weight there."""
    out: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group:
            name, sep, value = line.partition("=")
            if sep and name.strip():
                out.setdefault(name.strip(), value.strip())
    return out


def read_wheel(path: str | os.PathLike[str]) -> WheelInfo:
    """Name, version, ``engine.plugins`` entry points and manifest of a wheel file."""
    import zipfile  # here: the daemon reads wheels only when installing

    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise InvalidArgument(f"{path}: not a wheel: {e}") from None
    with zf:
        names = zf.namelist()
        infos = sorted({n.split("/", 1)[0] for n in names
                        if n.split("/", 1)[0].endswith(".dist-info")})
        if len(infos) != 1:
            raise InvalidArgument(f"{path}: not a wheel: expected one .dist-info directory")
        info = infos[0]
        meta = zf.read(f"{info}/METADATA").decode("utf-8", "replace")
        fields = {}
        for line in meta.splitlines():
            if not line.strip():
                break
            k, _, v = line.partition(":")
            fields.setdefault(k.strip().lower(), v.strip())
        eps_name = f"{info}/entry_points.txt"
        eps = parse_entry_points(zf.read(eps_name).decode()) if eps_name in names else {}
        found = [n for n in names if n.count("/") == 1 and n.endswith("/" + MANIFEST)
                 and not n.startswith(info)]
        if len(found) > 1:
            raise InvalidArgument(f"{path}: more than one {MANIFEST}: {', '.join(found)}")
        manifest = (Manifest.parse(zf.read(found[0]), f"{path.name}:{found[0]}")
                    if found else None)
    if not fields.get("name"):
        raise InvalidArgument(f"{path}: the wheel's METADATA has no Name")
    return WheelInfo(path=path, name=fields["name"], version=fields.get("version", ""),
                     entry_points=eps, manifest=manifest)


# ---------------------------------------------------------------- directories


def _pyproject(directory: Path) -> dict:
    import tomllib  # here: the daemon reads plugin directories only when installing

    try:
        with open(directory / "pyproject.toml", "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"{directory}: no pyproject.toml: not a plugin directory") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{directory}/pyproject.toml: {e}") from None


def _find_manifests(directory: Path) -> list[Path]:
    """Manifests one or two levels down (``pkg/`` or ``src/pkg/``), tests excluded."""
    out = []
    for pattern in (f"*/{MANIFEST}", f"src/*/{MANIFEST}"):
        out.extend(p for p in sorted(directory.glob(pattern))
                   if p.parent.name not in ("tests", "build", "dist"))
    return out


def validate_plugin_dir(directory: str | os.PathLike[str]) -> tuple[str, dict[str, str], Manifest]:
    """Check a plugin source directory; return (project name, entry points, manifest)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidArgument(f"{directory}: not a directory")
    project = _pyproject(directory).get("project") or {}
    name = project.get("name")
    if not name:
        raise InvalidArgument(f"{directory}/pyproject.toml: [project] has no name")
    eps = (project.get("entry-points") or {}).get(GROUP) or {}
    if not eps:
        raise InvalidArgument(f"{directory}/pyproject.toml: no entry points in the "
                              f"{GROUP!r} group: declare [project.entry-points.\"{GROUP}\"]")
    found = _find_manifests(directory)
    if not found:
        raise InvalidArgument(f"{directory}: no {MANIFEST} in the plugin's package")
    if len(found) > 1:
        raise InvalidArgument(f"{directory}: more than one {MANIFEST}: "
                              f"{', '.join(str(p) for p in found)}")
    manifest = Manifest.parse(found[0].read_bytes(), str(found[0]))
    return name, dict(eps), manifest


def _can_build_locally() -> bool:
    """Whether this environment's setuptools can build wheels by itself (it can from
    70.1 on, or with the ``wheel`` package beside it)."""
    import importlib.util

    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except (ImportError, ValueError, LookupError):
        return False
    return (major, minor) >= (70, 1)


def build_wheel(directory: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Build a wheel of a plugin directory into ``out_dir`` and return its path.

    The source is copied first (the build writes ``build/`` and ``*.egg-info``, which do
    not belong in the user's tree) and built with ``pip wheel --no-deps``: without
    build isolation when this environment has what it takes (nothing is fetched),
    else in pip's isolated build environment (its build requirements come from the
    package index). The result is checked: it must carry the entry points and the
    manifest."""
    directory = Path(directory).resolve()
    validate_plugin_dir(directory)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="engine-build-") as tmp:
        src = Path(tmp, "src")
        shutil.copytree(directory, src, ignore=_IGNORED, symlinks=True)
        wheels = Path(tmp, "wheels")
        isolation = [] if not _can_build_locally() else ["--no-build-isolation"]
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--no-input",
             "--disable-pip-version-check", "-q", "-w", str(wheels), str(src)],
            capture_output=True, text=True, cwd=tmp)
        built = sorted(wheels.glob("*.whl")) if wheels.exists() else []
        if proc.returncode != 0 or len(built) != 1:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise InvalidArgument(f"building a wheel of {directory} failed:\n" + "\n".join(detail))
        target = out_dir / built[0].name
        shutil.move(str(built[0]), target)
    info = read_wheel(target)
    if info.manifest is None:
        target.unlink()
        raise InvalidArgument(
            f"{directory}: {MANIFEST} is not in the built wheel; list it as package data "
            "([tool.setuptools.package-data])")
    if not info.entry_points:
        target.unlink()
        raise InvalidArgument(f"{directory}: the built wheel has no {GROUP!r} entry points")
    return target


# ---------------------------------------------------------------- sources


def read_manifest(source: str | os.PathLike[str]) -> Manifest:
    """The manifest of a wheel file or a plugin directory."""
    path = Path(source)
    if path.is_dir():
        return validate_plugin_dir(path)[2]
    if path.suffix == ".whl" and path.is_file():
        manifest = read_wheel(path).manifest
        if manifest is None:
            raise InvalidArgument(f"{path}: no {MANIFEST} in the wheel")
        return manifest
    raise InvalidArgument(f"{source}: neither a wheel file nor a plugin directory")


def installed_manifest(dist: "Distribution") -> Manifest | None:
    """The manifest of an installed distribution (found through its RECORD), or None
    when it has none or it is unreadable. Nothing of the plugin is imported."""
    for f in dist.files or []:
        if len(f.parts) == 2 and f.parts[1] == MANIFEST:
            try:
                return Manifest.parse(f.read_text(), f"{dist.metadata['Name']}:{f}")
            except (OSError, InvalidArgument):
                return None
    return None


def normalize_name(name: str) -> str:
    """PEP 503 normalization of a project name (``Engine_MemFS`` -> ``engine-memfs``)."""
    return re.sub(r"[-_.]+", "-", name).lower()
