"""Small filesystem helpers shared by the stores: atomic writes and digest checks.

Every piece of state the stores keep is written with :func:`atomic_write`: the bytes go
to a temporary file in the same directory, are fsynced, renamed over the target and the
directory is fsynced, so a crash leaves either the old or the new content, never a mix.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import msgspec
from engine.sdk.errors import InvalidArgument
from engine.sdk.files import atomic_write, fsync_dir  # noqa: F401  (used by the store)

#: Read and hash in chunks of this size.
CHUNK = 1 << 20

_DIGEST_RE = re.compile(r"^sha256:([a-f0-9]{64})$")
_HEX_RE = re.compile(r"^[a-f0-9]{64}$")


def parse_digest(digest: str) -> str:
    """Validate ``sha256:<64 hex>`` and return the hex part, else raise InvalidArgument."""
    if not isinstance(digest, str):
        raise InvalidArgument(f"invalid digest {digest!r}: not a string")
    m = _DIGEST_RE.match(digest)
    if m is None:
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return m.group(1)


def is_hex_id(value: str) -> bool:
    """True when ``value`` is exactly 64 lower-case hex digits."""
    return bool(_HEX_RE.match(value))


def sha256_digest(data: bytes) -> str:
    """The ``sha256:``-prefixed digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Encode ``obj`` (plain data or msgspec Structs) as JSON and write it atomically."""
    atomic_write(path, msgspec.json.encode(obj))
