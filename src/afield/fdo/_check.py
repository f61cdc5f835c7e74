"""Strict shape checks for decoded CBOR: each returns the value with a precise type or raises
FdoMessageError naming the field (``where``) and what would be accepted."""

from __future__ import annotations

from typing import Any

from afield.fdo._errors import FdoMessageError
from afield.fdo.cbor import CborTag, Limits, decode

__all__ = [
    "array",
    "boolean",
    "bstr",
    "cbor_in_bstr",
    "integer",
    "mapping",
    "tagged",
    "tstr",
    "uint",
]


def _name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def array(value: Any, where: str, length: int | None = None, *, minimum: int = 0) -> list[Any]:
    """A CBOR array, of exactly ``length`` elements when given, else at least ``minimum``."""
    if not isinstance(value, list):
        raise FdoMessageError(f"expected an array, got {_name(value)}", where=where)
    if length is not None and len(value) != length:
        raise FdoMessageError(
            f"expected an array of {length} elements, got {len(value)}", where=where
        )
    if len(value) < minimum:
        raise FdoMessageError(
            f"expected at least {minimum} elements, got {len(value)}", where=where
        )
    return value


def mapping(value: Any, where: str) -> dict[Any, Any]:
    """A CBOR map."""
    if not isinstance(value, dict):
        raise FdoMessageError(f"expected a map, got {_name(value)}", where=where)
    return value


def integer(value: Any, where: str) -> int:
    """A CBOR integer (bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FdoMessageError(f"expected an integer, got {_name(value)}", where=where)
    return value


def uint(value: Any, where: str, bits: int = 64) -> int:
    """An unsigned integer that fits in ``bits`` bits."""
    number = integer(value, where)
    if number < 0 or number >= 1 << bits:
        raise FdoMessageError(f"expected an unsigned {bits}-bit integer, got {number}", where=where)
    return number


def boolean(value: Any, where: str) -> bool:
    """A CBOR true or false."""
    if not isinstance(value, bool):
        raise FdoMessageError(f"expected true or false, got {_name(value)}", where=where)
    return value


def bstr(value: Any, where: str, size: int | None = None) -> bytes:
    """A byte string, of exactly ``size`` bytes when given."""
    if not isinstance(value, bytes):
        raise FdoMessageError(f"expected a byte string, got {_name(value)}", where=where)
    if size is not None and len(value) != size:
        raise FdoMessageError(f"expected {size} bytes, got {len(value)}", where=where)
    return value


def tstr(value: Any, where: str) -> str:
    """A text string."""
    if not isinstance(value, str):
        raise FdoMessageError(f"expected a text string, got {_name(value)}", where=where)
    return value


def tagged(value: Any, where: str, tag: int, *, required: bool = True) -> Any:
    """The content of CBOR tag ``tag``; an untagged value passes when ``required`` is False."""
    if isinstance(value, CborTag):
        if value.tag != tag:
            raise FdoMessageError(f"expected tag {tag}, got tag {value.tag}", where=where)
        return value.value
    if required:
        raise FdoMessageError(f"expected tag {tag}, got {_name(value)}", where=where)
    return value


def cbor_in_bstr(value: Any, where: str, limits: Limits | None = None) -> Any:
    """Decode a ``bstr .cbor T`` field: a byte string holding one CBOR item."""
    raw = bstr(value, where)
    try:
        return decode(raw, limits or Limits())
    except FdoMessageError as e:
        raise FdoMessageError(e.message, where=where) from e
