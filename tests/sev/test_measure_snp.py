"""SEV-SNP launch digest: PAGE_INFO layout, the page chain and error paths."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import pytest

from attestd.errors import ParseError, Unsupported
from attestd.sev.measure import KernelHashes, launch_digest
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.snp import PageInfo, PageType, SnpLaunchDigest, snp_launch_digest

DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")


def spec_page_info(cur: bytes, contents: bytes, page_type: int, gpa: int) -> bytes:
    """PAGE_INFO written out from SEV-SNP ABI table 67 (IMI and VMPL permissions zero)."""
    return (
        cur
        + contents
        + struct.pack("<H", 0x70)
        + bytes([page_type, 0, 0, 0, 0, 0])
        + (gpa.to_bytes(8, "little"))
    )


def test_page_info_layout_and_round_trip() -> None:
    cur, contents = bytes(range(48)), bytes(range(48, 96))
    info = PageInfo(cur, contents, PageType.CPUID, 0x80E000)
    assert info.pack() == spec_page_info(cur, contents, 6, 0x80E000)
    assert PageInfo.unpack(info.pack()) == info


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [(96, 0x71, "length"), (98, 7, "page type"), (98, 0, "page type"), (99, 2, "reserved")],
)
def test_page_info_rejects_bad_fields(offset: int, value: int, message: str) -> None:
    raw = bytearray(PageInfo(bytes(48), bytes(48), PageType.NORMAL, 0).pack())
    raw[offset] = value
    with pytest.raises(ParseError, match=message):
        PageInfo.unpack(bytes(raw))
    with pytest.raises(ParseError):
        PageInfo.unpack(bytes(raw[:-1]))


def test_chain_follows_the_spec() -> None:
    page = bytes([0xAB]) * 4096
    ld = SnpLaunchDigest()
    ld.normal_pages(0xFFFFF000, page)
    ld.zero_pages(0x800000, 0x2000)
    expected = hashlib.sha384(
        spec_page_info(bytes(48), hashlib.sha384(page).digest(), 1, 0xFFFFF000)
    ).digest()
    for gpa in (0x800000, 0x801000):
        expected = hashlib.sha384(spec_page_info(expected, bytes(48), 3, gpa)).digest()
    assert ld.digest == expected
    with pytest.raises(ParseError, match="aligned"):
        ld.zero_pages(0x800800, 0x1000)
    with pytest.raises(ParseError, match="aligned"):
        ld.normal_pages(0, b"x" * 100)
    with pytest.raises(ParseError):
        ld.vmsa_page(bytes(100))
    with pytest.raises(ParseError):
        SnpLaunchDigest(bytes(32))


def test_amdsev_provenance_digest(testdata: Path) -> None:
    text = (testdata / "ovmf" / "PROVENANCE.md").read_text()
    (expected,) = re.findall(
        r"^\| snp \| firmware only, 4 vCPUs EPYC-v4, guest features 0x1 \| `([0-9a-f]{96})`",
        text,
        re.MULTILINE,
    )
    firmware = (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()
    assert launch_digest("snp", firmware, vcpus=4, vcpu_type="EPYC-v4").hex() == expected
    assert launch_digest("snp", firmware, vcpus=4, guest_features=0x21).hex() != expected


def test_kernel_hashes_change_the_digest(testdata: Path) -> None:
    firmware = (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()
    plain = launch_digest("snp", firmware)
    hashed = launch_digest("snp", firmware, hashes=KernelHashes.from_content(b"k", None, None))
    assert len(plain) == len(hashed) == 48 and plain != hashed


def test_unsupported_firmware() -> None:
    hashes = KernelHashes.from_content(b"k", None, None)
    with pytest.raises(Unsupported, match="SEV metadata"):  # no footer table at all
        launch_digest("snp", b"\xff" * 0x10000)
    # Debian's OVMF.fd has SNP metadata but no kernel hashes section.
    debian = DEBIAN_OVMF.read_bytes()
    assert len(launch_digest("snp", debian)) == 48
    with pytest.raises(Unsupported, match="direct boot"):
        launch_digest("snp", debian, hashes=hashes)


def test_bad_inputs(testdata: Path) -> None:
    image = (testdata / "sev" / "kat" / "sev-launch-digest" / "ovmf_AmdSev_suffix.bin").read_bytes()
    ovmf = Ovmf.from_bytes(image)
    with pytest.raises(ParseError, match="guest features"):
        snp_launch_digest(ovmf, hashes=None, vcpus=1, vcpu_sig=0, guest_features=1 << 64)
    with pytest.raises(ParseError, match="aligned"):
        launch_digest("snp", b"\xff" * 100 + image)
    with pytest.raises(ParseError, match="vcpus"):
        launch_digest("snp", image, vcpus=0)
