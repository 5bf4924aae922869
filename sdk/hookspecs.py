"""Hook specifications for engine plugins.

Hooks are synchronous and are only about registration: a plugin is handed a registrar
and adds its driver classes to it. Drivers themselves are async classes (see
``engine.sdk.drivers``) that receive a narrow :class:`~engine.sdk.drivers.DriverContext`,
never the daemon's own records.

A plugin module looks like this::

    from engine.sdk import hookimpl, VolumeDriver

    class MyDriver(VolumeDriver):
        name = "mine"
        ...

    @hookimpl
    def engine_register_drivers(registrar):
        registrar.add_volume_driver(MyDriver)

What a plugin asks for (host network, mounts, capabilities) is declared in an
``engine-plugin.json`` manifest shipped in its package, so that ``engine plugin install``
can show it before any of the plugin's code runs (see ``engine.sdk.packaging``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

PROJECT = "engine"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

if TYPE_CHECKING:  # pragma: no cover
    from .drivers import Driver, Registrar


@hookspec
def engine_register_drivers(registrar: "Registrar") -> None:
    """Called once when the plugin is enabled (at daemon start, or by ``plugin enable``).

    Add driver classes with ``registrar.add_network_driver(cls)``,
    ``registrar.add_volume_driver(cls)`` or ``registrar.add_log_driver(cls)``. Return
    nothing. Raising marks the plugin as failed; the daemon goes on without it.
    """


@hookspec(firstresult=True)
def engine_find_driver(kind: str, name: str) -> "type[Driver] | None":
    """Called when the daemon is asked for a ``kind`` driver (``"network"``,
    ``"volume"`` or ``"log"``) called ``name`` that no plugin has registered, before it
    answers "not found": a plugin that can make such a driver on demand returns its
    class (a subclass of the kind's base class whose ``name`` is ``name``); any other
    returns None. The first class returned wins.

    This is how a Docker v1 plugin whose socket appears in ``/run/docker/plugins``
    after the daemon started becomes usable (``docker volume create -d late-plugin``),
    as Docker looks such plugins up by name when they are first used. The daemon
    instantiates the class with its :class:`~engine.sdk.drivers.DriverContext`,
    counts it among the answering plugin's drivers from then on, and uses it at once:
    the driver must be ready after ``__init__``. Called on the daemon's event loop, so
    it must not block: look at files, never call the plugin. Raising is logged and
    treated as None.
    """
