"""The EFI secret table and the LAUNCH_SECRET packet (sev-protocol.md §7-8).

The table is what Linux ``efi_secret`` exposes under
``/sys/kernel/security/secrets/coco/<guid>``. The packet encrypts it with
AES-128-CTR under the TEK and MACs the **ciphertext** (plus the launch ``measure``)
under the TIK (AMD SEV API #55766 §6.6, LAUNCH_SECRET).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self
from uuid import UUID

from attestd.errors import AttestationFailed, ParseError, SecretTooLarge, Unsupported
from attestd.sev._binary import unpack_exact
from attestd.sev._crypto import aes_ctr as _aes_ctr
from attestd.sev._crypto import hmac_sha256
from attestd.sev.session import (
    DIGEST_SIZE,
    FirmwareVersion,
    LaunchMeasurement,
    TransportKeys,
    verify_measurement,
)

SECRET_TABLE_GUID = UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
LUKS_KEY_GUID = UUID("736869e5-84f0-4973-92ec-06879ce3da0b")
ATTESTD_PAYLOAD_GUID = UUID("dcfb7d9b-597b-4a66-98d6-ce0ed5fb8cde")
NULL_GUID = UUID(int=0)

#: The firmware's LAUNCH_SECRET scratch buffer (AMD-ASPFW, Genoa 1.55).
FIRMWARE_SECRET_MAX = 0x5000
ALIGNMENT = 16
IV_SIZE = 16
_CTX_SECRET = 0x01
_GUIDED = struct.Struct("<16sI")  # GUID (bytes_le) || u32 LE length, header and entries


def _pad(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True, slots=True)
class SecretEntry:
    """One secret: a GUID and its raw bytes."""

    guid: UUID
    data: bytes = field(repr=False)


def build_secret_table(entries: Sequence[SecretEntry], *, max_size: int | None = None) -> bytes:
    """Encode entries as an EFI secret table, zero-padded to a multiple of 16 bytes.

    Raises ``ParseError`` for a null or duplicate GUID and ``SecretTooLarge`` when the
    padded table exceeds ``max_size`` (the guest's secret area) or the firmware cap.
    """
    seen: set[UUID] = set()
    body = bytearray()
    for entry in entries:
        if entry.guid == NULL_GUID:
            raise ParseError("a secret entry cannot use the null GUID (Linux treats it as deleted)")
        if entry.guid in seen:
            raise ParseError(f"duplicate secret GUID {entry.guid}")
        seen.add(entry.guid)
        body += _GUIDED.pack(entry.guid.bytes_le, _GUIDED.size + len(entry.data)) + entry.data
    total = _GUIDED.size + len(body)
    table = _GUIDED.pack(SECRET_TABLE_GUID.bytes_le, total) + body
    table += bytes(_pad(total) - total)
    check_secret_size(len(table), max_size)
    return bytes(table)


def check_secret_size(size: int, area_size: int | None = None) -> None:
    """Refuse a LAUNCH_SECRET payload the firmware or the guest's area would reject."""
    if size == 0 or size % ALIGNMENT:
        raise ParseError(f"secret payload length {size} is not a non-zero multiple of 16")
    limit = FIRMWARE_SECRET_MAX if area_size is None else min(area_size, FIRMWARE_SECRET_MAX)
    if size > limit:
        raise SecretTooLarge(f"secret payload of {size} bytes exceeds the {limit}-byte limit")


def parse_secret_table(data: bytes) -> list[SecretEntry]:
    """Decode an EFI secret table; everything after the declared length must be zero."""
    if len(data) < _GUIDED.size:
        raise ParseError("secret table shorter than its header")
    guid, total = _GUIDED.unpack_from(data)
    if UUID(bytes_le=guid) != SECRET_TABLE_GUID:
        raise ParseError("secret table header GUID mismatch")
    if not _GUIDED.size <= total <= len(data):
        raise ParseError(f"secret table length {total} out of range")
    if any(data[total:]):
        raise ParseError("secret table padding is not zero")
    entries: list[SecretEntry] = []
    offset = _GUIDED.size
    while offset < total:
        if total - offset < _GUIDED.size:
            raise ParseError("truncated secret entry header")
        guid, length = _GUIDED.unpack_from(data, offset)
        if not _GUIDED.size <= length <= total - offset:
            raise ParseError(f"secret entry length {length} out of range")
        entries.append(
            SecretEntry(UUID(bytes_le=guid), data[offset + _GUIDED.size : offset + length])
        )
        offset += length
    return entries


@dataclass(frozen=True, slots=True)
class SecretHeader:
    """The 52-byte LAUNCH_SECRET packet header (sev-protocol.md §7.1)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<I16s32s")

    flags: int
    iv: bytes
    mac: bytes

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 52 bytes."""
        return cls(*unpack_exact(cls.STRUCT, buf, "secret header"))

    def pack(self) -> bytes:
        """Encode to 52 bytes."""
        return self.STRUCT.pack(self.flags, self.iv, self.mac)


@dataclass(frozen=True, slots=True)
class LaunchSecret:
    """A LAUNCH_SECRET packet: the 52-byte header and the encrypted table."""

    header: bytes
    ciphertext: bytes


def secret_mac(
    tik: bytes,
    flags: int,
    iv: bytes,
    ciphertext: bytes,
    measure: bytes,
    version: FirmwareVersion | None = None,
) -> bytes:
    """The packet MAC; the trailing ``measure`` is left out for API < 0.17."""
    if len(measure) != DIGEST_SIZE:
        raise ParseError("measure must be 32 bytes")
    length = struct.pack("<II", len(ciphertext), len(ciphertext))  # guest, then transport length
    msg = bytes((_CTX_SECRET,)) + struct.pack("<I", flags) + iv + length + ciphertext
    if version is None or version.has_measure_context:
        msg += measure
    return hmac_sha256(tik, msg)


def _seal_launch_secret(
    keys: TransportKeys,
    measure: bytes,
    table: bytes,
    *,
    version: FirmwareVersion | None = None,
    iv: bytes | None = None,
    area_size: int | None = None,
) -> LaunchSecret:
    """Encrypt and MAC a secret table for LAUNCH_SECRET (flags 0, fresh IV by default).

    Private: the one public way to a packet is :meth:`VerifiedLaunch.launch_secret`,
    and a :class:`VerifiedLaunch` comes only from :func:`verify_launch`. The core's
    known-answer tests and the benchmarks call this primitive directly.
    """
    check_secret_size(len(table), area_size)
    if iv is None:
        iv = os.urandom(IV_SIZE)
    if len(iv) != IV_SIZE:
        raise ParseError("secret IV must be 16 bytes")
    ciphertext = _aes_ctr(keys.tek, iv, table)
    mac = secret_mac(keys.tik, 0, iv, ciphertext, measure, version)
    return LaunchSecret(SecretHeader(0, iv, mac).pack(), ciphertext)


@dataclass(frozen=True, slots=True)
class VerifiedLaunch:
    """A launch whose measurement HMAC verified: the only door to a LAUNCH_SECRET packet.

    Made only by :func:`verify_launch` (like virtee's ``Session<Verified>``): it holds
    the transport keys, the proved ``measure``, the firmware version the HMAC was
    verified with and the launch digest it proved.
    """

    keys: TransportKeys = field(repr=False)
    measure: bytes
    version: FirmwareVersion
    launch_digest: bytes
    _proof: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._proof is not _VERIFIED:
            raise TypeError("a VerifiedLaunch is made only by verify_launch()")

    def launch_secret(
        self, table: bytes, *, iv: bytes | None = None, area_size: int | None = None
    ) -> LaunchSecret:
        """Encrypt and MAC ``table`` for LAUNCH_SECRET (flags 0, fresh IV by default)."""
        return _seal_launch_secret(
            self.keys, self.measure, table, version=self.version, iv=iv, area_size=area_size
        )


_VERIFIED = object()


def verify_launch(
    keys: TransportKeys,
    measurement: LaunchMeasurement,
    version: FirmwareVersion,
    policy: int,
    candidates: Sequence[bytes],
) -> VerifiedLaunch:
    """Verify the measurement HMAC (``verify_measurement``); the verified launch on success.

    Raises ``MeasurementMismatch`` when no candidate launch digest is proved.
    """
    digest = verify_measurement(keys.tik, measurement, version, policy, candidates)
    return VerifiedLaunch(keys, measurement.measure, version, digest, _VERIFIED)


def open_launch_secret(
    keys: TransportKeys,
    measure: bytes,
    secret: LaunchSecret,
    *,
    version: FirmwareVersion | None = None,
) -> bytes:
    """Firmware side: verify the packet MAC and return the decrypted table.

    Raises ``ParseError`` (bad header or length), ``Unsupported`` (non-zero flags,
    e.g. COMPRESSED) and ``AttestationFailed`` (MAC mismatch).
    """
    header = SecretHeader.unpack(secret.header)
    if header.flags != 0:
        raise Unsupported(f"secret packet flags 0x{header.flags:x} are not supported")
    check_secret_size(len(secret.ciphertext))
    expected = secret_mac(keys.tik, header.flags, header.iv, secret.ciphertext, measure, version)
    if not hmac.compare_digest(expected, header.mac):
        raise AttestationFailed("secret packet MAC does not verify")
    return _aes_ctr(keys.tek, header.iv, secret.ciphertext)
