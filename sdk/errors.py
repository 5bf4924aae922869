"""Errors that carry their kind.

The API layer maps the kind to an HTTP status without knowing the concrete type, so a
driver raises ``NotFound`` or ``Conflict`` and the client sees 404 or 409.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base error. ``status`` is the HTTP status the API answers with."""

    status = 500

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(EngineError):
    status = 400


class NotFound(EngineError):
    status = 404


class Conflict(EngineError):
    status = 409


class Forbidden(EngineError):
    status = 403


class NotModified(EngineError):
    status = 304


class Unavailable(EngineError):
    status = 503


class DriverError(EngineError):
    """A driver failed; the message says which and why."""

    status = 500
