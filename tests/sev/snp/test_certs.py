"""SNP X.509 certificates: pinned roots, VCEK/VLEK extensions, serial-0 fallback, cert tables."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
import warnings
from importlib import resources

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.snp import _der, certs
from attestd.sev.snp.certs import (
    GUID_ARK,
    GUID_VCEK,
    GUID_VLEK,
    CertTable,
    SnpCertificate,
    anchor_from_pem,
    builtin_snp_anchors,
    load_pem_or_der,
)
from attestd.sev.snp.report import Generation
from tests.sev.snp.vectors import SNP, TESTDATA

CA = TESTDATA / "sev" / "amd-ca-snp"
ARK_DER_SHA256 = {
    "milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
PEM_SHA256 = {
    "milan/ark.pem": "8c109952166431ffad8cb9a3d54f3d20ffbbb58164f0d54be3457bf0ece9e0d8",
    "milan/ask.pem": "8da3a65af1cb7cb90a21fac78431a2431a9ee7811f48c36569c53fb80ad31fee",
    "milan/asvk.pem": "6c0c38ecb76c9f2b2d054f7d806fd5ccfec970599149ce0ed37b1f77fa409ab7",
    "genoa/ark.pem": "96bff94e97e2b7ddf4bf3b9b7f780f94a46b8c51f52abfdcc283be7df36ce405",
    "genoa/ask.pem": "22fea250e0390b22008c9a415f4bd915ae8cef4a240f9d21702e84eb250b9186",
    "genoa/asvk.pem": "9aca5d858c6a4e310e8f91251c6dcdad848e596684b73559ff2fb84cdcc18f1d",
    "turin/ark.pem": "b69c981fe0216c3d8e682eb6f480c6879497103071e52b5e603178638db8f68d",
    "turin/ask.pem": "c72a54fb75a0a06b0c8dbf68b04893d0891751b94ce4da8231d11fd18a0da944",
    "turin/asvk.pem": "408e14874c1406f08432ffc653f9c9bcffe35dce4926405915d77a278eb493f2",
}
LEAVES = [
    "vcek_milan.der",
    "vcek_turin.der",
    "trustee/test-vcek.der",
    "trustee/test-vlek.der",
    "trustee/test-vcek-invalid-legacy.der",
    "trustee/test-vcek-invalid-new.der",
    "go-sev-guest/vcek.testcer",
]


def test_pinned_roots_are_the_published_files() -> None:
    root = resources.files("attestd.sev") / "builtin" / "snp"
    for name, digest in PEM_SHA256.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
    for gen in ("milan", "genoa", "turin"):
        for role in ("ark", "ask"):
            assert (root / gen / f"{role}.pem").read_bytes() == (
                CA / gen / f"{role}.pem"
            ).read_bytes()
        bundle = (SNP / f"trustee/{gen}_ask_ark_asvk.pem").read_bytes()
        assert (root / gen / "asvk.pem").read_bytes() in bundle
    anchors = builtin_snp_anchors()
    assert [a.name for a in anchors] == ["milan", "genoa", "turin"]
    for anchor in anchors:
        assert hashlib.sha256(anchor.ark.der).hexdigest() == ARK_DER_SHA256[anchor.name]
        assert len(anchor.check()) == 3


@pytest.mark.parametrize("name", LEAVES)
def test_fallback_parser_agrees_with_cryptography(name: str) -> None:
    der = (SNP / name).read_bytes()
    normal = SnpCertificate.from_der(der)
    forced = SnpCertificate.from_der(der, force_fallback=True)
    assert not normal.fallback and forced.fallback
    assert forced.serial_number == normal.serial_number == 0
    assert forced.tbs_algorithm_matches and normal.tbs_algorithm_matches
    for attr in ("tbs", "signature", "signature_oid", "signature_algorithm", "extensions"):
        assert getattr(forced, attr) == getattr(normal, attr)
    assert forced.public_key.public_numbers() == normal.public_key.public_numbers()
    assert forced.describe_extensions() == normal.describe_extensions()
    for anchor in builtin_snp_anchors():
        for key in (anchor.ask, anchor.asvk):
            assert key is not None
            assert forced.is_signed_by(key) == normal.is_signed_by(key)


def test_fallback_is_taken_when_cryptography_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate the announced refusal of serial number 0: the DER reader takes over."""
    der = (SNP / "vcek_milan.der").read_bytes()

    def refuse(data: bytes) -> x509.Certificate:
        raise ValueError("serial number 0 is not allowed")

    monkeypatch.setattr(x509, "load_der_x509_certificate", refuse)
    certs._parse_certificate.cache_clear()  # parse anew, not the certificate kept before
    try:
        cert = SnpCertificate.from_der(der)
    finally:
        certs._parse_certificate.cache_clear()
    assert cert.fallback
    milan = builtin_snp_anchors()[0]
    assert cert.is_signed_by(milan.ask)
    assert cert.product_name == "Milan-B0"


