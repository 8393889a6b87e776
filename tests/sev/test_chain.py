"""Chain verification: every real chain gives exactly the result PROVENANCE.md records."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.certs import SEV_CERT_SIZE, Algorithm, SevCertificate, Usage
from attestd.sev.chain import (
    PlatformChain,
    TrustAnchor,
    builtin_anchors,
    check_chain,
    verify_chain,
)
from tests.conftest import TESTDATA
from tests.sev.minted import minted

PLATFORM = TESTDATA / "sev" / "platform"
ANCHORS = builtin_anchors()


def read(path: str) -> bytes:
    return (PLATFORM / path).read_bytes()


def cert(path: str) -> SevCertificate:
    return SevCertificate.unpack(read(path))


def real_chain(name: str, cek: str = "cek.cert") -> PlatformChain:
    pieces = read(f"{name}/pek.cert") + read(f"{name}/oca.cert") + read(f"{name}/{cek}")
    return PlatformChain.from_export(read(f"{name}/pdh.cert"), pieces)


def anchor(name: str) -> TrustAnchor:
    return next(a for a in ANCHORS if a.name == name)


def failure(chain: PlatformChain, **kwargs: object) -> str:
    with pytest.raises(ChainInvalid) as exc:
        verify_chain(chain, ANCHORS, **kwargs)  # type: ignore[arg-type]
    return exc.value.message


PLATFORM_LINKS = (
    "OCA is self-signed (slot 1)",
    "PEK is signed by the OCA (slot 1)",
    "PEK is signed by the CEK (slot 2)",
    "PDH is signed by the PEK (slot 1)",
)
FULL_LINKS = (
    "ARK ({gen}, key id {ark}) is self-signed",
    "ASK ({gen}, key id {ask}) is signed by the {gen} ARK",
    "CEK is signed by the {gen} ASK (slot 1)",
    "OCA is self-signed (slot 1)",
    "PEK is signed by the OCA (slot 1)",
    "PEK is signed by the CEK (slot 2)",
    "PDH is signed by the PEK (slot 1)",
)


# -- builtin anchors ------------------------------------------------------------------------


def test_builtin_anchors_are_the_five_generations() -> None:
    assert [a.name for a in ANCHORS] == ["naples", "rome", "milan", "genoa", "turin"]
    for a in ANCHORS:
        assert a.ark.usage is Usage.ARK and a.ask.usage is Usage.ASK
        assert a.ask.certifying_id == a.ark.key_id
    assert anchor("naples").ark.modulus_size == 2048
    assert {a.ark.modulus_size for a in ANCHORS[1:]} == {4096}


def test_anchor_check_names_the_broken_link() -> None:
    milan, rome = anchor("milan"), anchor("rome")
    assert len(milan.check()) == 2
    with pytest.raises(ChainInvalid, match="the milan ASK is not signed by the milan ARK"):
        TrustAnchor("milan", milan.ark, rome.ask).check()
    with pytest.raises(ChainInvalid, match="the x ARK is not self-signed"):
        TrustAnchor("x", replace(milan.ark, key_id=bytes(16)), milan.ask).check()
    with pytest.raises(ChainInvalid, match="the x ARK has usage ASK"):
        TrustAnchor("x", milan.ask, milan.ask).check()
    with pytest.raises(ChainInvalid, match="the x ASK has usage ARK"):
        TrustAnchor("x", milan.ark, milan.ark).check()


# -- real chains: positive ------------------------------------------------------------------


@pytest.mark.parametrize("gen", ["naples", "rome"])
def test_real_chain_verifies_end_to_end(gen: str) -> None:
    verified = verify_chain(real_chain(gen), ANCHORS)
    a = anchor(gen)
    expected = tuple(
        line.format(gen=gen, ark=a.ark.key_id.hex(), ask=a.ask.key_id.hex()) for line in FULL_LINKS
    )
    assert verified.generation == gen
    assert verified.links == expected
    assert verified.pdh.pack() == read(f"{gen}/pdh.cert")
    assert (
        verified.pdh_key().public_numbers() == cert(f"{gen}/pdh.cert").public_key().public_numbers()
    )


def test_naples_unsigned_cek_with_kds_cek() -> None:
    chain = real_chain("naples", "cek.uns.cert")
    verified = verify_chain(chain, ANCHORS, signed_cek=cert("naples/cek.cert"))
    assert verified.generation == "naples"
    assert "PEK is signed by the CEK (slot 2)" in verified.links


def test_pinned_generation_and_oca() -> None:
    chain = real_chain("rome")
    verified = verify_chain(chain, ANCHORS, generation="rome", pinned_oca=cert("rome/oca.cert"))
    assert verified.generation == "rome"
    assert "OCA is the pinned OCA" in verified.links
    assert "OCA is self-signed (slot 1)" not in verified.links


def test_pek_signature_slots_in_either_order() -> None:
    chain = real_chain("rome")
    s1, s2 = chain.pek.signatures
    swapped = replace(chain, pek=replace(chain.pek, signatures=(s2, s1)))
    verified = verify_chain(swapped, ANCHORS)
    assert "PEK is signed by the OCA (slot 2)" in verified.links
    assert "PEK is signed by the CEK (slot 1)" in verified.links


def test_naples_2019_export_with_its_own_cek() -> None:
    chain = PlatformChain.from_export(
        read("naples-2019/pdh.cert"), read("naples-2019/pek_oca_cek.cert")
    )
    assert chain.pek.pack() == read("naples-2019/pek.cert")
    assert chain.oca.pack() == read("naples-2019/oca.cert")
    report = check_chain(chain, ANCHORS, generation="naples")
    assert report.failure == "CEK is not signed by the naples ASK"
    assert report.links == ()
    # Everything below the CEK verifies (PROVENANCE: PEK/PDH/OCA valid with this CEK).
    assert report.unanchored == PLATFORM_LINKS


# -- real chains: negative ------------------------------------------------------------------


def test_unsigned_ceks_cannot_be_anchored() -> None:
    message = failure(real_chain("naples", "cek.uns.cert"))
    assert message.startswith("CEK is not signed by any ASK: it has no ASK signature")
    naos = PlatformChain.from_export(
        read("naos-api1.51/pdh.cert"), read("naos-api1.51/cert_chain.cert")
    )
    assert failure(naos).startswith("CEK is not signed by any ASK")
    for gen in ("milan", "genoa"):
        assert failure(naos, generation=gen) == f"CEK is not signed by the {gen} ASK"


def test_naos_platform_links_verify_below_the_unsigned_cek() -> None:
    naos = PlatformChain.from_export(
        read("naos-api1.51/pdh.cert"), read("naos-api1.51/cert_chain.cert")
    )
    report = check_chain(naos, ANCHORS)
    assert not report.ok and report.generation is None and report.links == ()
    assert report.unanchored == PLATFORM_LINKS
    unsigned = check_chain(real_chain("naples", "cek.uns.cert"), ANCHORS)
    assert unsigned.unanchored == PLATFORM_LINKS
    # A broken platform link stops the diagnosis list at that link.
    broken = check_chain(replace(naos, pdh=real_chain("rome").pdh), ANCHORS)
    assert broken.unanchored == PLATFORM_LINKS[:3]
    assert check_chain(real_chain("rome"), ANCHORS).unanchored == ()


def test_wrong_generation_cek_fixture() -> None:
    chain = PlatformChain.from_export(
        read("naples-2019/pdh.cert"), read("naples-2019/pek_oca_cek.cert")
    )
    fixed = cert("naples-2019/cek.cert.fixed")
    # As the platform CEK: anchors to Rome, then cannot have signed this Naples PEK.
    report = check_chain(replace(chain, cek=fixed), ANCHORS)
    assert report.generation == "rome"
    assert report.failure == "PEK is not signed by the CEK"
    assert failure(replace(chain, cek=fixed), generation="naples") == (
        "CEK is not signed by the naples ASK"
    )
    # As the "signed CEK" for this platform: a different key.
    assert failure(chain, signed_cek=fixed) == "signed CEK does not hold the platform CEK's key"


def test_naples_cek_under_rome_ask() -> None:
    chain = real_chain("naples")
    assert failure(chain, generation="rome") == "CEK is not signed by the rome ASK"
    with pytest.raises(ChainInvalid, match=r"not signed by any trusted ASK \(tried: rome\)"):
        verify_chain(chain, [anchor("rome")])


def test_swapped_signers() -> None:
    naples, rome = real_chain("naples"), real_chain("rome")
    assert failure(replace(naples, oca=rome.oca)) == "PEK is not signed by the OCA"
    assert failure(replace(naples, pek=rome.pek)) == "PEK is not signed by the OCA"
    assert failure(replace(naples, pdh=rome.pdh)) == "PDH is not signed by the PEK"
    assert (
        failure(replace(naples, pdh=naples.pek, pek=naples.pdh))
        == "PEK has usage PDH, expected PEK"
    )
    assert failure(replace(naples, oca=naples.pek)) == "OCA has usage PEK, expected OCA"
    assert failure(replace(naples, cek=naples.oca)) == "CEK has usage OCA, expected CEK"
    assert failure(naples, pinned_oca=rome.oca) == "OCA is not the pinned OCA"
    assert failure(naples, generation="sim") == "no trust anchor named 'sim'"


def test_anchor_with_forged_ask_key_id_fails_at_the_ask_link() -> None:
    naples = anchor("naples")
    forged = TrustAnchor("naples", naples.ark, replace(naples.ask, key_id=bytes(16)))
    with pytest.raises(ChainInvalid, match=r"^the naples ASK is not signed by the naples ARK$"):
        verify_chain(real_chain("naples"), [forged])


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x80]) + data[offset + 1 :]


@pytest.mark.parametrize("role", ["pdh", "pek", "oca", "cek"])
def test_flipped_byte_in_any_signed_region_names_the_link(role: str) -> None:
    chain = real_chain("naples")
    original = getattr(chain, role).pack()
    name = role.upper()
    checked = 0
    # Header and key (0x000-0x0A4): every byte; the rest of the body is reserved.
    for offset in range(0xA4):
        try:
            tampered = SevCertificate.unpack(_flip(original, offset))
        except ParseError:
            continue
        report = check_chain(replace(chain, **{role: tampered}), ANCHORS)
        assert report.failure is not None, hex(offset)
        # The first failing link is the tampered cert's own (for a CEK: its ASK link).
        assert report.failure.startswith(name), (hex(offset), report.failure)
        checked += 1
    assert checked >= 140
    for offset in range(0xA4, 0x414, 3):
        with pytest.raises(ParseError, match="reserved"):
            SevCertificate.unpack(_flip(original, offset))


def test_from_export_rejects_wrong_sizes() -> None:
    with pytest.raises(ParseError, match="PEK"):
        PlatformChain.from_export(read("rome/pdh.cert"), read("rome/pek.cert"))
    with pytest.raises(ParseError):
        PlatformChain.from_export(b"", read("naos-api1.51/cert_chain.cert"))


# -- minted chains (own test anchor) --------------------------------------------------------


def test_minted_chain_verifies_only_with_its_anchor_and_signed_cek() -> None:
    m = minted()
    verified = verify_chain(m.chain, [*ANCHORS, m.anchor], signed_cek=m.signed_cek)
    assert verified.generation == "sim"
    assert len(verified.links) == 7
    assert failure(m.chain, signed_cek=m.signed_cek).startswith(
        "CEK is not signed by any trusted ASK"
    )
    with pytest.raises(ChainInvalid, match="CEK is not signed by any ASK"):
        verify_chain(m.chain, [m.anchor])
    exported = PlatformChain.from_export(
        m.chain.pdh.pack(), m.chain.pek.pack() + m.chain.oca.pack() + m.signed_cek.pack()
    )
    assert verify_chain(exported, [m.anchor]).generation == "sim"


def test_minted_chain_rejects_wrong_algorithms_and_curves() -> None:
    m = minted()
    anchors = [m.anchor]
    pdh_as_ecdsa = replace(m.chain.pdh, algorithm=Algorithm.ECDSA_SHA256)
    with pytest.raises(ChainInvalid, match=r"^PDH has algorithm ECDSA_SHA256$"):
        verify_chain(replace(m.chain, pdh=pdh_as_ecdsa), anchors, signed_cek=m.signed_cek)
    p256 = ec.generate_private_key(ec.SECP256R1())
    small_oca = SevCertificate.from_public_key(
        p256.public_key(), Usage.OCA, Algorithm.ECDSA_SHA256
    ).sign_ecdsa(p256, Usage.OCA, 0)
    with pytest.raises(ChainInvalid, match=r"^OCA key is not a P-384 key$"):
        verify_chain(replace(m.chain, oca=small_oca), anchors, signed_cek=m.signed_cek)
    unsigned_pdh = replace(m.chain.pdh, signatures=m.chain.cek.signatures)
    with pytest.raises(ChainInvalid, match=r"^PDH is not signed by the PEK$"):
        verify_chain(replace(m.chain, pdh=unsigned_pdh), anchors, signed_cek=m.signed_cek)


# -- properties -----------------------------------------------------------------------------

_ROME_PDH = read("rome/pdh.cert")
_ROME_EXPORT = read("rome/pek.cert") + read("rome/oca.cert") + read("rome/cek.cert")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2 * SEV_CERT_SIZE), st.binary(max_size=4 * SEV_CERT_SIZE))
def test_from_export_raises_only_parse_error(pdh: bytes, export: bytes) -> None:
    with pytest.raises(ParseError):
        PlatformChain.from_export(pdh, export)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(
        st.tuples(st.integers(0, 0x413), st.integers(1, 255)),
        min_size=1,
        max_size=3,
        unique_by=lambda edit: edit[0],
    ),
)
def test_any_change_to_a_signed_body_is_refused(which: int, edits: list[tuple[int, int]]) -> None:
    blobs = bytearray(_ROME_PDH + _ROME_EXPORT)
    base = which * SEV_CERT_SIZE
    for offset, mask in edits:
        blobs[base + offset] ^= mask
    try:
        chain = PlatformChain.from_export(
            bytes(blobs[:SEV_CERT_SIZE]), bytes(blobs[SEV_CERT_SIZE:])
        )
    except ParseError:
        return
    with pytest.raises(ChainInvalid):
        verify_chain(chain, ANCHORS)
