"""A minimal DER reader and writer (X.690) for what the SNP code needs without ``cryptography``.

Two uses: the fallback certificate parser (``cryptography`` refuses, or will refuse,
certificates with serial number 0, which every VCEK and VLEK has), and the values of
AMD's VCEK extensions, which ``cryptography`` hands over as raw DER. Definite lengths
only (DER); every error is a :class:`attestd.errors.ParseError`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from attestd.errors import ParseError

SEQUENCE = 0x30
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
OID = 0x06
BOOLEAN = 0x01
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
#: Context-specific constructed tags of a TBSCertificate.
EXPLICIT_0 = 0xA0
EXPLICIT_3 = 0xA3

_MAX_LENGTH_OCTETS = 4


@dataclass(frozen=True, slots=True)
class Tlv:
    """One DER element: its tag, its contents and the exact bytes it was read from."""

    tag: int
    value: bytes
    raw: bytes


def read_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """Read one element at ``offset``; return it and the offset just after it."""
    if offset + 2 > len(data):
        raise ParseError("DER: truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ParseError("DER: multi-byte tags are not used here")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > _MAX_LENGTH_OCTETS:
            raise ParseError("DER: indefinite or oversized length")
        if pos + count > len(data):
            raise ParseError("DER: truncated length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ParseError("DER: length is not minimally encoded")
        pos += count
    end = pos + length
    if end > len(data):
        raise ParseError("DER: element runs past the end of its container")
    return Tlv(tag, data[pos:end], data[offset:end]), end


def read_one(data: bytes, tag: int, what: str) -> Tlv:
    """Decode ``data`` as exactly one element with ``tag``."""
    tlv, end = read_tlv(data)
    if end != len(data):
        raise ParseError(f"{what}: trailing bytes after the DER element")
    if tlv.tag != tag:
        raise ParseError(f"{what}: expected DER tag {tag:#04x}, got {tlv.tag:#04x}")
    return tlv


def children(value: bytes) -> list[Tlv]:
    """The elements inside a constructed element's contents."""
    items = []
    offset = 0
    while offset < len(value):
        tlv, offset = read_tlv(value, offset)
        items.append(tlv)
    return items


def decode_integer(tlv: Tlv, what: str) -> int:
    """A DER INTEGER (two's complement, big-endian)."""
    if tlv.tag != INTEGER or not tlv.value:
        raise ParseError(f"{what}: not a DER INTEGER")
    return int.from_bytes(tlv.value, "big", signed=True)


def decode_oid(tlv: Tlv) -> str:
    """A DER OBJECT IDENTIFIER as dotted text."""
    if tlv.tag != OID or not tlv.value or tlv.value[-1] & 0x80:
        raise ParseError("DER: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    for byte in tlv.value:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


_UTC_TIME = re.compile(rb"[0-9]{12}Z")
_GENERALIZED_TIME = re.compile(rb"[0-9]{14}Z")


def decode_time(tlv: Tlv, what: str) -> datetime.datetime:
    """An X.509 Time (RFC 5280 §4.1.2.5): UTCTime ``YYMMDDHHMMSSZ`` or GeneralizedTime
    ``YYYYMMDDHHMMSSZ``, as an aware UTC datetime."""
    if tlv.tag == UTC_TIME and _UTC_TIME.fullmatch(tlv.value):
        year = int(tlv.value[:2])
        text = str(year + (1900 if year >= 50 else 2000)) + tlv.value[2:12].decode("ascii")
    elif tlv.tag == GENERALIZED_TIME and _GENERALIZED_TIME.fullmatch(tlv.value):
        text = tlv.value[:14].decode("ascii")
    else:
        raise ParseError(f"{what}: not a DER UTCTime or GeneralizedTime")
    try:
        return datetime.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise ParseError(f"{what}: invalid date") from None


def encode_length(length: int) -> bytes:
    """The DER length octets for ``length``."""
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, value: bytes) -> bytes:
    """One DER element."""
    return bytes([tag]) + encode_length(len(value)) + value


def encode_integer(value: int) -> bytes:
    """A DER INTEGER (minimal two's complement)."""
    size = max(1, (value.bit_length() + 8) // 8)
    return encode(INTEGER, value.to_bytes(size, "big", signed=True))
