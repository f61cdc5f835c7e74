"""Strict CBOR for FDO: a bounded decoder that never raises anything but FdoMessageError, and a
deterministic encoder.

FDO bodies come from the network before anyone is authenticated, so :func:`decode` enforces the
:class:`Limits` given to it (body bytes, nesting depth, item count, string length), refuses
indefinite lengths, ``undefined``, reserved additional-information values, duplicate map keys,
unhashable map keys, invalid UTF-8 and trailing bytes, and never allocates more than the body
can hold. Every failure is an :class:`~afield.fdo.FdoMessageError` with code 100
(MESSAGE_BODY_ERROR).

:func:`encode` writes definite lengths, the shortest integer heads, and map keys in the
deterministic order of RFC 8949 section 4.2.1 (bytewise order of the encoded keys), so the same
value always gives the same bytes — which signatures and hashes over re-encoded values need.

Decoded values are plain Python: ``int``, ``bytes``, ``str``, ``list``, ``dict``, ``bool``,
``None``, ``float`` and :class:`CborTag`. A decoded tag keeps its exact encoded bytes in
``raw``, so hash chains (voucher entries) hash what the peer sent, not a re-encoding.

What it leaves to others: the meaning of the values (:mod:`afield.fdo.types`,
:mod:`afield.fdo.messages`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from afield.fdo._errors import FdoMessageError

__all__ = ["CborTag", "Limits", "RawCbor", "decode", "encode"]


@dataclass(frozen=True)
class Limits:
    """Bounds on one decoded body; like TUF's ``*_max_length``, they come from configuration.

    Args:
        max_bytes: the largest body accepted, in bytes.
        max_depth: the deepest nesting of arrays, maps and tags.
        max_items: the most data items (every integer, string, array, ... counts one).
        max_string: the longest byte or text string, in bytes.
    """

    max_bytes: int = 1 << 20
    max_depth: int = 32
    max_items: int = 65536
    max_string: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_depth", "max_items", "max_string"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class CborTag:
    """A tagged CBOR value; ``raw`` holds the tag's exact encoding when it was decoded."""

    tag: int
    value: Any
    raw: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RawCbor:
    """Already-encoded CBOR that :func:`encode` copies as is (keeps received bytes exact)."""

    data: bytes


class _Decoder:
    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.pos = 0
        self.items = 0
        self.limits = limits

    def fail(self, message: str) -> FdoMessageError:
        return FdoMessageError(f"malformed CBOR at byte {self.pos}: {message}")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"needs {n} more bytes, body ends first")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int]:
        """Major type, additional information, and argument of the next item."""
        (initial,) = self.take(1)
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            size = 1 << (info - 24)
            return major, info, int.from_bytes(self.take(size), "big")
        if info == 31:
            raise self.fail("indefinite-length items are not accepted")
        raise self.fail(f"reserved additional information {info}")

    def length(self, argument: int, unit_min: int) -> int:
        # Each element needs at least unit_min bytes, so no claim can outgrow the body.
        if argument * unit_min > len(self.data) - self.pos:
            raise self.fail(f"length {argument} is larger than the rest of the body")
        return argument

    def item(self, depth: int) -> Any:
        self.items += 1
        if self.items > self.limits.max_items:
            raise self.fail(f"more than {self.limits.max_items} items")
        start = self.pos
        major, info, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major in (2, 3):
            if arg > self.limits.max_string:
                raise self.fail(f"string of {arg} bytes exceeds the limit {self.limits.max_string}")
            raw = self.take(self.length(arg, 1))
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise self.fail("text string is not valid UTF-8") from e
        if major == 7:
            return self.simple(info, arg)
        if depth >= self.limits.max_depth:
            raise self.fail(f"nesting deeper than {self.limits.max_depth}")
        if major == 4:
            return [self.item(depth + 1) for _ in range(self.length(arg, 1))]
        if major == 5:
            result: dict[Any, Any] = {}
            for _ in range(self.length(arg, 2)):
                key = self.item(depth + 1)
                if not isinstance(key, int | str | bytes | bool) and key is not None:
                    raise self.fail(f"map key of type {type(key).__name__} is not accepted")
                if key in result:
                    raise self.fail(f"duplicate map key {key!r}")
                result[key] = self.item(depth + 1)
            return result
        value = self.item(depth + 1)  # major 6: tag
        return CborTag(arg, value, self.data[start : self.pos])

    def simple(self, info: int, arg: int) -> Any:
        if info == 25:
            return struct.unpack(">e", arg.to_bytes(2, "big"))[0]
        if info == 26:
            return struct.unpack(">f", arg.to_bytes(4, "big"))[0]
        if info == 27:
            return struct.unpack(">d", arg.to_bytes(8, "big"))[0]
        if arg == 20:
            return False
        if arg == 21:
            return True
        if arg == 22:
            return None
        raise self.fail(f"simple value {arg} is not accepted")


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode exactly one CBOR item that fills ``data``.

    Raises:
        FdoMessageError: the body is empty, oversized, malformed, breaks a limit, or has
            trailing bytes (code MESSAGE_BODY_ERROR).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FdoMessageError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise FdoMessageError(f"body of {len(data)} bytes exceeds the limit {limits.max_bytes}")
    decoder = _Decoder(data, limits)
    value = decoder.item(0)
    if decoder.pos != len(data):
        raise decoder.fail(f"{len(data) - decoder.pos} trailing bytes after the item")
    return value


def _head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise ValueError(f"integer {arg} does not fit in 64 bits")


def _encode(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"\xf6")
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif isinstance(value, int):
        out.append(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(_head(2, len(raw)))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(_head(4, len(value)))
        for element in value:
            _encode(element, out)
    elif isinstance(value, dict):
        pairs = sorted(((encode(k), v) for k, v in value.items()), key=lambda pair: pair[0])
        out.append(_head(5, len(pairs)))
        for key, element in pairs:
            out.append(key)
            _encode(element, out)
    elif isinstance(value, RawCbor):
        out.append(value.data)
    elif isinstance(value, CborTag):
        out.append(_head(6, value.tag))
        _encode(value.value, out)
    elif isinstance(value, float):
        if math.isnan(value):
            out.append(b"\xf9\x7e\x00")
        else:
            out.append(b"\xfb" + struct.pack(">d", value))
    elif hasattr(value, "to_cbor"):
        _encode(value.to_cbor(), out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def encode(value: Any) -> bytes:
    """Deterministic CBOR of ``value``; objects with ``to_cbor()`` encode as what it returns.

    Raises:
        TypeError: a value has no CBOR form (a programming error, not bad input).
        ValueError: an integer does not fit in 64 bits.
    """
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)
