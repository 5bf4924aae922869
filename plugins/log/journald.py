"""The ``journald`` log driver: each line a journal entry, sent with journald's native
protocol to ``/run/systemd/journal/socket``.

Entries carry ``CONTAINER_ID``, ``CONTAINER_ID_FULL``, ``CONTAINER_NAME``,
``CONTAINER_TAG``, ``IMAGE_NAME``, ``SYSLOG_IDENTIFIER`` and ``PRIORITY`` (6 for
stdout, 3 for stderr). Options: ``tag``, ``mode``, ``max-buffer-size`` and the
``cache-*`` options: ``logs`` reads the local cache (dual logging), since reading the
journal back would need libsystemd.
"""
from __future__ import annotations

import os

from engine.sdk import hookimpl
from engine.sdk.errors import InvalidArgument, Unavailable

from ._base import check_tag
from .journald_writer import SOCKET
from .local import CachingLogDriver


class JournaldLogDriver(CachingLogDriver):
    name = "journald"
    writer = "engine.plugins.log.journald_writer:create"
    OPTIONS = frozenset({"tag", "labels", "labels-regex", "env", "env-regex"})

    def validate_options(self, options: dict[str, str]) -> None:
        super().validate_options(options)
        try:
            check_tag(options.get("tag", ""))
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if not os.path.exists(SOCKET):
            raise Unavailable(f"journald is not running: {SOCKET} does not exist")


@hookimpl
def engine_register_drivers(registrar) -> None:
    registrar.add_log_driver(JournaldLogDriver)
