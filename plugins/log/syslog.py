"""The ``syslog`` log driver: each line a syslog message (RFC 5424 or RFC 3164).

Options: ``syslog-address`` (``udp://host:514``, ``tcp://host:port``,
``unix:///dev/log``, ``unixgram:///path``; the local syslog socket by default),
``syslog-facility`` (``daemon``), ``syslog-format`` (``rfc5424``, ``rfc5424micro``,
``rfc3164``, or empty for the classic unix format), ``tag`` (``{{.ID}}``), ``mode``,
``max-buffer-size`` and the local cache options of dual logging (``cache-*``), through
which ``logs`` works. TLS (``tcp+tls``) is not supported.
"""
from __future__ import annotations

import os

from engine.sdk import hookimpl
from engine.sdk.errors import InvalidArgument

from ._base import check_tag
from ._netaddr import parse_address
from .local import CachingLogDriver
from .syslog_writer import DEFAULT_SOCKETS, FORMATS, SCHEMES, facility_code


class SyslogLogDriver(CachingLogDriver):
    name = "syslog"
    writer = "engine.plugins.log.syslog_writer:create"
    OPTIONS = frozenset({"syslog-address", "syslog-facility", "syslog-format", "tag",
                         "labels", "labels-regex", "env", "env-regex"})

    def validate_options(self, options: dict[str, str]) -> None:
        super().validate_options(options)
        try:
            if options.get("syslog-address"):
                addr = options["syslog-address"]
                if addr.startswith("tcp+tls://"):
                    raise ValueError("syslog over TLS (tcp+tls) is not supported")
                parse_address(addr, default_port=514, schemes=SCHEMES, default_scheme="udp")
            elif not any(os.path.exists(p) for p in DEFAULT_SOCKETS):
                raise ValueError("no local syslog socket (/dev/log): set syslog-address")
            facility_code(options.get("syslog-facility", ""))
            if options.get("syslog-format", "") not in FORMATS:
                raise ValueError(f"invalid syslog format: {options['syslog-format']!r}")
            check_tag(options.get("tag", ""))
        except ValueError as e:
            raise InvalidArgument(str(e)) from None


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(SyslogLogDriver)
