"""LAUNCH_MEASURE (AMD SEV API #55766 §6.5; sev-protocol.md §6).

``measure = HMAC-SHA256(TIK, 0x04 || api_major || api_minor || build_id || policy
|| launch_digest || mnonce)`` for firmware API >= 0.17; older firmware leaves out the
first four bytes. Verification compares every candidate in constant time.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from attestd.errors import MeasurementMismatch, ParseError
from attestd.sev._crypto import hmac_sha256
from attestd.sev.policy import policy_bytes

DIGEST_SIZE = 32
MNONCE_SIZE = 16
_CTX_MEASURE = 0x04
_CONTEXT_API = (0, 17)


@dataclass(frozen=True, slots=True, order=True)
class FirmwareVersion:
    """The running firmware's API version and build (from the host, bound by the MAC)."""

    api_major: int
    api_minor: int
    build_id: int = 0

    def __post_init__(self) -> None:
        for value in (self.api_major, self.api_minor, self.build_id):
            if not 0 <= value <= 0xFF:
                raise ParseError("firmware version fields must fit in one byte")

    @property
    def has_measure_context(self) -> bool:
        """True for API >= 0.17, where the MACs cover the context prefix / the measure."""
        return (self.api_major, self.api_minor) >= _CONTEXT_API

    def __str__(self) -> str:
        return f"{self.api_major}.{self.api_minor} build {self.build_id}"


@dataclass(frozen=True, slots=True)
class LaunchMeasurement:
    """The 48-byte LAUNCH_MEASURE output: ``measure`` (32) || ``mnonce`` (16)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<32s16s")

    measure: bytes
    mnonce: bytes

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 48 bytes."""
        if len(buf) != cls.STRUCT.size:
            raise ParseError(f"launch measurement must be {cls.STRUCT.size} bytes, got {len(buf)}")
        return cls(*cls.STRUCT.unpack(buf))

    def pack(self) -> bytes:
        """Encode to 48 bytes."""
        return self.STRUCT.pack(self.measure, self.mnonce)


def compute_measure(
    tik: bytes, version: FirmwareVersion, policy: int, launch_digest: bytes, mnonce: bytes
) -> bytes:
    """The 32-byte ``measure`` the firmware reports for these inputs."""
    if len(launch_digest) != DIGEST_SIZE:
        raise ParseError("launch digest must be 32 bytes")
    if len(mnonce) != MNONCE_SIZE:
        raise ParseError("mnonce must be 16 bytes")
    msg = policy_bytes(policy) + launch_digest + mnonce
    if version.has_measure_context:
        msg = bytes((_CTX_MEASURE, version.api_major, version.api_minor, version.build_id)) + msg
    return hmac_sha256(tik, msg)


def verify_measurement(
    tik: bytes,
    measurement: LaunchMeasurement,
    version: FirmwareVersion,
    policy: int,
    candidates: Sequence[bytes],
) -> bytes:
    """Return the accepted launch digest that ``measurement`` proves.

    Every candidate is checked with ``hmac.compare_digest`` and the loop never
    exits early, so timing reveals neither the match nor its position. Raises
    ``MeasurementMismatch`` when none matches (without the computed values).
    """
    if len(measurement.measure) != DIGEST_SIZE or len(measurement.mnonce) != MNONCE_SIZE:
        raise ParseError("launch measurement must be 32 + 16 bytes")
    found: bytes | None = None
    for digest in candidates:
        expected = compute_measure(tik, version, policy, digest, measurement.mnonce)
        if hmac.compare_digest(expected, measurement.measure) and found is None:
            found = digest
    if found is None:
        raise MeasurementMismatch(
            "launch measurement does not match any accepted launch digest",
            reasons=[f"{len(candidates)} candidate digest(s) checked, firmware {version}"],
        )
    return found
