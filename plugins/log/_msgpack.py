"""A minimal MessagePack encoder and decoder (https://msgpack.org/ spec), enough for
Fluentd's forward protocol. Standard library only.

Types: None, bool, int (-2**63 .. 2**64-1), float (float64), str, bytes, list/tuple,
dict, and :class:`ExtType`. :func:`event_time` builds Fluentd's EventTime (ext 0).
"""
from __future__ import annotations

import struct
from typing import Any, NamedTuple


class ExtType(NamedTuple):
    code: int
    data: bytes


def event_time(time_ns: int) -> ExtType:
    """Fluentd's EventTime: ext type 0, seconds and nanoseconds as two u32 (big endian)."""
    sec, nsec = divmod(time_ns, 1_000_000_000)
    return ExtType(0, struct.pack(">II", sec, nsec))


def packb(obj: Any) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogateescape")
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += bytes((0xD9, n))
        elif n < 0x10000:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        n = len(data)
        if n < 0x100:
            out += bytes((0xC4, n))
        elif n < 0x10000:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += data
    elif isinstance(obj, ExtType):
        _pack_ext(obj, out)
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        n = len(obj)
        if n < 16:
            out.append(0x80 | n)
        elif n < 0x10000:
            out += b"\xde" + struct.pack(">H", n)
        else:
            out += b"\xdf" + struct.pack(">I", n)
        for k, v in obj.items():
            _pack(k, out)
            _pack(v, out)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _pack_int(n: int, out: bytearray) -> None:
    if n >= 1 << 64 or n < -(1 << 63):
        raise OverflowError(f"integer {n} does not fit in msgpack")
    if 0 <= n < 0x80:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif 0 <= n < 0x100:
        out += bytes((0xCC, n))
    elif 0 <= n < 0x10000:
        out += b"\xcd" + struct.pack(">H", n)
    elif 0 <= n < 0x100000000:
        out += b"\xce" + struct.pack(">I", n)
    elif n > 0:
        out += b"\xcf" + struct.pack(">Q", n)
    elif -0x80 <= n:
        out += b"\xd0" + struct.pack(">b", n)
    elif -0x8000 <= n:
        out += b"\xd1" + struct.pack(">h", n)
    elif -0x80000000 <= n:
        out += b"\xd2" + struct.pack(">i", n)
    else:
        out += b"\xd3" + struct.pack(">q", n)


_FIXEXT = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}


def _pack_ext(ext: ExtType, out: bytearray) -> None:
    n = len(ext.data)
    if n in _FIXEXT:
        out.append(_FIXEXT[n])
    elif n < 0x100:
        out += bytes((0xC7, n))
    elif n < 0x10000:
        out += b"\xc8" + struct.pack(">H", n)
    else:
        out += b"\xc9" + struct.pack(">I", n)
    out += struct.pack(">b", ext.code)
    out += ext.data


# ---------------------------------------------------------------- decoding


class Incomplete(ValueError):
    """The buffer ends in the middle of an object."""


def unpackb(data: bytes) -> Any:
    """Decode exactly one object."""
    obj, pos = unpack_from(data, 0)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} extra bytes after the msgpack object")
    return obj


def unpack_all(data: bytes) -> tuple[list[Any], int]:
    """Every whole object in ``data`` and the offset where a partial one starts."""
    out, pos = [], 0
    while pos < len(data):
        try:
            obj, pos2 = unpack_from(data, pos)
        except Incomplete:
            break
        out.append(obj)
        pos = pos2
    return out, pos


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise Incomplete("truncated msgpack data")
    return data[pos:pos + n], pos + n


def _unpack(fmt: str, data: bytes, pos: int) -> tuple[Any, int]:
    raw, pos = _take(data, pos, struct.calcsize(fmt))
    return struct.unpack(fmt, raw)[0], pos


def unpack_from(data: bytes, pos: int) -> tuple[Any, int]:
    """Decode one object at ``pos``; return it and the offset after it."""
    raw, pos = _take(data, pos, 1)
    b = raw[0]
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0x80 <= b <= 0x8F:
        return _map(data, pos, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return _array(data, pos, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        s, pos = _take(data, pos, b & 0x1F)
        return s.decode("utf-8", "surrogateescape"), pos
    simple = {0xC0: None, 0xC2: False, 0xC3: True}
    if b in simple:
        return simple[b], pos
    if b in (0xC4, 0xC5, 0xC6):
        n, pos = _unpack({0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}[b], data, pos)
        return _take(data, pos, n)
    if b in (0xC7, 0xC8, 0xC9):
        n, pos = _unpack({0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}[b], data, pos)
        code, pos = _unpack(">b", data, pos)
        payload, pos = _take(data, pos, n)
        return ExtType(code, payload), pos
    if b == 0xCA:
        return _unpack(">f", data, pos)
    if b == 0xCB:
        return _unpack(">d", data, pos)
    ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
            0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if b in ints:
        return _unpack(ints[b], data, pos)
    fixext = {v: k for k, v in _FIXEXT.items()}
    if b in fixext:
        code, pos = _unpack(">b", data, pos)
        payload, pos = _take(data, pos, fixext[b])
        return ExtType(code, payload), pos
    if b in (0xD9, 0xDA, 0xDB):
        n, pos = _unpack({0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}[b], data, pos)
        s, pos = _take(data, pos, n)
        return s.decode("utf-8", "surrogateescape"), pos
    if b in (0xDC, 0xDD):
        n, pos = _unpack(">H" if b == 0xDC else ">I", data, pos)
        return _array(data, pos, n)
    if b in (0xDE, 0xDF):
        n, pos = _unpack(">H" if b == 0xDE else ">I", data, pos)
        return _map(data, pos, n)
    raise ValueError(f"invalid msgpack type byte 0x{b:02x}")


def _array(data: bytes, pos: int, n: int) -> tuple[list, int]:
    out = []
    for _ in range(n):
        item, pos = unpack_from(data, pos)
        out.append(item)
    return out, pos


def _map(data: bytes, pos: int, n: int) -> tuple[dict, int]:
    out = {}
    for _ in range(n):
        k, pos = unpack_from(data, pos)
        v, pos = unpack_from(data, pos)
        out[k] = v
    return out, pos
