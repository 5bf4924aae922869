"""Small helpers the whole kernel shares: atomic files, ids, time stamps."""
from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from engine.sdk.files import atomic_write  # noqa: F401  (re-exported for the kernel)


def new_id() -> str:
    """A 64-hex-digit id, like Docker's container and exec ids."""
    return secrets.token_hex(32)


def rfc3339(ts: float | None = None, ns: int | None = None) -> str:
    """Docker's time format: RFC 3339 with nanoseconds, UTC, ``Z`` suffix."""
    if ns is None:
        ns = int((time.time() if ts is None else ts) * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{base}.{frac:09d}Z"


ZERO_TIME = "0001-01-01T00:00:00Z"


def parse_time(value: str) -> float:
    """Parse Docker's RFC 3339 stamps (nanoseconds allowed) into epoch seconds."""
    if not value or value.startswith("0001-01-01"):
        return 0.0
    v = value.strip()
    frac = 0.0
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    # split the fraction off: datetime parses at most microseconds
    if "." in v:
        head, rest = v.split(".", 1)
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        frac = float("0." + digits) if digits else 0.0
        v = head + rest[i:]
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp() + frac


def parse_since(value: str | None) -> float:
    """``since``/``until`` query values: epoch seconds (maybe fractional) or RFC 3339,
    or a Go duration relative to now (``10m``)."""
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    units = {"s": 1, "m": 60, "h": 3600}
    if value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    return parse_time(value)
