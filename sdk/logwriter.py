"""The writer half of a log driver, which runs in the container's monitor process.

Kept apart from ``engine.sdk.drivers`` so that a writer module imports only the
standard library: the monitor starts with every container and must stay small.
"""
from __future__ import annotations

import abc


class LogWriter(abc.ABC):
    """Receives a container's output inside its monitor process.

    Constructed with one argument, the container's log context as a plain dict
    (``container_id``, ``container_name``, ``image``, ``log_dir``, ``options``,
    ``labels``). Runs synchronously and must not block for long: a slow destination
    buffers or drops (``mode=non-blocking``) instead of stalling the container.
    """

    @abc.abstractmethod
    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        """``data`` is a raw chunk: any number of lines, the last one maybe partial."""

    def close(self) -> None:
        """Flush what is buffered (a trailing partial line included)."""
