"""SEV-SNP launch digest: the SHA-384 PAGE_INFO chain (SEV-SNP ABI spec §8.17.2).

Each page QEMU adds with SNP_LAUNCH_UPDATE extends the digest:
``LD = SHA-384(PAGE_INFO(LD, contents, type, gpa))``. What QEMU adds for OVMF is
the firmware image (normal pages ending at 4 GiB), then the sections the OVMF
SEV metadata lists (zero, secrets, CPUID and kernel-hashes pages), then one
VMSA page per vCPU.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from attestd.errors import ParseError, Unsupported
from attestd.sev._binary import enum_value, unpack_exact
from attestd.sev.measure.ovmf import Ovmf, SectionType
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VmsaFlavour, vmsa_pages

PAGE_SIZE = 4096
LD_SIZE = 48
FOUR_GIB = 1 << 32

#: VMSA pages are recorded with GPA -1, page-aligned and cut to 52 bits.
VMSA_GPA = 0xFFFFFFFFF000


class PageType(IntEnum):
    """SNP_LAUNCH_UPDATE page types (SEV-SNP ABI spec, table 67)."""

    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


@dataclass(frozen=True, slots=True)
class PageInfo:
    """PAGE_INFO (SEV-SNP ABI spec §8.17.2, table 67); its SHA-384 is the next digest."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<48s48sHBBBBBBQ")
    LENGTH: ClassVar[int] = 0x70

    digest_cur: bytes
    contents: bytes
    page_type: PageType
    gpa: int
    imi_page: int = 0
    vmpl3_perms: int = 0
    vmpl2_perms: int = 0
    vmpl1_perms: int = 0

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 0x70 bytes (length, page type and reserved bits are checked)."""
        fields = unpack_exact(cls.STRUCT, buf, "PAGE_INFO")
        cur, contents, length, raw_type, imi, v3, v2, v1, reserved, gpa = fields
        if length != cls.LENGTH:
            raise ParseError(f"PAGE_INFO length {length:#x} is not {cls.LENGTH:#x}")
        if imi > 1 or reserved != 0:
            raise ParseError("PAGE_INFO reserved bits are not zero")
        page_type = enum_value(PageType, raw_type, "PAGE_INFO page type")
        return cls(cur, contents, page_type, gpa, imi, v3, v2, v1)

    def pack(self) -> bytes:
        """Encode to the 0x70-byte layout."""
        return self.STRUCT.pack(
            self.digest_cur,
            self.contents,
            self.LENGTH,
            self.page_type,
            self.imi_page,
            self.vmpl3_perms,
            self.vmpl2_perms,
            self.vmpl1_perms,
            0,
            self.gpa,
        )


assert PageInfo.STRUCT.size == PageInfo.LENGTH


class SnpLaunchDigest:
    """Accumulates the launch digest page by page, as the firmware does."""

    def __init__(self, seed: bytes = bytes(LD_SIZE)) -> None:
        if len(seed) != LD_SIZE:
            raise ParseError(f"SNP launch digest seed must be {LD_SIZE} bytes")
        self.digest = seed

    def _extend(self, page_type: PageType, gpa: int, contents: bytes) -> None:
        info = PageInfo(self.digest, contents, page_type, gpa)
        self.digest = hashlib.sha384(info.pack()).digest()

    @staticmethod
    def _pages(gpa: int, size: int) -> range:
        if gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise ParseError(f"SNP pages at {gpa:#x} (+{size:#x}) are not 4 KiB aligned")
        return range(gpa, gpa + size, PAGE_SIZE)

    def normal_pages(self, gpa: int, data: bytes) -> None:
        """Measured pages with contents."""
        for page_gpa in self._pages(gpa, len(data)):
            offset = page_gpa - gpa
            page = data[offset : offset + PAGE_SIZE]
            self._extend(PageType.NORMAL, page_gpa, hashlib.sha384(page).digest())

    def zero_pages(self, gpa: int, size: int) -> None:
        """Pages the firmware zeroes."""
        for page_gpa in self._pages(gpa, size):
            self._extend(PageType.ZERO, page_gpa, bytes(LD_SIZE))

    def secrets_page(self, gpa: int) -> None:
        """The SNP secrets page (filled by the firmware, contents not measured)."""
        self._extend(PageType.SECRETS, gpa, bytes(LD_SIZE))

    def cpuid_page(self, gpa: int) -> None:
        """The CPUID page (checked by the firmware, contents not measured)."""
        self._extend(PageType.CPUID, gpa, bytes(LD_SIZE))

    def vmsa_page(self, page: bytes) -> None:
        """One vCPU's VMSA."""
        if len(page) != PAGE_SIZE:
            raise ParseError("a VMSA page is 4096 bytes")
        self._extend(PageType.VMSA, VMSA_GPA, hashlib.sha384(page).digest())


def _hashes_page(ovmf: Ovmf, hashes: KernelHashes, size: int) -> bytes:
    area = ovmf.hashes_table_area
    if area is None or size != PAGE_SIZE:
        raise Unsupported("this firmware's SNP kernel hashes section is unusable")
    table = hashes.table()
    offset = area.base % PAGE_SIZE
    if offset + len(table) > PAGE_SIZE:
        raise ParseError("the kernel hashes table crosses a page boundary")
    return bytes(offset) + table + bytes(PAGE_SIZE - offset - len(table))


def snp_launch_digest(
    ovmf: Ovmf,
    *,
    hashes: KernelHashes | None,
    vcpus: int,
    vcpu_sig: int,
    guest_features: int,
    flavour: VmsaFlavour = VmsaFlavour.CURRENT,
) -> bytes:
    """The 48-byte SEV-SNP launch digest for QEMU + OVMF (no SVSM)."""
    if not ovmf.metadata:
        raise Unsupported("this firmware has no SEV metadata; it cannot boot SEV-SNP")
    kinds = {section.section_type for section in ovmf.metadata}
    if hashes is not None and SectionType.SNP_KERNEL_HASHES not in kinds:
        raise Unsupported("this firmware does not support measured direct boot under SEV-SNP")
    if not 0 <= guest_features < 1 << 64:
        raise ParseError("guest features must be a 64-bit value")
    ld = SnpLaunchDigest()
    ld.normal_pages(FOUR_GIB - len(ovmf.data), ovmf.data)
    for section in ovmf.metadata:
        match section.section_type:
            case SectionType.SNP_SECRETS:
                ld.secrets_page(section.gpa)
            case SectionType.CPUID:
                ld.cpuid_page(section.gpa)
            case SectionType.SNP_KERNEL_HASHES if hashes is not None:
                ld.normal_pages(section.gpa, _hashes_page(ovmf, hashes, section.size))
            case _:  # SNP_SEC_MEM, SVSM_CAA, kernel hashes without a kernel
                ld.zero_pages(section.gpa, section.size)
    ap_eip = ovmf.sev_es_reset_eip
    if ap_eip is None:
        raise Unsupported("this firmware has no SEV-ES reset block; it cannot boot SEV-SNP")
    for page in vmsa_pages(vcpus, ap_eip, vcpu_sig, flavour, sev_features=guest_features):
        ld.vmsa_page(page)
    return ld.digest
