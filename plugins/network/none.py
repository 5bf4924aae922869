"""The ``none`` network driver: a network namespace of its own with only loopback."""
from __future__ import annotations

from engine.sdk import hookimpl
from engine.sdk.drivers import NetworkDriver


class NoneNetworkDriver(NetworkDriver):
    name = "null"
    needs_netns = True
    singleton = True


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_network_driver(NoneNetworkDriver)
