"""The ``none`` log driver: output is discarded, ``logs`` has nothing to read."""
from __future__ import annotations

from engine.sdk import hookimpl
from engine.sdk.drivers import LogDriver
from engine.sdk.errors import InvalidArgument


class NoneLogDriver(LogDriver):
    name = "none"
    writer = ""  # the monitor writes nowhere
    can_read = False

    def validate_options(self, options: dict[str, str]) -> None:
        if options:
            raise InvalidArgument(f"unknown log opt '{next(iter(options))}' for none log driver")


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(NoneLogDriver)
