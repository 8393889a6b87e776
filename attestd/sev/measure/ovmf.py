"""The OVMF footer GUID table, parsed from the firmware image bytes.

edk2 puts a table of GUIDed entries just before the last 32 bytes of the image
(``OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm``). It is read backwards: each
entry is ``data || u16 size || GUID`` where ``size`` covers the whole entry, and
the table itself is the outermost entry (GUID ``96b582de-…``). QEMU reads the
same table (``hw/i386/pc_sysfw_ovmf.c``) to find the SEV-ES AP reset address,
the kernel hashes area and the launch secret area.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Self
from uuid import UUID

from attestd.errors import ParseError
from attestd.sev._binary import enum_value, unpack_exact

OVMF_TABLE_FOOTER_GUID = UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_HASH_TABLE_RV_GUID = UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_ES_RESET_BLOCK_GUID = UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_SECRET_BLOCK_GUID = UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
SEV_METADATA_OFFSET_GUID = UUID("dc886566-984a-4798-a75e-5585a7bf67cc")

#: The footer table ends this many bytes before the end of the image.
FOOTER_TAIL = 32

#: Size of the padded kernel hashes table QEMU writes (see ``sev_hashes``).
PADDED_HASHES_TABLE_SIZE = 176


@dataclass(frozen=True, slots=True)
class FooterEntryHeader:
    """Trailer of one footer-table entry (edk2 ResetVectorVtf0.asm): u16 size || GUID."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<H16s")

    size: int
    guid: UUID

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly ``STRUCT.size`` bytes."""
        size, guid = unpack_exact(cls.STRUCT, buf, "OVMF table entry header")
        return cls(size=size, guid=UUID(bytes_le=guid))

    def pack(self) -> bytes:
        """Encode to the on-image layout."""
        return self.STRUCT.pack(self.size, self.guid.bytes_le)


@dataclass(frozen=True, slots=True)
class GpaArea:
    """A guest-physical area named by the footer table: u32 base || u32 size.

    Used by the SEV secret block (``4c2eb361-…``) and the hashes table block
    (``7255371f-…``), edk2 ``OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm``.
    """

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II")

    base: int
    size: int

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 8 bytes."""
        base, size = unpack_exact(cls.STRUCT, buf, "OVMF area entry")
        return cls(base=base, size=size)

    def pack(self) -> bytes:
        """Encode to the on-image layout."""
        return self.STRUCT.pack(self.base, self.size)


class SectionType(IntEnum):
    """SEV metadata section types (edk2 ``OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm``)."""

    SNP_SEC_MEM = 1
    SNP_SECRETS = 2
    CPUID = 3
    SVSM_CAA = 4
    SNP_KERNEL_HASHES = 0x10


@dataclass(frozen=True, slots=True)
class SevMetadataHeader:
    """OVMF SEV metadata header: "ASEV" || u32 size || u32 version (1) || u32 num_items."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<4sIII")
    SIGNATURE: ClassVar[bytes] = b"ASEV"

    size: int
    version: int
    num_items: int

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 16 bytes; signature and version are checked."""
        signature, size, version, num_items = unpack_exact(cls.STRUCT, buf, "SEV metadata header")
        if signature != cls.SIGNATURE:
            raise ParseError("SEV metadata signature is not ASEV")
        if version != 1:
            raise ParseError(f"unsupported SEV metadata version {version}")
        return cls(size=size, version=version, num_items=num_items)

    def pack(self) -> bytes:
        """Encode to the on-image layout."""
        return self.STRUCT.pack(self.SIGNATURE, self.size, self.version, self.num_items)


@dataclass(frozen=True, slots=True)
class SevMetadataSection:
    """One SEV metadata section: u32 gpa || u32 size || u32 type (used for SEV-SNP)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<III")

    gpa: int
    size: int
    section_type: SectionType

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 12 bytes; unknown section types raise ``ParseError``."""
        gpa, size, raw_type = unpack_exact(cls.STRUCT, buf, "SEV metadata section")
        section_type = enum_value(SectionType, raw_type, "SEV metadata section type")
        return cls(gpa=gpa, size=size, section_type=section_type)

    def pack(self) -> bytes:
        """Encode to the on-image layout."""
        return self.STRUCT.pack(self.gpa, self.size, self.section_type)


@dataclass(frozen=True, slots=True)
class FooterEntry:
    """One entry of the footer table: its GUID and its data bytes."""

    guid: UUID
    data: bytes


def _u32(entry: FooterEntry) -> int:
    if len(entry.data) != 4:
        raise ParseError(f"OVMF table entry {entry.guid} must hold a u32, got {len(entry.data)}")
    return int.from_bytes(entry.data, "little")


