"""The ``fluentd`` log driver: Fluentd's forward protocol (MessagePack over TCP).

Options: ``fluentd-address`` (``host:port``, ``tcp://host:port`` or
``unix:///path``; ``localhost:24224`` by default), ``tag`` (``{{.ID}}``),
``fluentd-sub-second-precision`` (EventTime instead of whole seconds),
``fluentd-async`` and ``fluentd-buffer-limit`` (a non-blocking buffer, like
``mode=non-blocking`` and ``max-buffer-size``), and the ``cache-*`` options of dual
logging, through which ``logs`` works. Retries and acknowledgements
(``fluentd-retry-wait``, ``fluentd-max-retries``, ``fluentd-request-ack``) are accepted
but not implemented: a peer that is down loses lines, retried once a second.
"""
from __future__ import annotations

from engine.sdk import hookimpl
from engine.sdk.errors import InvalidArgument

from ._base import check_tag, parse_bool
from .fluentd_writer import parse_fluentd_address
from .local import CachingLogDriver


class FluentdLogDriver(CachingLogDriver):
    name = "fluentd"
    writer = "engine.plugins.log.fluentd_writer:create"
    OPTIONS = frozenset({"fluentd-address", "tag", "fluentd-async", "fluentd-async-connect",
                         "fluentd-buffer-limit", "fluentd-retry-wait", "fluentd-max-retries",
                         "fluentd-sub-second-precision", "fluentd-request-ack",
                         "labels", "labels-regex", "env", "env-regex"})

    def validate_options(self, options: dict[str, str]) -> None:
        super().validate_options(options)
        try:
            parse_fluentd_address(options.get("fluentd-address", ""))
            for key in ("fluentd-async", "fluentd-async-connect",
                        "fluentd-sub-second-precision", "fluentd-request-ack"):
                parse_bool(options.get(key))
            for key in ("fluentd-buffer-limit", "fluentd-max-retries"):
                if options.get(key) and int(options[key]) < 1:
                    raise ValueError(f"{key} must be a positive number")
            check_tag(options.get("tag", ""))
        except ValueError as e:
            raise InvalidArgument(str(e)) from None


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(FluentdLogDriver)
