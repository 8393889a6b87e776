"""The SNP attestation report layout: real vectors round-trip, fields decode, bad bytes refuse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ParseError
from attestd.sev.snp.report import (
    REPORT_SIZE,
    AttestationReport,
    Generation,
    KeyInfo,
    PolicyFlags,
    SigningKey,
    SnpPolicy,
    TcbVersion,
    extract_report,
    generation_from_cpuid,
)
from tests.sev.snp.vectors import SNP, VECTORS, Vector, genoa_from_trustee_json


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_real_reports_round_trip_and_decode(vector: Vector) -> None:
    raw = extract_report(vector.raw_file())
    report = AttestationReport.unpack(raw)
    assert report.pack() == raw
    assert report.version == vector.version
    assert report.policy == vector.policy
    assert report.vmpl == vector.vmpl
    assert report.key_info.signing_key.label == vector.signing_key
    tcb = report.tcb(report.reported_tcb, Generation.MILAN)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == vector.reported_tcb
    assert tcb.fmc is None
    assert report.signature_algo == 1


def test_the_vlek_report_is_milan_by_cpuid_with_a_masked_chip() -> None:
    report = AttestationReport.unpack((SNP / "trustee/test-vlek-report.bin").read_bytes())
    assert report.cpuid_generation is Generation.MILAN
    assert report.key_info == KeyInfo(False, False, SigningKey.VLEK)
    assert report.chip_id == bytes(64)


def test_v2_reports_have_no_cpuid_generation() -> None:
    report = AttestationReport.unpack((SNP / "trustee/test-report.bin").read_bytes())
    assert report.cpuid_generation is None
    assert report.guest_svn == 4
    assert report.family_id[0] == 1 and report.image_id[0] == 2


def test_genoa_rebuilt_from_trustee_json_round_trips() -> None:
    raw, _ = genoa_from_trustee_json()
    report = AttestationReport.unpack(raw)
    assert report.pack() == raw
    assert report.cpuid_generation is Generation.GENOA
    assert report.tcb(report.reported_tcb, Generation.GENOA).to_json() == {
        "bootloader": 10,
        "tee": 0,
        "snp": 23,
        "microcode": 25,
    }


def test_hex_text_and_azure_hcl_forms() -> None:
    hex_text = (SNP / "report_milan.hex").read_bytes()
    assert len(extract_report(hex_text)) == REPORT_SIZE
    assert extract_report(hex_text.upper() + b"\n") == extract_report(hex_text)
    hcl = (SNP / "trustee/az-hcl-report.bin").read_bytes()
    assert hcl[:4] == b"HCLA"
    assert extract_report(hcl) == hcl[0x20 : 0x20 + REPORT_SIZE]
    binary = (SNP / "trustee/test-report.bin").read_bytes()
    assert extract_report(binary) == binary
    for bad in (b"", binary[:-1], binary + b"\0", b"abc", b"zz" * REPORT_SIZE, hcl[:0x100]):
        with pytest.raises(ParseError):
            extract_report(bad)


# Reserved ranges (offset, size) of the layout: every one must be zero.
RESERVED = [(0x04C, 4), (0x18B, 21), (0x1EB, 1), (0x1EF, 1), (0x208, 152), (0x330, 368)]


@pytest.mark.parametrize(("offset", "size"), RESERVED)
def test_every_reserved_byte_must_be_zero(offset: int, size: int) -> None:
    raw = (SNP / "trustee/test-vlek-report.bin").read_bytes()
    for at in (offset, offset + size - 1):
        bad = bytearray(raw)
        bad[at] = 0x01
        with pytest.raises(ParseError, match="reserved"):
            AttestationReport.unpack(bytes(bad))


def test_version_key_info_cpuid_and_mitigation_rules() -> None:
    v2 = (SNP / "trustee/test-report.bin").read_bytes()
    v3 = (SNP / "trustee/test-vlek-report.bin").read_bytes()
    for version in (0, 1, 6, 0xFFFFFFFF):
        with pytest.raises(ParseError, match="version"):
            AttestationReport.unpack(struct.pack("<I", version) + v2[4:])
    bad_key = bytearray(v2)
    bad_key[0x48] = 0x20  # bit 5: reserved
    with pytest.raises(ParseError, match="KEY_INFO"):
        AttestationReport.unpack(bytes(bad_key))
    bad_key[0x48] = 2 << 2  # SIGNING_KEY 2: reserved
    with pytest.raises(ParseError, match="SIGNING_KEY"):
        AttestationReport.unpack(bytes(bad_key))
    cpuid_in_v2 = bytearray(v2)
    cpuid_in_v2[0x188] = 0x19
    with pytest.raises(ParseError, match="CPUID"):
        AttestationReport.unpack(bytes(cpuid_in_v2))
    mit_in_v3 = bytearray(v3)
    mit_in_v3[0x1F8] = 1
    with pytest.raises(ParseError, match="mitigation"):
        AttestationReport.unpack(bytes(mit_in_v3))
    v5 = bytearray(v3)
    v5[0] = 5
    v5[0x1F8] = 1
    assert AttestationReport.unpack(bytes(v5)).launch_mit_vector == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=REPORT_SIZE + 64))
def test_unpack_random_bytes_raises_only_parse_error(data: bytes) -> None:
    try:
        AttestationReport.unpack(data)
    except ParseError:
        pass
    try:
        extract_report(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE), st.integers(2, 5))
def test_unpack_random_reports_raises_only_parse_error(data: bytes, version: int) -> None:
    raw = struct.pack("<I", version) + data[4:]
    try:
        report = AttestationReport.unpack(raw)
    except ParseError:
        return
    assert report.pack() == raw


def test_tcb_layouts_follow_the_cpu_family() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]), "little")
    milan = TcbVersion.decode(raw, turin=False)
    assert milan.components() == {"bootloader": 1, "tee": 2, "snp": 7, "microcode": 8}
    turin = TcbVersion.decode(raw, turin=True)
    assert turin.components() == {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 8, "fmc": 1}
    built = TcbVersion.build(bootloader=2, tee=3, snp=4, microcode=8, fmc=1)
    assert built.raw == int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 8]), "little")
    assert TcbVersion.decode(built.raw, turin=True) == built
    with pytest.raises(ValueError):
        TcbVersion.build(bootloader=256, tee=0, snp=0, microcode=0)


def test_tcb_is_compared_component_by_component() -> None:
    low_ucode = TcbVersion.build(bootloader=9, tee=0, snp=9, microcode=1)
    minimum = TcbVersion.build(bootloader=3, tee=0, snp=8, microcode=115)
    # As an integer low_ucode is larger (byte 6 beats byte 0), but microcode is below.
    assert low_ucode.raw < minimum.raw or low_ucode.raw > minimum.raw
    assert low_ucode.below(minimum) == ["microcode"]
    assert minimum.below(minimum) == []
    turin_min = TcbVersion.build(bootloader=0, tee=0, snp=0, microcode=0, fmc=2)
    assert TcbVersion.build(bootloader=0, tee=0, snp=0, microcode=0, fmc=1).below(turin_min) == [
        "fmc"
    ]


@pytest.mark.parametrize(
    ("family", "model", "generation"),
    [
        (0x19, 0x01, Generation.MILAN),
        (0x19, 0x0F, Generation.MILAN),
        (0x19, 0x11, Generation.GENOA),
        (0x19, 0xA0, Generation.GENOA),
        (0x1A, 0x02, Generation.TURIN),
        (0x1A, 0x11, Generation.TURIN),
        (0x19, 0x20, None),
        (0x17, 0x31, None),
        (0x1A, 0x12, None),
    ],
)
def test_generation_from_cpuid(family: int, model: int, generation: Generation | None) -> None:
    assert generation_from_cpuid(family, model) is generation


def test_policy_decoding() -> None:
    policy = SnpPolicy.from_u64(0xB0000)
    assert policy.flags & PolicyFlags.DEBUG and policy.flags & PolicyFlags.SMT
    assert policy.to_json()["debug"] is True
    assert SnpPolicy.from_u64(0x3001F).abi_minor == 0x1F
    assert SnpPolicy.from_u64(1 << 40).unknown_bits == 1 << 40
    with pytest.raises(ParseError):
        SnpPolicy.from_u64(1 << 64)
