"""Small helpers for AMD's little-endian binary layouts (pure, no I/O).

Every helper raises :class:`attestd.errors.ParseError` on bad input, so parsers
built from them raise nothing else.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from enum import IntEnum
from typing import Any, TypeVar

from attestd.errors import ParseError

E = TypeVar("E", bound=IntEnum)

_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")


def le_int(data: bytes) -> int:
    """Decode a little-endian unsigned integer (an AMD "LE bignum")."""
    return int.from_bytes(data, "little")


def le_bytes(value: int, size: int) -> bytes:
    """Encode ``value`` as a little-endian unsigned integer zero-padded to ``size`` bytes."""
    if value < 0 or value.bit_length() > 8 * size:
        raise ParseError(f"integer does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def unpack_exact(layout: struct.Struct, data: bytes, what: str) -> tuple[Any, ...]:
    """Unpack ``data`` with ``layout``, requiring exactly ``layout.size`` bytes."""
    if len(data) != layout.size:
        raise ParseError(f"{what}: expected {layout.size} bytes, got {len(data)}")
    return layout.unpack(data)


def require_zero(data: bytes, what: str) -> None:
    """Raise ``ParseError`` unless the reserved field ``data`` is all zero."""
    if any(data):
        raise ParseError(f"{what}: reserved bytes must be zero")


def enum_value(enum: type[E], value: int, what: str) -> E:
    """Return ``enum(value)``, raising ``ParseError`` for unknown values."""
    try:
        return enum(value)
    except ValueError:
        raise ParseError(f"{what}: unknown value {value:#x}") from None


def raw_or_base64(data: bytes) -> bytes:
    """Return ``data`` decoded if it is base64 text (as libvirt and QEMU export certs), else as is.

    Binary SEV structures always contain bytes outside the base64 alphabet
    (at least one NUL), so the two forms cannot be confused.
    """
    if data and _BASE64_TEXT.fullmatch(data) and data.strip():
        try:
            return base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error as exc:
            raise ParseError(f"invalid base64: {exc}") from None
    return data
