"""Helpers shared by the command modules: image references, pulling with progress,
``inspect`` output, ``--filter`` parsing, time arguments and byte output."""
from __future__ import annotations

import json
import time

from . import Cli, StatusError
from .flags import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from collections.abc import Callable, Iterable
    from typing import IO, Any


def split_ref(ref: str) -> tuple[str, str]:
    """``busybox`` -> ``("busybox", "latest")``; ``reg:5000/a/b:v1`` -> ``("reg:5000/a/b",
    "v1")``; ``a@sha256:...`` -> ``("a", "sha256:...")``."""
    if "@" in ref:
        name, _, digest = ref.partition("@")
        return name, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def full_ref(ref: str) -> str:
    """The reference as docker prints it: the tag made explicit."""
    name, tag = split_ref(ref)
    return f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"


def canonical_ref(ref: str) -> str:
    """The fully qualified reference docker prints after a pull:
    ``busybox`` -> ``docker.io/library/busybox:latest``."""
    name, tag = split_ref(ref)
    first, sep, _ = name.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + (name if sep else "library/" + name)
    return f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"


def pull(cli: Cli, ref: str, out: IO[str] | None = None, quiet: bool = False,
         platform: str | None = None, announce: bool = False) -> None:
    """``POST /images/create?fromImage=`` and show its progress (bars on a terminal,
    nothing with ``quiet``: see :class:`~.transfer.ProgressDisplay`); with ``announce``
    the pulled reference is printed last, as ``docker pull`` does. An ``error`` line in
    the stream raises :class:`StatusError`."""
    from .transfer import show_progress

    name, tag = split_ref(ref)
    stream = out or cli.out
    params = {"fromImage": name, "tag": tag, "platform": platform or None}
    show_progress(cli, cli.api.json_lines("POST", "/images/create", params=params), out=stream,
                  quiet=quiet)
    if announce:
        stream.write(canonical_ref(ref) + "\n")
    stream.flush()


def parse_filters(items: Iterable[str]) -> dict[str, dict[str, bool]] | None:
    """``-f status=running -f label=a`` -> ``{"status": {"running": true}, ...}`` (the
    form the docker CLI sends)."""
    out: dict[str, dict[str, bool]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {item}")
        out.setdefault(key.strip().lower(), {})[value] = True
    return out or None


def print_json(cli: Cli, value: Any) -> None:
    """Indented JSON as docker prints ``inspect`` output."""
    cli.print(json.dumps(value, indent=4, ensure_ascii=False))


def inspect_objects(cli: Cli, names: list[str], getter: Callable[[str], Any],
                    fmt: str | None, not_found: Callable[[str], str]) -> int:
    """Shared body of the ``inspect`` commands: fetch each object, print all of them as
    one JSON array or with ``--format``, report the missing ones, exit 1 if any."""
    from engine.sdk.client import APIError

    found: list[Any] = []
    errors: list[str] = []
    for name in names:
        try:
            found.append(getter(name))
        except APIError as e:
            if e.status != 404:
                raise
            errors.append(not_found(name) if not_found else str(e))
    if fmt:
        from engine.sdk.format import Template, TemplateError

        try:
            tmpl = Template(fmt.replace("\\t", "\t").replace("\\n", "\n"))
            for item in found:
                cli.print(tmpl.execute(item))
        except TemplateError as e:
            raise StatusError(1, f"template parsing error: {e}") from None
    else:
        print_json(cli, found)
    for err in errors:
        cli.warn(err)
    return 1 if errors else 0


def parse_time(value: str, now: float | None = None) -> str:
    """A ``--since``/``--until`` value as the API wants it: Unix seconds (with an
    optional fraction). Accepts Unix timestamps, Go durations relative to now (``10m``)
    and RFC 3339 dates."""
    value = value.strip()
    if not value:
        return ""
    now = time.time() if now is None else now
    try:
        float(value)
        return value
    except ValueError:
        pass
    from .opts import parse_duration

    try:
        return str(int(now - parse_duration(value) / 1e9))
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time value {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ts = dt.timestamp()
    return str(int(ts)) if ts == int(ts) else f"{ts:.9f}"


def write_bytes(stream: Any, data: bytes) -> None:
    """Write raw bytes to a text stream's buffer (or decode for in-memory streams)."""
    buf = getattr(stream, "buffer", None)
    if buf is not None:
        stream.flush()
        buf.write(data)
        buf.flush()
    else:
        stream.write(data.decode("utf-8", "replace"))


def go_time(ts: float) -> str:
    """A Unix time as Go's ``time.Time.String()`` in local time:
    ``2024-01-02 15:04:05 +0000 UTC``."""
    lt = time.localtime(ts)
    return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", lt)


def rfc3339(ts: float, nanos: int | None = None) -> str:
    """A Unix time in local time as Go's RFC 3339 (``2024-01-02T15:04:05Z`` or
    ``...+01:00``); with ``nanos``, the fixed nine-digit fraction docker's events use."""
    lt = time.localtime(ts)
    offset = time.strftime("%z", lt)
    zone = "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}"
    frac = f".{nanos:09d}" if nanos is not None else ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + frac + zone


def parse_api_time(text: str) -> float:
    """An RFC 3339 timestamp from the API (nanosecond fraction allowed) -> Unix time.
    Go's zero time and unparsable values give 0."""
    if not text or text.startswith("0001-01-01"):
        return 0.0
    from datetime import datetime

    head, _, frac = text.partition(".")
    tz = ""
    if frac:
        digits = frac.rstrip("Z").split("+")[0].split("-")[0]
        tz = frac[len(digits):]
        frac = digits[:6]
    else:
        for sep in ("Z", "+", "-"):
            idx = head.find(sep, 10)
            if idx >= 0:
                head, tz = head[:idx], head[idx:]
                break
    tz = "+00:00" if tz in ("Z", "") else tz
    try:
        dt = datetime.fromisoformat(head + ("." + frac if frac else "") + tz)
    except ValueError:
        return 0.0
    return dt.timestamp()


def stdin_binary(cli: Cli) -> IO[bytes]:
    return getattr(cli.stdin, "buffer", cli.stdin)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def exit_with(code: int, message: str = "") -> None:
    raise StatusError(code, message)


__all__ = ["canonical_ref", "exit_with", "full_ref", "go_time", "inspect_objects", "is_terminal",
           "parse_api_time", "parse_filters", "parse_time", "print_json", "pull", "rfc3339",
           "split_ref", "stdin_binary", "write_bytes"]
