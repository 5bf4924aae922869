"""engine.sdk: everything code outside the kernel imports.

Plugin authors import from here: ``from engine.sdk import hookimpl, VolumeDriver``.
Names are loaded lazily so that the CLI (which lives in this package too) does not pay
for pluggy and msgspec on its hot path.
"""
from __future__ import annotations

_LAZY = {
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
    "DriverContext": "drivers",
    "Driver": "drivers",
    "NetworkDriver": "drivers",
    "NetworkSpec": "drivers",
    "Sandbox": "drivers",
    "EndpointInfo": "drivers",
    "VolumeDriver": "drivers",
    "VolumeInfo": "drivers",
    "LogDriver": "drivers",
    "LogWriter": "drivers",
    "LogContext": "drivers",
    "LogEntry": "drivers",
    "Registrar": "drivers",
    "EngineError": "errors",
    "InvalidArgument": "errors",
    "NotFound": "errors",
    "Conflict": "errors",
    "Forbidden": "errors",
    "DriverError": "errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'engine.sdk' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
