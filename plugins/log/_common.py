"""Helpers shared by the built-in log drivers. Standard library only: the writers that
use them run in every container's monitor."""
from __future__ import annotations

import os
import time

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
          "g": 1024**3, "gb": 1024**3}


def parse_size(value: str) -> int:
    """Docker's ``max-size`` grammar (``10m``, ``1g``, ``512k``); -1 means unlimited."""
    v = str(value).strip().lower()
    if v in ("-1", ""):
        return -1
    num = v.rstrip("bkmg")
    unit = v[len(num):]
    try:
        n = float(num)
    except ValueError:
        n = -2
    if n < 0 or unit not in _UNITS:
        from engine.sdk.errors import InvalidArgument

        raise InvalidArgument(f"invalid size: '{value}'")
    return int(n * _UNITS[unit])


def log_file(log_dir: str, container_id: str) -> str:
    return os.path.join(log_dir, f"{container_id}-json.log")


def rotate_files(path: str, keep: int, compress: bool, compresslevel: int = 9) -> None:
    """Shift ``path.1`` .. ``path.N`` (each plain or ``.gz``) up by one so that with the
    live file at most ``keep`` files remain, then move the closed live file to
    ``path.1`` (gzipped through a temporary file when ``compress``, so a crash leaves
    no half-written ``.1.gz``). With ``keep`` at most 1 the live file is only
    truncated. The caller reopens ``path``."""
    if keep <= 1:
        open(path, "wb").close()
        return
    for ext in (".gz", ""):
        if os.path.exists(f"{path}.{keep - 1}{ext}"):
            os.unlink(f"{path}.{keep - 1}{ext}")
    for i in range(keep - 2, 0, -1):
        for ext in (".gz", ""):
            if os.path.exists(f"{path}.{i}{ext}"):
                os.rename(f"{path}.{i}{ext}", f"{path}.{i + 1}{ext}")
    if compress:
        import gzip

        tmp = f"{path}.1.gz.tmp"
        with open(path, "rb") as src, gzip.open(tmp, "wb", compresslevel=compresslevel) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.rename(tmp, f"{path}.1.gz")
        os.unlink(path)
    else:
        os.rename(path, f"{path}.1")


_last_sec = -1
_last_prefix = ""


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds in UTC, as Docker writes log times."""
    global _last_sec, _last_prefix
    sec, frac = divmod(ns, 1_000_000_000)
    if sec != _last_sec:
        _last_sec = sec
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_last_prefix}.{frac:09d}Z"


def parse_time_ns(value: str) -> int:
    """Inverse of :func:`format_time` (also accepts fewer fraction digits)."""
    if not value:
        return 0
    head, _, rest = value.partition(".")
    if not rest:
        head = head.rstrip("Z")
        frac = "0"
    else:
        frac = rest.rstrip("Z")
    sec = _SECONDS.get(head)
    if sec is None:  # lines come in runs with the same second: parse each once
        import calendar

        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        sec = _SECONDS[head] = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return sec * 1_000_000_000 + int((frac + "000000000")[:9])


_SECONDS: dict[str, int] = {}
