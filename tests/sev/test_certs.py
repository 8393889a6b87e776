"""SEV platform and AMD CA certificates against the real AMD data in tests/data."""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ParseError, Unsupported
from attestd.sev._binary import le_bytes, raw_or_base64
from attestd.sev.certs import (
    SEV_CERT_SIZE,
    Algorithm,
    AmdCaCertificate,
    SevCertificate,
    Usage,
    ecdh_cert_for_godh,
)
from tests.conftest import PROJECT_ROOT, TESTDATA

GENERATIONS = ("naples", "rome", "milan", "genoa", "turin")
SEV = TESTDATA / "sev"
PLATFORM_CERTS = sorted(
    p.relative_to(SEV)
    for p in (SEV / "platform").rglob("*")
    if p.is_file() and p.stat().st_size == SEV_CERT_SIZE
)
CA_CERTS = [f"amd-ca-sev/{g}/{role}.cert" for g in GENERATIONS for role in ("ark", "ask")]
BUILTIN = PROJECT_ROOT / "attestd" / "sev" / "builtin"


def sev_cert(path: str | Path) -> SevCertificate:
    return SevCertificate.unpack((SEV / path).read_bytes())


def ca_cert(gen: str, role: str) -> AmdCaCertificate:
    return AmdCaCertificate.unpack((SEV / f"amd-ca-sev/{gen}/{role}.cert").read_bytes())


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def verifies(data: bytes, signer: SevCertificate | AmdCaCertificate) -> bool:
    """Parse ``data`` as an SEV cert and check ``signer``'s signature; a ParseError rejects."""
    try:
        return SevCertificate.unpack(data).is_signed_by(signer)
    except ParseError:
        return False


# -- round trips --------------------------------------------------------------------------


def test_testdata_is_complete() -> None:
    assert len(PLATFORM_CERTS) == 14
    assert len(CA_CERTS) == 10


@pytest.mark.parametrize("path", PLATFORM_CERTS, ids=str)
def test_platform_cert_round_trips_byte_exact(path: Path) -> None:
    data = (SEV / path).read_bytes()
    cert = SevCertificate.unpack(data)
    assert cert.pack() == data
    assert cert.body == data[:0x414]
    assert cert.version == 1