def _parse_footer_table(image: bytes) -> tuple[FooterEntry, ...]:
    hdr_size = FooterEntryHeader.STRUCT.size
    end = len(image) - FOOTER_TAIL
    if end < hdr_size:
        return ()
    footer = FooterEntryHeader.unpack(image[end - hdr_size : end])
    if footer.guid != OVMF_TABLE_FOOTER_GUID:
        return ()
    if footer.size < hdr_size or footer.size > end:
        raise ParseError(f"OVMF footer table size {footer.size} is out of bounds")
    table = image[end - footer.size : end - hdr_size]
    entries: list[FooterEntry] = []
    seen: set[UUID] = set()
    while table:
        if len(table) < hdr_size:
            raise ParseError("OVMF footer table has a truncated entry")
        header = FooterEntryHeader.unpack(table[-hdr_size:])
        if header.size < hdr_size or header.size > len(table):
            raise ParseError(f"OVMF table entry {header.guid} has invalid size {header.size}")
        if header.guid in seen:
            raise ParseError(f"OVMF footer table has duplicate entry {header.guid}")
        seen.add(header.guid)
        entries.append(FooterEntry(header.guid, table[-header.size : -hdr_size]))
        table = table[: -header.size]
    return tuple(entries)


def _parse_metadata(image: bytes, offset_entry: FooterEntry) -> tuple[SevMetadataSection, ...]:
    offset = _u32(offset_entry)
    start = len(image) - offset
    hdr_size = SevMetadataHeader.STRUCT.size
    if offset < hdr_size or start < 0:
        raise ParseError(f"SEV metadata offset {offset:#x} is out of bounds")
    header = SevMetadataHeader.unpack(image[start : start + hdr_size])
    sec_size = SevMetadataSection.STRUCT.size
    if header.size != hdr_size + header.num_items * sec_size or header.size > offset:
        raise ParseError(f"SEV metadata size {header.size} does not match its sections")
    body = image[start + hdr_size : start + header.size]
    return tuple(
        SevMetadataSection.unpack(body[i : i + sec_size]) for i in range(0, len(body), sec_size)
    )


@dataclass(frozen=True, slots=True)
class Ovmf:
    """An OVMF image and what its footer table says about SEV support.

    An image without a footer table is valid (plain SEV measures only its
    bytes); a footer table that is present but malformed raises ``ParseError``.
    """

    data: bytes = field(repr=False)
    entries: tuple[FooterEntry, ...]
    metadata: tuple[SevMetadataSection, ...]

    @classmethod
    def from_bytes(cls, data: bytes) -> Ovmf:
        """Parse the footer table (and SEV metadata, if any) of a firmware image."""
        if not data:
            raise ParseError("firmware image is empty")
        entries = _parse_footer_table(data)
        ovmf = cls(data=bytes(data), entries=entries, metadata=())
        offset_entry = ovmf.entry(SEV_METADATA_OFFSET_GUID)
        if offset_entry is not None:
            ovmf = cls(
                data=ovmf.data, entries=entries, metadata=_parse_metadata(data, offset_entry)
            )
        # Decode the entries attestd interprets now, so a malformed one fails here.
        _ = (ovmf.sev_es_reset_eip, ovmf.secret_area, ovmf.hashes_table_area)
        return ovmf

    def entry(self, guid: UUID) -> FooterEntry | None:
        """The footer-table entry with this GUID, if present."""
        for item in self.entries:
            if item.guid == guid:
                return item
        return None

    def _area(self, guid: UUID) -> GpaArea | None:
        item = self.entry(guid)
        if item is None:
            return None
        area = GpaArea.unpack(item.data)
        return area if area.base != 0 else None

    @property
    def sev_es_reset_eip(self) -> int | None:
        """Reset address of SEV-ES application processors (entry ``00f771de-…``)."""
        item = self.entry(SEV_ES_RESET_BLOCK_GUID)
        return None if item is None else _u32(item)

    @property
    def hashes_table_area(self) -> GpaArea | None:
        """Where QEMU puts the kernel hashes table; ``None`` if absent or at address 0."""
        return self._area(SEV_HASH_TABLE_RV_GUID)

    @property
    def supports_kernel_hashes(self) -> bool:
        """True if QEMU can add the kernel hashes table (measured direct boot)."""
        area = self.hashes_table_area
        return area is not None and area.size >= PADDED_HASHES_TABLE_SIZE

    @property
    def secret_area(self) -> tuple[int, int] | None:
        """(base, size) of the launch secret area; ``None`` if absent or at address 0."""
        area = self._area(SEV_SECRET_BLOCK_GUID)
        return None if area is None else (area.base, area.size)
