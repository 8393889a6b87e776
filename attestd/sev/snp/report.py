"""The SEV-SNP attestation report, versions 2 to 5 (SEV-SNP ABI spec 1.58, §7.3, table 23).

0x4A0 bytes, little-endian. The signed region is ``[0x000, 0x2A0)``; the signature
(ECDSA P-384 with SHA-384, r and s little-endian in 72 bytes each) follows. Every
reserved range must be zero, as go-sev-guest requires. The TCB_VERSION layout
follows the CPU family (Turin adds FMC), not the report version. Pure: bytes in,
objects out.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import IntEnum, IntFlag, StrEnum
from typing import ClassVar, Self

from attestd.errors import ParseError
from attestd.sev._binary import enum_value, unpack_exact

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_SIZE = 0x200
COMPONENT_SIZE = 72
#: The Azure HCL report: a 0x20-byte header ("HCLA"), then the SNP report.
HCL_MAGIC = b"HCLA"
HCL_REPORT_OFFSET = 0x20
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
MIN_VERSION, MAX_VERSION = 2, 5

_HEX_TEXT = re.compile(rb"[0-9A-Fa-f\s]+")


class Generation(StrEnum):
    """The EPYC product line that signed a report (names as the pinned anchors)."""

    MILAN = "milan"
    GENOA = "genoa"
    TURIN = "turin"

    @property
    def has_fmc(self) -> bool:
        """Turin-family TCB layout (byte 0 FMC)."""
        return self is Generation.TURIN

    @property
    def product(self) -> str:
        """The AMD KDS product name (``Milan``, ``Genoa``, ``Turin``)."""
        return self.value.capitalize()

    @classmethod
    def from_product_name(cls, name: str) -> Generation | None:
        """A VCEK productName (``Milan-B0``, ``Genoa``, ``Turin``...) to its generation."""
        head = name.split("-", 1)[0].lower()
        try:
            return cls(head)
        except ValueError:
            return None


def generation_from_cpuid(family: int, model: int) -> Generation | None:
    """The generation from a v3+ report's CPUID family and model (snp.md §1)."""
    if family == 0x19:
        if model <= 0x0F:
            return Generation.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Generation.GENOA
    if family == 0x1A and model <= 0x11:
        return Generation.TURIN
    return None


# TCB_VERSION byte position of each component, per layout.
_MILAN_TCB = {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}
_TURIN_TCB = {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7}
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A decoded TCB_VERSION. ``fmc`` is None on Milan/Genoa; ``raw`` keeps every byte.

    Compare component by component (:meth:`below`), never as integers.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None
    raw: int = 0

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> Self:
        """Decode a u64 with the Milan/Genoa or the Turin layout."""
        data = raw.to_bytes(8, "little")
        layout = _TURIN_TCB if turin else _MILAN_TCB
        parts = {name: data[pos] for name, pos in layout.items()}
        return cls(
            bootloader=parts["bootloader"],
            tee=parts["tee"],
            snp=parts["snp"],
            microcode=parts["microcode"],
            fmc=parts.get("fmc"),
            raw=raw,
        )

    @classmethod
    def build(
        cls, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int | None = None
    ) -> Self:
        """Encode components (``fmc`` given means the Turin layout); reserved bytes zero."""
        layout = _MILAN_TCB if fmc is None else _TURIN_TCB
        values = {"bootloader": bootloader, "tee": tee, "snp": snp, "microcode": microcode}
        if fmc is not None:
            values["fmc"] = fmc
        data = bytearray(8)
        for name, value in values.items():
            if not 0 <= value <= 0xFF:
                raise ValueError(f"TCB component {name} must be 0..255")
            data[layout[name]] = value
        return cls(bootloader, tee, snp, microcode, fmc, int.from_bytes(data, "little"))

    def components(self) -> dict[str, int]:
        """The named components (``fmc`` only on Turin)."""
        parts = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts

    def below(self, minimum: TcbVersion) -> list[str]:
        """The components of this TCB lower than ``minimum``'s (``fmc`` if both have it)."""
        mine = self.components()
        return [name for name, value in minimum.components().items() if mine.get(name, 0) < value]

    def to_json(self) -> dict[str, int]:
        """The components as a JSON object."""
        return self.components()


