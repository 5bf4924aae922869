"""Typed application keys and version constants."""
from __future__ import annotations

from typing import Any

from aiohttp import web

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "0.1.0"

SERVICES: web.AppKey[Any] = web.AppKey("services", object)
