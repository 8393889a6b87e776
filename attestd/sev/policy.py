"""SEV guest policy (AMD SEV API #55766 §3, "Guest Policy"; sev-protocol.md §5.5).

The policy is a u32: flag bits 0-5, reserved bits 6-15 (must be zero), the minimum
firmware API major in bits 16-23 and the minimum API minor in bits 24-31. The MACs
always cover the caller's exact u32, so ``to_u32(from_u32(x)) == x`` for every
valid ``x``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import Self

from attestd.errors import ParseError

_RESERVED_MASK = 0x0000_FFC0
_U32 = struct.Struct("<I")


class PolicyFlags(IntFlag):
    """Policy flag bits 0-5."""

    NODBG = 0x01
    NOKS = 0x02
    ES = 0x04
    NOSEND = 0x08
    DOMAIN = 0x10
    SEV = 0x20


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """A decoded guest policy: flags plus the minimum firmware API version."""

    flags: PolicyFlags
    api_major: int = 0
    api_minor: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.api_major <= 0xFF or not 0 <= self.api_minor <= 0xFF:
            raise ParseError("policy API version fields must fit in one byte")
        if int(self.flags) & ~0x3F:
            raise ParseError("policy flags outside bits 0-5")

    @classmethod
    def from_u32(cls, value: int) -> Self:
        """Decode a policy word; reserved bits 6-15 must be zero."""
        if not 0 <= value <= 0xFFFF_FFFF:
            raise ParseError("policy is not a u32")
        if value & _RESERVED_MASK:
            raise ParseError(f"policy 0x{value:08x} sets reserved bits 6-15")
        return cls(PolicyFlags(value & 0x3F), (value >> 16) & 0xFF, (value >> 24) & 0xFF)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode the 4-byte little-endian form."""
        if len(data) != _U32.size:
            raise ParseError("policy must be 4 bytes")
        return cls.from_u32(_U32.unpack(data)[0])

    def to_u32(self) -> int:
        """Encode as the u32 policy word."""
        return int(self.flags) | self.api_major << 16 | self.api_minor << 24

    def to_bytes(self) -> bytes:
        """Encode as 4 little-endian bytes (what the MACs cover)."""
        return _U32.pack(self.to_u32())

    @property
    def sev_es(self) -> bool:
        """True when the policy requires SEV-ES."""
        return PolicyFlags.ES in self.flags


def policy_bytes(policy: int) -> bytes:
    """The raw u32 LE encoding of a policy word, validated (reserved bits zero)."""
    return GuestPolicy.from_u32(policy).to_bytes()