class PolicyFlags(IntFlag):
    """Guest policy bits above the ABI version (SEV-SNP ABI §4.3, snp.md §3)."""

    SMT = 1 << 16
    RESERVED_1 = 1 << 17
    MIGRATE_MA = 1 << 18
    DEBUG = 1 << 19
    SINGLE_SOCKET = 1 << 20
    CXL_ALLOW = 1 << 21
    MEM_AES_256_XTS = 1 << 22
    RAPL_DIS = 1 << 23
    CIPHERTEXT_HIDING = 1 << 24
    PAGE_SWAP_DISABLE = 1 << 25


#: Policy bits that *allow* something: the report may not allow more than the owner.
POLICY_ALLOWS = (PolicyFlags.SMT, PolicyFlags.MIGRATE_MA, PolicyFlags.DEBUG, PolicyFlags.CXL_ALLOW)
#: Policy bits that *require* something: the report must require at least the owner's.
POLICY_REQUIRES = (
    PolicyFlags.SINGLE_SOCKET,
    PolicyFlags.MEM_AES_256_XTS,
    PolicyFlags.RAPL_DIS,
    PolicyFlags.CIPHERTEXT_HIDING,
    PolicyFlags.PAGE_SWAP_DISABLE,
)
_POLICY_KNOWN = 0x3FFFFFF


@dataclass(frozen=True, slots=True)
class SnpPolicy:
    """The 64-bit SNP guest policy: ABI minimum version and flags."""

    abi_major: int
    abi_minor: int
    flags: PolicyFlags
    raw: int

    @classmethod
    def from_u64(cls, raw: int) -> Self:
        """Decode; ``ParseError`` if it does not fit in 64 bits."""
        if not 0 <= raw < 1 << 64:
            raise ParseError("SNP guest policy must be a 64-bit value")
        return cls((raw >> 8) & 0xFF, raw & 0xFF, PolicyFlags(raw & _POLICY_KNOWN & ~0xFFFF), raw)

    @property
    def unknown_bits(self) -> int:
        """Bits above 25 (reserved, must be zero)."""
        return self.raw & ~_POLICY_KNOWN

    def to_json(self) -> dict[str, object]:
        """The policy decoded for display."""
        head: dict[str, object] = {
            "value": f"{self.raw:#x}",
            "abi-major": self.abi_major,
            "abi-minor": self.abi_minor,
        }
        return head | _flags_json(self.raw, _POLICY_NAMES)


_POLICY_NAMES = {
    "smt": PolicyFlags.SMT,
    "reserved-bit17": PolicyFlags.RESERVED_1,
    "migrate-ma": PolicyFlags.MIGRATE_MA,
    "debug": PolicyFlags.DEBUG,
    "single-socket": PolicyFlags.SINGLE_SOCKET,
    "cxl-allow": PolicyFlags.CXL_ALLOW,
    "mem-aes-256-xts": PolicyFlags.MEM_AES_256_XTS,
    "rapl-disable": PolicyFlags.RAPL_DIS,
    "ciphertext-hiding": PolicyFlags.CIPHERTEXT_HIDING,
    "page-swap-disable": PolicyFlags.PAGE_SWAP_DISABLE,
}


def _flags_json(raw: int, names: Mapping[str, int]) -> dict[str, object]:
    return {name: bool(raw & flag) for name, flag in names.items()}


class PlatformInfo(IntFlag):
    """PLATFORM_INFO bits (bit 6 is set on real Turin and undocumented: kept, not refused)."""

    SMT_EN = 1 << 0
    TSME_EN = 1 << 1
    ECC_EN = 1 << 2
    RAPL_DIS = 1 << 3
    CIPHERTEXT_HIDING_EN = 1 << 4
    ALIAS_CHECK_COMPLETE = 1 << 5
    TIO_EN = 1 << 7