@pytest.mark.parametrize("path", CA_CERTS)
def test_ca_cert_round_trips_byte_exact(path: str) -> None:
    data = (SEV / path).read_bytes()
    cert = AmdCaCertificate.unpack(data)
    assert cert.pack() == data
    assert cert.body == data[: 0x40 + 2 * cert.modulus_size // 8]
    assert cert.pub_exp == 65537


@pytest.mark.parametrize(
    "path", ["platform/naos-api1.51/cert_chain.cert", "platform/naples-2019/pek_oca_cek.cert"]
)
def test_export_chain_splits_into_round_tripping_certs(path: str) -> None:
    data = (SEV / path).read_bytes()
    parts = [data[i : i + SEV_CERT_SIZE] for i in range(0, len(data), SEV_CERT_SIZE)]
    usages = [SevCertificate.unpack(p).usage for p in parts]
    assert usages == [Usage.PEK, Usage.OCA, Usage.CEK]
    assert b"".join(SevCertificate.unpack(p).pack() for p in parts) == data


def test_signature_slot_must_be_512_bytes() -> None:
    cert = sev_cert("platform/rome/pdh.cert")
    with pytest.raises(ValueError):
        replace(cert.signatures[0], sig=bytes(100))


def test_rome_pdh_header_fields() -> None:
    pdh = sev_cert("platform/rome/pdh.cert")
    assert (pdh.api_major, pdh.api_minor) == (0, 22)
    assert pdh.usage is Usage.PDH
    assert pdh.algorithm is Algorithm.ECDH_SHA256
    assert pdh.public_key().curve.name == "secp384r1"


def test_key_ids_match_the_reference_table() -> None:
    ids = {g: (ca_cert(g, "ark").key_id.hex(), ca_cert(g, "ask").key_id.hex()) for g in GENERATIONS}
    assert ids["naples"] == ("1bb987c359494606b174945601c9ea5b", "e139970cfc464377ae61b289e2f9e96e")
    assert ids["turin"] == ("d05c3a8bde484904b49552422ceb3942", "15051693f7304d65a527b4a7f3f7cb77")
    for gen in GENERATIONS:
        assert ca_cert(gen, "ark").usage is Usage.ARK
        assert ca_cert(gen, "ask").usage is Usage.ASK
        assert ca_cert(gen, "ask").certifying_id == ca_cert(gen, "ark").key_id


# -- AMD CA signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("gen", GENERATIONS)
def test_ark_self_signed_and_ask_signed_by_ark(gen: str) -> None:
    ark, ask = ca_cert(gen, "ark"), ca_cert(gen, "ask")
    assert ark.is_signed_by(ark)
    assert ask.is_signed_by(ark)
    assert not ark.is_signed_by(ask)
    assert not ask.is_signed_by(ask)


def test_ask_not_signed_by_another_generations_ark() -> None:
    assert not ca_cert("milan", "ask").is_signed_by(ca_cert("rome", "ark"))
    assert not ca_cert("rome", "ask").is_signed_by(ca_cert("milan", "ark"))


def test_naples_ark_quirk() -> None:
    unsigned = (SEV / "amd-ca-sev/naples/ark.cert.bad").read_bytes()
    signature = (SEV / "amd-ca-sev/naples/ark.cert.sig").read_bytes()
    with pytest.raises(ParseError, match="signature missing"):
        AmdCaCertificate.unpack(unsigned)
    fixed = AmdCaCertificate.unpack(unsigned + signature)
    assert fixed.pack() == (SEV / "amd-ca-sev/naples/ark.cert").read_bytes()
    assert fixed.is_signed_by(fixed)


def test_download_layout_ask_then_ark() -> None:
    data = (SEV / "amd-ca-sev/naples/ask_ark.cert").read_bytes()
    ask, rest = AmdCaCertificate.unpack_prefix(data)
    ark = AmdCaCertificate.unpack(rest)
    assert ask.usage is Usage.ASK and ark.usage is Usage.ARK
    assert ask.is_signed_by(ark)
    with pytest.raises(ParseError, match="trailing"):
        AmdCaCertificate.unpack(data)


@pytest.mark.parametrize("gen", GENERATIONS)
def test_builtin_roots_are_the_pinned_files(gen: str) -> None:
    for role in ("ark", "ask"):
        shipped = (BUILTIN / gen / f"{role}.cert").read_bytes()
        assert shipped == (SEV / f"amd-ca-sev/{gen}/{role}.cert").read_bytes()
        digest = hashlib.sha256(shipped).hexdigest()
        assert f"`{gen}/{role}.cert` | {len(shipped)} |" in (BUILTIN / "PROVENANCE.md").read_text()
        assert digest in (BUILTIN / "PROVENANCE.md").read_text()


def test_ca_signature_flipped_anywhere_in_signed_region_fails() -> None:
    ark = ca_cert("rome", "ark")
    data = ca_cert("rome", "ask").pack()
    for offset in range(0x440):
        try:
            tampered = AmdCaCertificate.unpack(flip(data, offset))
        except ParseError:
            continue
        assert not tampered.is_signed_by(ark), offset


def test_ca_signature_flipped_signature_byte_fails() -> None:
    ark = ca_cert("naples", "ark")
    data = ca_cert("naples", "ask").pack()
    for offset in range(0x240, 0x340, 7):
        assert not AmdCaCertificate.unpack(flip(data, offset)).is_signed_by(ark)


# -- platform certificate signatures --------------------------------------------------------


@pytest.mark.parametrize("chain", ["naples", "rome", "naples-2019"])
def test_platform_links_of_real_chains(chain: str) -> None:
    pdh, pek, oca = (sev_cert(f"platform/{chain}/{n}.cert") for n in ("pdh", "pek", "oca"))
    assert pdh.signed_slot(pek) == 0
    assert pek.signed_slot(oca) == 0
    assert oca.signed_slot(oca) == 0
    assert not pek.is_signed_by(pdh)
    assert not pdh.is_signed_by(oca)


def test_kds_ceks_signed_by_their_ask_only() -> None:
    asks = {g: ca_cert(g, "ask") for g in GENERATIONS}
    expected = {
        "platform/naples/cek.cert": "naples",
        "platform/rome/cek.cert": "rome",
        "platform/naples-2019/cek.cert.fixed": "rome",
    }
    for path, gen in expected.items():
        cek = sev_cert(path)
        assert {g for g, ask in asks.items() if cek.is_signed_by(ask)} == {gen}, path


def test_unsigned_ceks_have_no_ask_signature() -> None:
    chain = (SEV / "platform/naos-api1.51/cert_chain.cert").read_bytes()
    for cek in (sev_cert("platform/naples/cek.uns.cert"), SevCertificate.unpack(chain[-0x824:])):
        assert all(slot.is_empty for slot in cek.signatures)
        assert not any(cek.is_signed_by(ca_cert(g, "ask")) for g in GENERATIONS)


def test_pek_signed_by_cek_in_slot_two() -> None:
    for chain in ("naples", "rome"):
        pek = sev_cert(f"platform/{chain}/pek.cert")
        assert pek.signed_slot(sev_cert(f"platform/{chain}/cek.cert")) == 1
    naples_pek = sev_cert("platform/naples/pek.cert")
    assert naples_pek.signed_slot(sev_cert("platform/naples/cek.uns.cert")) == 1
    assert not naples_pek.is_signed_by(sev_cert("platform/rome/cek.cert"))


def test_old_kds_empty_slot_usage_0x0010() -> None:
    text = (SEV / "platform/naples-2019/cek_ask.cert").read_bytes()
    original = bytes.fromhex(text.decode())
    cek = SevCertificate.unpack(original)
    assert cek.signatures[1].usage == 0x0010
    assert cek.signatures[1].is_empty
    assert cek.pack() == original
    assert cek.is_signed_by(ca_cert("rome", "ask"))
    fixed = (SEV / "platform/naples-2019/cek.cert.fixed").read_bytes()
    assert [i for i in range(len(fixed)) if fixed[i] != original[i]] == [0x61C, 0x61D]


def test_flipped_byte_anywhere_in_signed_region_fails() -> None:
    pek = sev_cert("platform/rome/pek.cert")
    data = sev_cert("platform/rome/pdh.cert").pack()
    assert verifies(data, pek)
    for offset in range(0x414):
        assert not verifies(flip(data, offset), pek), offset


def test_flipped_signature_bytes_fail() -> None:
    pek = sev_cert("platform/naples/pek.cert")
    data = sev_cert("platform/naples/pdh.cert").pack()
    assert verifies(data, pek)
    for offset in [*range(0x414, 0x41C), *range(0x41C, 0x41C + 144, 5), 0x41C + 144, 0x61B]:
        assert not verifies(flip(data, offset), pek), hex(offset)
    cek = sev_cert("platform/rome/cek.cert").pack()
    ask = ca_cert("rome", "ask")
    assert verifies(cek, ask)
    for offset in range(0x414, 0x61C, 17):
        assert not verifies(flip(cek, offset), ask), hex(offset)


# -- minting --------------------------------------------------------------------------------


def test_godh_cert_layout() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    data = ecdh_cert_for_godh(key.public_key()).pack()
    assert len(data) == SEV_CERT_SIZE
    assert struct.unpack_from("<IBBHIII", data) == (1, 0, 0, 0, 0x1003, 3, 2)
    numbers = key.public_key().public_numbers()
    assert data[0x14 : 0x14 + 72] == le_bytes(numbers.x, 72)
    assert data[0x5C : 0x5C + 72] == le_bytes(numbers.y, 72)
    assert not any(data[0xA4:0x414])
    assert struct.unpack_from("<II", data, 0x414) == (0x1000, 0)
    assert struct.unpack_from("<II", data, 0x61C) == (0x1000, 0)
    assert not any(data[0x41C:0x61C]) and not any(data[0x624:])
    assert SevCertificate.unpack(data).public_key().public_numbers() == numbers


def test_sign_ecdsa_matches_independent_layout_check() -> None:
    oca_key = ec.generate_private_key(ec.SECP384R1())
    pek_key = ec.generate_private_key(ec.SECP384R1())
    oca = SevCertificate.from_public_key(oca_key.public_key(), Usage.OCA, Algorithm.ECDSA_SHA256)
    oca = oca.sign_ecdsa(oca_key, Usage.OCA, 0)
    pek = SevCertificate.from_public_key(pek_key.public_key(), Usage.PEK, Algorithm.ECDSA_SHA256)
    pek = pek.sign_ecdsa(oca_key, Usage.OCA, 1)
    data = pek.pack()
    # Decode r/s straight from the bytes (sev-protocol §2.3) and verify with cryptography.
    assert struct.unpack_from("<II", data, 0x61C) == (0x1001, 2)
    r = int.from_bytes(data[0x624 : 0x624 + 72], "little")
    s = int.from_bytes(data[0x624 + 72 : 0x624 + 144], "little")
    oca_key.public_key().verify(encode_dss_signature(r, s), data[:0x414], ec.ECDSA(hashes.SHA256()))
    assert pek.signed_slot(oca) == 1
    assert oca.signed_slot(oca) == 0
    assert not pek.is_signed_by(pek)
    with pytest.raises(ValueError):
        pek.sign_ecdsa(oca_key, Usage.OCA, 2)


@pytest.mark.parametrize("bits", [2048, 4096])
def test_sign_rsa_and_ca_create(bits: int) -> None:
    ark_key = rsa.generate_private_key(65537, bits)
    ask_key = rsa.generate_private_key(65537, bits)
    ark = AmdCaCertificate.create(
        ark_key, key_id=b"A" * 16, certifying_id=b"A" * 16, usage=Usage.ARK, signer=ark_key
    )
    ask = AmdCaCertificate.create(
        ask_key, key_id=b"S" * 16, certifying_id=b"A" * 16, usage=Usage.ASK, signer=ark_key
    )
    digest: hashes.HashAlgorithm = hashes.SHA256() if bits == 2048 else hashes.SHA384()
    pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    raw = ask.pack()
    assert len(raw) == 0x40 + 3 * bits // 8
    # Independent check: signature is LE after header||exp||modulus.
    ark_key.public_key().verify(
        raw[0x40 + 2 * bits // 8 :][::-1], raw[: 0x40 + 2 * bits // 8], pss, digest
    )
    assert AmdCaCertificate.unpack(raw) == ask
    assert ark.is_signed_by(ark) and ask.is_signed_by(ark) and not ask.is_signed_by(ask)

    cek_key = ec.generate_private_key(ec.SECP384R1())
    cek = SevCertificate.from_public_key(cek_key.public_key(), Usage.CEK, Algorithm.ECDSA_SHA256)
    signed = cek.sign_rsa(ask_key)
    data = signed.pack()
    algo = 0x1 if bits == 2048 else 0x101
    assert struct.unpack_from("<II", data, 0x414) == (0x13, algo)
    signature = int.from_bytes(data[0x41C:0x61C], "little").to_bytes(bits // 8, "big")
    ask_key.public_key().verify(signature, data[:0x414], pss, digest)
    assert signed.is_signed_by(ask)
    assert not signed.is_signed_by(ark)
    assert not cek.is_signed_by(ask)


def test_create_rejects_bad_arguments() -> None:
    key = rsa.generate_private_key(65537, 2048)
    with pytest.raises(ValueError):
        AmdCaCertificate.create(
            key, key_id=b"x", certifying_id=b"y" * 16, usage=Usage.ARK, signer=key
        )
    with pytest.raises(ValueError):
        AmdCaCertificate.create(
            key, key_id=b"x" * 16, certifying_id=b"y" * 16, usage=Usage.CEK, signer=key
        )
    with pytest.raises(Unsupported):
        AmdCaCertificate.create(
            rsa.generate_private_key(65537, 3072),
            key_id=b"x" * 16,
            certifying_id=b"x" * 16,
            usage=Usage.ARK,
            signer=key,
        )
    with pytest.raises(Unsupported):
        SevCertificate.from_public_key(
            ec.generate_private_key(ec.SECP384R1()).public_key(), Usage.PEK, Algorithm.RSA_SHA256
        )


# -- parser negatives -----------------------------------------------------------------------


def test_sev_cert_rejects_malformed() -> None:
    data = sev_cert("platform/rome/pek.cert").pack()
    cases = {
        "expected 2084 bytes": data[:-1],
        "version": b"\x02" + data[1:],
        "reserved bytes": data[:6] + b"\x01" + data[7:],
        "key usage: unknown": data[:8] + b"\x05\x00\x00\x00" + data[12:],
        "key algorithm: unknown": data[:12] + b"\x04\x00\x00\x00" + data[16:],
        "NONE": data[:12] + b"\x00\x00\x00\x00" + data[16:],
        "EC curve": data[:16] + b"\x03" + data[17:],
        "EC public key reserved": flip(data, 0x200),
        "signature usage": data[:0x414] + b"\x77" + data[0x415:],
    }
    for message, bad in cases.items():
        with pytest.raises(ParseError, match=message):
            SevCertificate.unpack(bad)


def test_off_curve_point_is_parse_error() -> None:
    data = sev_cert("platform/rome/pek.cert").pack()
    with pytest.raises(ParseError, match="not on the curve"):
        SevCertificate.unpack(flip(data, 0x14)).public_key()


def test_ca_cert_rejects_malformed() -> None:
    data = ca_cert("milan", "ask").pack()
    cases = {
        "shorter than its header": data[:10],
        "version": b"\x02" + data[1:],
        "key usage": data[:0x24] + b"\x02" + data[0x25:],
        "not ARK or ASK": data[:0x24] + struct.pack("<I", Usage.PEK) + data[0x28:],
        "reserved": flip(data, 0x30),
        "key sizes": data[:0x38] + struct.pack("<I", 1024) + data[0x3C:],
        "signature missing": data[:-1],
    }
    for message, bad in cases.items():
        with pytest.raises(ParseError, match=message):
            AmdCaCertificate.unpack(bad)


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    def apply(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(base)
        for offset, value in edits:
            out[offset % len(out)] = value
        return bytes(out)

    edit = st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=4).map(apply)


_PDH = (SEV / "platform/rome/pdh.cert").read_bytes()
_ASK = (SEV / "amd-ca-sev/naples/ask.cert").read_bytes()


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=3 * SEV_CERT_SIZE),
        st.binary(min_size=2084, max_size=2084),
        _mutations(_PDH),
    )
)
def test_sev_cert_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        cert = SevCertificate.unpack(data)
    except ParseError:
        return
    assert cert.pack() == data


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=2000), _mutations(_ASK), _mutations(_ASK[:0x40])))
def test_ca_cert_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        cert, rest = AmdCaCertificate.unpack_prefix(data)
    except ParseError:
        return
    assert cert.pack() + rest == data
    try:
        cert.public_key()
    except ParseError:
        pass


def test_raw_or_base64() -> None:
    data = (SEV / "platform/rome/pdh.cert").read_bytes()
    encoded = base64.b64encode(data)
    assert raw_or_base64(data) == data
    assert raw_or_base64(encoded) == data
    assert raw_or_base64(encoded[:60] + b"\n" + encoded[60:] + b"\n") == data
    with pytest.raises(ParseError):
        raw_or_base64(b"abc")


def test_signature_verify_rejects_tampered_oracle_check() -> None:
    """The real ECDSA slot decodes to a signature cryptography accepts directly."""
    pek = sev_cert("platform/rome/pek.cert")
    pdh = (SEV / "platform/rome/pdh.cert").read_bytes()
    der = SevCertificate.unpack(pdh).signatures[0].ecdsa_der()
    pek.public_key().verify(der, pdh[:0x414], ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        pek.public_key().verify(der, flip(pdh, 0x20)[:0x414], ec.ECDSA(hashes.SHA256()))


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300), st.text(alphabet="ABCabc012+/= \n", max_size=300).map(str.encode)
    )
)
def test_raw_or_base64_raises_only_parse_error(data: bytes) -> None:
    try:
        raw_or_base64(data)
    except ParseError:
        pass
