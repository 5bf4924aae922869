"""The ``host`` network driver: the container shares the host's network namespace."""
from __future__ import annotations

from engine.sdk import hookimpl
from engine.sdk.drivers import NetworkDriver


class HostNetworkDriver(NetworkDriver):
    name = "host"
    needs_netns = False
    singleton = True


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_network_driver(HostNetworkDriver)