_PLATFORM_INFO_NAMES = {
    "smt-enabled": PlatformInfo.SMT_EN,
    "tsme-enabled": PlatformInfo.TSME_EN,
    "ecc-enabled": PlatformInfo.ECC_EN,
    "rapl-disabled": PlatformInfo.RAPL_DIS,
    "ciphertext-hiding-enabled": PlatformInfo.CIPHERTEXT_HIDING_EN,
    "alias-check-complete": PlatformInfo.ALIAS_CHECK_COMPLETE,
    "tio-enabled": PlatformInfo.TIO_EN,
}


def platform_info_json(raw: int) -> dict[str, object]:
    """PLATFORM_INFO decoded for display."""
    return {"value": f"{raw:#x}"} | _flags_json(raw, _PLATFORM_INFO_NAMES)


class SigningKey(IntEnum):
    """KEY_INFO bits 4:2: which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """KEY_INFO: AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (bits 4:2)."""

    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey

    @classmethod
    def from_u32(cls, raw: int) -> Self:
        if raw >> 5:
            raise ParseError("attestation report: KEY_INFO reserved bits must be zero")
        key = enum_value(SigningKey, (raw >> 2) & 0x7, "attestation report SIGNING_KEY")
        return cls(bool(raw & 1), bool(raw & 2), key)

    def to_u32(self) -> int:
        return int(self.author_key_en) | int(self.mask_chip_key) << 1 | self.signing_key << 2


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """The SNP firmware version in a report (CURRENT or COMMITTED): major.minor, build."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor} build {self.build}"

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.build)


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """ATTESTATION_REPORT (SEV-SNP ABI spec 1.58, table 23), every field by its spec name.

    Reserved ranges are named by offset and must be zero; so must the mitigation
    vectors below version 5 and the CPUID bytes in version 2.
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct(
        "<IIQ16s16sIIQQI4s64s48s32s48s48s32s32sQBBB21s64sQBBBBBBBBQQQ152s72s72s368s"
    )

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    key_info: KeyInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: bytes
    signature_s: bytes

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        """Decode exactly 0x4A0 bytes; ``ParseError`` for bad versions or non-zero reserved."""
        (
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            signature_algo,
            current_tcb,
            platform_info,
            key_info,
            reserved_04c,
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb,
            cpuid_fam_id,
            cpuid_mod_id,
            cpuid_step,
            reserved_18b,
            chip_id,
            committed_tcb,
            current_build,
            current_minor,
            current_major,
            reserved_1eb,
            committed_build,
            committed_minor,
            committed_major,
            reserved_1ef,
            launch_tcb,
            launch_mit_vector,
            current_mit_vector,
            reserved_208,
            signature_r,
            signature_s,
            reserved_sig_090,
        ) = unpack_exact(cls.LAYOUT, data, "attestation report")
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise ParseError(f"attestation report: unsupported version {version}")
        what = "attestation report"
        for name, value in (
            ("0x04C", reserved_04c),
            ("0x18B", reserved_18b),
            ("0x1EB", bytes([reserved_1eb])),
            ("0x1EF", bytes([reserved_1ef])),
            ("0x208", reserved_208),
            ("signature 0x090", reserved_sig_090),
        ):
            if any(value):
                raise ParseError(f"{what}: reserved bytes at {name} must be zero")
        if version < 3 and (cpuid_fam_id or cpuid_mod_id or cpuid_step):
            raise ParseError(f"{what}: version 2 has no CPUID bytes (reserved, must be zero)")
        if version < 5 and (launch_mit_vector or current_mit_vector):
            raise ParseError(f"{what}: mitigation vectors are reserved before version 5")
        return cls(
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            signature_algo,
            current_tcb,
            platform_info,
            KeyInfo.from_u32(key_info),
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb,
            cpuid_fam_id,
            cpuid_mod_id,
            cpuid_step,
            chip_id,
            committed_tcb,
            current_build,
            current_minor,
            current_major,
            committed_build,
            committed_minor,
            committed_major,
            launch_tcb,
            launch_mit_vector,
            current_mit_vector,
            signature_r,
            signature_s,
        )

    def pack(self) -> bytes:
        """Encode to 0x4A0 bytes (``pack(unpack(b)) == b`` for every valid report)."""
        return self.LAYOUT.pack(
            self.version,
            self.guest_svn,
            self.policy,
            self.family_id,
            self.image_id,
            self.vmpl,
            self.signature_algo,
            self.current_tcb,
            self.platform_info,
            self.key_info.to_u32(),
            bytes(4),
            self.report_data,
            self.measurement,
            self.host_data,
            self.id_key_digest,
            self.author_key_digest,
            self.report_id,
            self.report_id_ma,
            self.reported_tcb,
            self.cpuid_fam_id,
            self.cpuid_mod_id,
            self.cpuid_step,
            bytes(21),
            self.chip_id,
            self.committed_tcb,
            self.current_build,
            self.current_minor,
            self.current_major,
            0,
            self.committed_build,
            self.committed_minor,
            self.committed_major,
            0,
            self.launch_tcb,
            self.launch_mit_vector,
            self.current_mit_vector,
            bytes(152),
            self.signature_r,
            self.signature_s,
            bytes(368),
        )

    # ------------------------------------------------------------------ decoded views

    @property
    def cpuid_generation(self) -> Generation | None:
        """The generation from CPUID (version 3 and later), else None."""
        if self.version < 3:
            return None
        return generation_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb(self, raw: int, generation: Generation) -> TcbVersion:
        """Decode one of the report's TCB fields for ``generation``'s layout."""
        return TcbVersion.decode(raw, turin=generation.has_fmc)

    @property
    def guest_policy(self) -> SnpPolicy:
        return SnpPolicy.from_u64(self.policy)

    @property
    def current_version(self) -> FirmwareVersion:
        return FirmwareVersion(self.current_major, self.current_minor, self.current_build)

    @property
    def committed_version(self) -> FirmwareVersion:
        return FirmwareVersion(self.committed_major, self.committed_minor, self.committed_build)

    def hw_id(self, generation: Generation) -> bytes:
        """The part of CHIP_ID that is the KDS hwID (Turin: the first 8 bytes)."""
        return self.chip_id[:8] if generation.has_fmc else self.chip_id


assert AttestationReport.LAYOUT.size == REPORT_SIZE
assert len(fields(AttestationReport)) == 34


def signed_bytes(raw: bytes) -> bytes:
    """The signed region of a raw report: ``[0x000, 0x2A0)`` of the bytes received."""
    if len(raw) != REPORT_SIZE:
        raise ParseError(f"attestation report: expected {REPORT_SIZE} bytes, got {len(raw)}")
    return raw[:SIGNED_SIZE]


def extract_report(data: bytes) -> bytes:
    """The raw 0x4A0 report bytes from a binary report, hex text or an Azure HCL report.

    Binary reports are never valid hex text (the version field holds NUL bytes), so
    the three forms cannot be confused.
    """
    if len(data) != REPORT_SIZE and _HEX_TEXT.fullmatch(data):
        try:
            data = binascii.unhexlify(b"".join(data.split()))
        except (binascii.Error, ValueError):
            raise ParseError("attestation report: malformed hex text") from None
    if data[:4] == HCL_MAGIC and len(data) >= HCL_REPORT_OFFSET + REPORT_SIZE:
        return data[HCL_REPORT_OFFSET : HCL_REPORT_OFFSET + REPORT_SIZE]
    if len(data) != REPORT_SIZE:
        raise ParseError(
            f"attestation report: expected {REPORT_SIZE} bytes (binary, hex text or an Azure "
            f"HCL report), got {len(data)}"
        )
    return data