def test_the_same_der_is_parsed_once() -> None:
    der = (SNP / "vcek_milan.der").read_bytes()
    first = SnpCertificate.from_der(der)
    assert SnpCertificate.from_der(bytearray(der)) is first
    flipped = bytearray(der)
    flipped[-1] ^= 0x01  # in the signature
    other = SnpCertificate.from_der(bytes(flipped))
    assert other is not first and other.signature != first.signature
    assert not other.is_signed_by(builtin_snp_anchors()[0].ask)


def test_only_certificates_of_at_most_8_kib_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    der = (SNP / "vcek_milan.der").read_bytes()
    monkeypatch.setattr(certs, "_KEPT_DER_SIZE", len(der) - 1)
    assert SnpCertificate.from_der(der) is not SnpCertificate.from_der(der)


def test_cryptography_still_warns_about_serial_zero() -> None:
    """Why the fallback exists (if this starts failing, cryptography refuses: fallback path)."""
    der = (SNP / "vcek_milan.der").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            assert x509.load_der_x509_certificate(der).serial_number == 0
        except ValueError:
            return
    assert any("serial number" in str(w.message) for w in caught)


def test_vcek_extensions_milan_and_vlek() -> None:
    vcek = SnpCertificate.from_der((SNP / "vcek_milan.der").read_bytes())
    assert vcek.struct_version == 0
    assert vcek.product_name == "Milan-B0" and vcek.generation is Generation.MILAN
    assert vcek.tcb(turin=False).components() == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert vcek.hw_id is not None and len(vcek.hw_id) == 64 and vcek.csp_id is None
    vlek = SnpCertificate.from_der((SNP / "trustee/test-vlek.der").read_bytes())
    assert vlek.hw_id is None
    assert vlek.csp_id is not None and vlek.csp_id.startswith("CN=")
    assert vlek.product_name == "Milan"
    assert vlek.tcb(turin=False).microcode == 217


def test_turin_vcek_fmc_and_8_byte_hwid() -> None:
    vcek = SnpCertificate.from_der((SNP / "vcek_turin.der").read_bytes())
    assert vcek.struct_version == 1
    assert vcek.generation is Generation.TURIN
    assert vcek.hw_id == bytes.fromhex("1e550a8ee5cf9f4d")
    tcb = vcek.tcb(turin=True)
    assert tcb.components() == {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 9, "fmc": 0}
    assert tcb.raw == 9 << 56
    turin = builtin_snp_anchors()[2]
    assert vcek.is_signed_by(turin.ask)
    assert not vcek.is_signed_by(builtin_snp_anchors()[0].ask)


def test_a_signature_is_verified_once_and_remembered_exactly() -> None:
    """The real Turin VCEK and ASK: a repeated check is answered from the results already
    made, and a result stands only for the same key, the same bytes and the same signature
    (a flipped signature byte, another key in the same certificate, the wrong ASK)."""
    milan, genoa, turin = builtin_snp_anchors()
    vcek = SnpCertificate.from_der((SNP / "vcek_turin.der").read_bytes())
    certs._PSS_RESULTS.clear()
    assert vcek.is_signed_by(turin.ask)
    assert len(certs._PSS_RESULTS) == 1
    assert vcek.is_signed_by(turin.ask)
    assert len(certs._PSS_RESULTS) == 1  # remembered: not verified again
    flipped = bytearray(vcek.signature)
    flipped[len(flipped) // 2] ^= 0x01
    assert not dataclasses.replace(vcek, signature=bytes(flipped)).is_signed_by(turin.ask)
    assert not vcek.is_signed_by(milan.ask)
    other_key = dataclasses.replace(turin.ask, public_key=genoa.ask.public_key)
    assert not vcek.is_signed_by(other_key)  # the same certificate DER, another key
    assert vcek.is_signed_by(turin.ask)
    assert len(certs._PSS_RESULTS) == 4


def test_remembered_signature_results_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "_PSS_RESULTS_MAX", 2)
    certs._PSS_RESULTS.clear()
    vcek = SnpCertificate.from_der((SNP / "vcek_turin.der").read_bytes())
    for anchor in builtin_snp_anchors():
        vcek.is_signed_by(anchor.ask)
    assert 1 <= len(certs._PSS_RESULTS) <= 2


def test_hwid_raw_and_octet_string_encodings() -> None:
    legacy = SnpCertificate.from_der((SNP / "trustee/test-vcek-invalid-legacy.der").read_bytes())
    new = SnpCertificate.from_der((SNP / "trustee/test-vcek-invalid-new.der").read_bytes())
    assert legacy.extensions["1.3.6.1.4.1.3704.1.4"] == bytes(range(64))
    assert new.extensions["1.3.6.1.4.1.3704.1.4"][:2] == b"\x04\x40"
    assert legacy.hw_id == new.hw_id == bytes(range(64))


