"""OVMF footer table parsing, on real firmware and on crafted images."""

from __future__ import annotations

import struct
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ParseError
from attestd.sev.measure.ovmf import (
    FOOTER_TAIL,
    OVMF_TABLE_FOOTER_GUID,
    SEV_ES_RESET_BLOCK_GUID,
    SEV_HASH_TABLE_RV_GUID,
    SEV_METADATA_OFFSET_GUID,
    SEV_SECRET_BLOCK_GUID,
    FooterEntryHeader,
    GpaArea,
    Ovmf,
    SectionType,
    SevMetadataHeader,
    SevMetadataSection,
)

DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")
DEBIAN_OVMF_CODE_4M = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
HDR = FooterEntryHeader.STRUCT.size


def make_image(entries: list[tuple[UUID, bytes]], prefix: bytes = b"\xff" * 64) -> bytes:
    """A synthetic image with an edk2-style footer table (first entry nearest the footer)."""
    table = b""
    for guid, data in entries:
        table = data + FooterEntryHeader(len(data) + HDR, guid).pack() + table
    footer = FooterEntryHeader(len(table) + HDR, OVMF_TABLE_FOOTER_GUID).pack()
    return prefix + table + footer + bytes(FOOTER_TAIL)


@pytest.fixture(scope="module")
def amdsev(testdata: Path) -> Ovmf:
    return Ovmf.from_bytes((testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes())


def test_amdsev_build_supports_hashes_secret_and_seves(amdsev: Ovmf) -> None:
    assert amdsev.supports_kernel_hashes
    assert amdsev.sev_es_reset_eip == 0x80B004
    # PROVENANCE.md: a secret area of at most 3072 bytes.
    assert amdsev.secret_area == (0x810000, 3072)
    area = amdsev.hashes_table_area
    assert area is not None and area.size >= 176
    kinds = {s.section_type for s in amdsev.metadata}
    assert SectionType.SNP_KERNEL_HASHES in kinds and SectionType.CPUID in kinds


@pytest.mark.parametrize("path", [DEBIAN_OVMF, DEBIAN_OVMF_CODE_4M], ids=lambda p: p.name)
def test_debian_ovmf_has_no_hashes_or_secret_area(path: Path) -> None:
    ovmf = Ovmf.from_bytes(path.read_bytes())
    assert ovmf.entry(SEV_HASH_TABLE_RV_GUID) is not None  # present, but at address 0
    assert not ovmf.supports_kernel_hashes
    assert ovmf.hashes_table_area is None
    assert ovmf.secret_area is None
    assert ovmf.sev_es_reset_eip is not None


def test_kat_suffixes(testdata: Path) -> None:
    kat = testdata / "sev" / "kat" / "sev-launch-digest"
    amd = Ovmf.from_bytes((kat / "ovmf_AmdSev_suffix.bin").read_bytes())
    x64 = Ovmf.from_bytes((kat / "ovmf_OvmfX64_suffix.bin").read_bytes())
    assert amd.supports_kernel_hashes and not x64.supports_kernel_hashes
    assert amd.sev_es_reset_eip == x64.sev_es_reset_eip == 0x80B004


def test_structures_round_trip_on_real_bytes(testdata: Path) -> None:
    image = (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()
    ovmf = Ovmf.from_bytes(image)
    end = len(image) - FOOTER_TAIL
    raw = image[end - HDR : end]
    assert FooterEntryHeader.unpack(raw).pack() == raw
    for guid in (SEV_SECRET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID):
        entry = ovmf.entry(guid)
        assert entry is not None
        assert GpaArea.unpack(entry.data).pack() == entry.data
    offset_entry = ovmf.entry(SEV_METADATA_OFFSET_GUID)
    assert offset_entry is not None
    start = len(image) - int.from_bytes(offset_entry.data, "little")
    header = SevMetadataHeader.unpack(image[start : start + 16])
    assert header.pack() == image[start : start + 16]
    assert header.num_items == len(ovmf.metadata)
    sections = image[start + 16 : start + header.size]
    assert b"".join(s.pack() for s in ovmf.metadata) == sections


def test_image_without_footer_table() -> None:
    ovmf = Ovmf.from_bytes(bytes(8192))
    assert ovmf.entries == ()
    assert not ovmf.supports_kernel_hashes
    assert ovmf.sev_es_reset_eip is None
    assert ovmf.secret_area is None


def test_empty_image_is_rejected() -> None:
    with pytest.raises(ParseError):
        Ovmf.from_bytes(b"")


def test_synthetic_table_is_read_in_order() -> None:
    other = uuid4()
    image = make_image(
        [
            (SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", 0x12345678)),
            (SEV_SECRET_BLOCK_GUID, struct.pack("<II", 0x1000, 0x400)),
            (other, b"opaque"),
        ]
    )
    ovmf = Ovmf.from_bytes(image)
    assert [e.guid for e in ovmf.entries] == [SEV_ES_RESET_BLOCK_GUID, SEV_SECRET_BLOCK_GUID, other]
    assert ovmf.sev_es_reset_eip == 0x12345678
    assert ovmf.secret_area == (0x1000, 0x400)
    entry = ovmf.entry(other)
    assert entry is not None and entry.data == b"opaque"


def test_hashes_area_too_small_is_unsupported() -> None:
    image = make_image([(SEV_HASH_TABLE_RV_GUID, struct.pack("<II", 0x810000, 0xA0))])
    ovmf = Ovmf.from_bytes(image)
    assert ovmf.hashes_table_area == GpaArea(0x810000, 0xA0)
    assert not ovmf.supports_kernel_hashes


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(SEV_ES_RESET_BLOCK_GUID, b"\x04\xb0\x80")], "u32"),
        ([(SEV_SECRET_BLOCK_GUID, b"\x00" * 12)], "8 bytes"),
        ([(SEV_HASH_TABLE_RV_GUID, b"\x00" * 4)], "8 bytes"),
        ([(SEV_ES_RESET_BLOCK_GUID, b"\0" * 4), (SEV_ES_RESET_BLOCK_GUID, b"\0" * 4)], "duplicate"),
        ([(SEV_METADATA_OFFSET_GUID, struct.pack("<I", 0x10_0000))], "out of bounds"),
    ],
)
def test_malformed_entries(entries: list[tuple[UUID, bytes]], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        Ovmf.from_bytes(make_image(entries))


def _corrupt_size(image: bytes, new_size: int, entry_end: int) -> bytes:
    pos = entry_end - HDR
    return image[:pos] + struct.pack("<H", new_size) + image[pos + 2 :]


def test_footer_size_out_of_bounds() -> None:
    image = make_image([(uuid4(), b"x")], prefix=b"")
    end = len(image) - FOOTER_TAIL
    with pytest.raises(ParseError, match="out of bounds"):
        Ovmf.from_bytes(_corrupt_size(image, 0xFFFF, end))
    with pytest.raises(ParseError, match="out of bounds"):
        Ovmf.from_bytes(_corrupt_size(image, 3, end))


def test_entry_size_invalid_or_truncated() -> None:
    image = make_image([(uuid4(), b"abc")])
    end = len(image) - FOOTER_TAIL - HDR  # end of the only entry
    with pytest.raises(ParseError, match="invalid size"):
        Ovmf.from_bytes(_corrupt_size(image, 5, end))
    with pytest.raises(ParseError, match="invalid size"):
        Ovmf.from_bytes(_corrupt_size(image, 200, end))
    # Footer claims 4 more bytes than the entries fill: a truncated entry.
    footer_end = len(image) - FOOTER_TAIL
    with pytest.raises(ParseError, match="truncated"):
        Ovmf.from_bytes(_corrupt_size(image, 3 + 2 * HDR + 4, footer_end))


def _metadata_image(header: bytes, sections: bytes) -> bytes:
    blob = header + sections
    # The offset is counted from the end of the image; put the blob right before the table.
    body = b"\xff" * 32 + blob
    probe = make_image([(SEV_METADATA_OFFSET_GUID, b"\0" * 4)], prefix=body)
    offset = len(probe) - 32
    return make_image([(SEV_METADATA_OFFSET_GUID, struct.pack("<I", offset))], prefix=body)


def test_metadata_is_validated() -> None:
    section = SevMetadataSection(0x800000, 0x1000, SectionType.CPUID).pack()
    good = _metadata_image(SevMetadataHeader(16 + 12, 1, 1).pack(), section)
    assert Ovmf.from_bytes(good).metadata == (
        SevMetadataSection(0x800000, 0x1000, SectionType.CPUID),
    )
    bad_sig = _metadata_image(b"XSEV" + SevMetadataHeader(28, 1, 1).pack()[4:], section)
    with pytest.raises(ParseError, match="ASEV"):
        Ovmf.from_bytes(bad_sig)
    bad_version = _metadata_image(struct.pack("<4sIII", b"ASEV", 28, 2, 1), section)
    with pytest.raises(ParseError, match="version"):
        Ovmf.from_bytes(bad_version)
    bad_count = _metadata_image(SevMetadataHeader(28, 1, 2).pack(), section)
    with pytest.raises(ParseError, match="does not match"):
        Ovmf.from_bytes(bad_count)
    bad_type = _metadata_image(SevMetadataHeader(28, 1, 1).pack(), struct.pack("<III", 0, 0, 7))
    with pytest.raises(ParseError, match="section type"):
        Ovmf.from_bytes(bad_type)


@pytest.mark.parametrize("cls", [FooterEntryHeader, GpaArea, SevMetadataHeader, SevMetadataSection])
def test_wrong_length_structures(cls: type[FooterEntryHeader]) -> None:
    with pytest.raises(ParseError):
        cls.unpack(bytes(cls.STRUCT.size - 1))
    with pytest.raises(ParseError):
        cls.unpack(bytes(cls.STRUCT.size + 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_images_raise_only_parse_error(data: bytes) -> None:
    try:
        Ovmf.from_bytes(data)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256), st.integers(min_value=0, max_value=0xFFFF))
def test_random_tables_behind_a_real_footer_raise_only_parse_error(table: bytes, size: int) -> None:
    image = table + FooterEntryHeader(size, OVMF_TABLE_FOOTER_GUID).pack() + bytes(FOOTER_TAIL)
    try:
        ovmf = Ovmf.from_bytes(image)
    except ParseError:
        return
    assert ovmf.data == image
