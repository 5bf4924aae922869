"""The CLI's hot path stays light: ``engine run`` imports none of the daemon's heavy
dependencies (checked with ``-X importtime``; no timing assertions)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

FORBIDDEN = ("aiohttp", "uvloop", "pyroute2", "rich", "pluggy", "msgspec", "asyncio",
             "http.client", "email", "dataclasses", "inspect")


def imported_modules(*argv: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["ENGINE_HOST"] = "unix:///nonexistent/engine.sock"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine.sdk.cli", *argv],
                          capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    assert modules, proc.stderr
    return modules


@pytest.mark.parametrize("argv", [
    ("run", "--help"),
    ("run", "--rm", "-d", "busybox", "true"),  # fails to connect, after the whole run path
    ("ps",),
])
def test_hot_path_imports(argv):
    modules = imported_modules(*argv)
    bad = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN)
    assert bad == []
    assert "engine.sdk.cli" in modules
    if argv[0] == "run" and len(argv) > 2:
        assert {"engine.sdk.client", "engine.sdk.cli.containers"} <= modules
    # the other command modules and the template engine are not loaded for run
    if argv[0] == "run":
        assert not modules & {"engine.sdk.cli.images", "engine.sdk.cli.system",
                              "engine.sdk.cli.objects", "engine.sdk.cli.transfer",
                              "engine.sdk.format", "argparse"}


def test_sdk_package_stays_lazy():
    modules = imported_modules("--version")
    assert not modules & {"engine.sdk.hookspecs", "engine.sdk.drivers", "pluggy", "msgspec"}