def test_anchor_from_pem_validates() -> None:
    bundle = load_pem_or_der((SNP / "trustee/milan_ask_ark_asvk.pem").read_bytes())
    assert len(bundle) == 3
    ask, ark, asvk = (c.der for c in bundle)
    pem = lambda gen, role: (CA / gen / f"{role}.pem").read_bytes()  # noqa: E731
    anchor = anchor_from_pem("lab", pem("milan", "ark"), pem("milan", "ask"), asvk)
    assert anchor.asvk is not None and anchor.name == "lab"
    assert anchor_from_pem("lab", ark, ask).asvk is None
    with pytest.raises(ChainInvalid, match="ARK is not self-signed"):
        anchor_from_pem("x", ask, ask)
    with pytest.raises(ChainInvalid, match="ASK is not signed"):
        anchor_from_pem("x", ark, pem("genoa", "ask"))
    with pytest.raises(ChainInvalid, match="ASVK is not signed"):
        anchor_from_pem("x", ark, ask, pem("turin", "ask"))
    with pytest.raises(ChainInvalid, match=r"RSA-4096 \(or 2048\)"):
        anchor_from_pem("x", ark, (SNP / "vcek_milan.der").read_bytes())
    with pytest.raises(ParseError, match="one certificate"):
        anchor_from_pem("x", (SNP / "trustee/milan_ask_ark_asvk.pem").read_bytes(), ask)
    with pytest.raises(ParseError):
        anchor_from_pem("x", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", ask)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_flipped_root_bits_never_make_an_anchor(data: st.DataObject) -> None:
    """Every single-bit flip of the ARK, ASK or ASVK is refused when the anchor is built."""
    milan = builtin_snp_anchors()[0]
    assert milan.asvk is not None
    certs = {"ark": milan.ark.der, "ask": milan.ask.der, "asvk": milan.asvk.der}
    role = data.draw(st.sampled_from(sorted(certs)))
    bit = data.draw(st.integers(0, 8 * len(certs[role]) - 1))
    flipped = bytearray(certs[role])
    flipped[bit // 8] ^= 1 << (bit % 8)
    certs[role] = bytes(flipped)
    with pytest.raises((ChainInvalid, ParseError)):
        anchor_from_pem("flip", certs["ark"], certs["ask"], certs["asvk"])


def test_cert_table_round_trip_and_errors() -> None:
    vcek = (SNP / "vcek_milan.der").read_bytes()
    table = CertTable({GUID_ARK: b"ark", GUID_VCEK: vcek})
    packed = table.pack()
    # Entry 0: GUID as bytes_le (the GHCB table layout), offset, length.
    assert packed[:16] == GUID_ARK.bytes_le
    assert int.from_bytes(packed[16:20], "little") == 3 * 24
    assert CertTable.unpack(packed) == table
    assert table.leaf() == ("vcek", vcek)
    assert CertTable({GUID_VLEK: b"v", GUID_VCEK: b"c"}).leaf() == ("vlek", b"v")
    assert CertTable({GUID_ARK: b"a"}).leaf() is None
    assert CertTable.unpack(bytes(24)).entries == {}
    bad_offset = bytearray(packed)
    bad_offset[16:20] = (len(packed)).to_bytes(4, "little")
    unknown = uuid.uuid4()
    for bad in (b"", packed[:24], bytes(bad_offset), (unknown.bytes_le + bytes(8)) * 70):
        with pytest.raises(ParseError):
            CertTable.unpack(bad)
    dup = GUID_ARK.bytes_le + (72).to_bytes(4, "little") + (1).to_bytes(4, "little")
    with pytest.raises(ParseError, match="duplicate"):
        CertTable.unpack(dup * 2 + bytes(24) + b"x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_on_random_bytes_raise_only_parse_error(data: bytes) -> None:
    for parse in (CertTable.unpack, lambda d: SnpCertificate.from_der(d, force_fallback=True)):
        try:
            parse(data)
        except ParseError:
            pass


def test_der_reader_refuses_malformed_lengths() -> None:
    for bad in (b"\x30", b"\x30\x80\x00\x00", b"\x30\x81\x05abc", b"\x30\x81\x01a", b"\x1f\x01a"):
        with pytest.raises(ParseError):
            _der.read_tlv(bad)
    assert _der.encode_integer(0) == b"\x02\x01\x00"
    assert _der.encode_integer(128) == b"\x02\x02\x00\x80"
    assert _der.encode_length(300) == b"\x82\x01\x2c"
    assert _der.decode_oid(_der.read_one(b"\x06\x03\x2b\x06\x01", _der.OID, "oid")) == "1.3.6.1"
