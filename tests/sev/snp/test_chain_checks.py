"""Certificate checks beyond signatures: validity dates at the verification time, issuer
names chaining (RFC 5280), and the ARK's CRL (revoked ASK/ASVK, signature, freshness)."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.snp.certs import (
    ISSUER_NAME_MISMATCH,
    SnpAnchor,
    SnpCertificate,
    SnpCrl,
    builtin_snp_anchors,
)
from attestd.sev.snp.report import SigningKey, extract_report
from attestd.sev.snp.verify import (
    LINK_CRL,
    LINK_CRL_MISSING,
    LINK_NAME,
    LINK_REVOKED,
    LINK_VALIDITY,
    REVOCATION_CHECKED,
    REVOCATION_MISSING,
    REVOCATION_STALE,
    ReportCheck,
    check_report,
)
from attestd.sim import snp as sim
from attestd.sim.snp import ReportRequest, SnpPlatform
from tests.sev.snp.vectors import BY_NAME, sim_platform

UTC = datetime.UTC
ANCHORS = builtin_snp_anchors()
VLEK = BY_NAME["trustee-vlek-v3-vmpl1"]
NOW = datetime.datetime.now(UTC)


def _real(vector_name: str, at: datetime.datetime) -> ReportCheck:
    vector = BY_NAME[vector_name]
    return check_report(extract_report(vector.raw_file()), ANCHORS, leaf=vector.leaf(), at=at)


# --------------------------------------------------------------------- validity dates


def test_the_real_vlek_verifies_while_valid_and_is_refused_once_expired() -> None:
    cert = SnpCertificate.from_der(VLEK.leaf())
    assert (cert.not_before.date(), cert.not_after.date()) == (
        datetime.date(2024, 12, 10),
        datetime.date(2025, 12, 10),
    )
    during = _real(VLEK.name, datetime.datetime(2025, 6, 1, tzinfo=UTC))
    assert during.ok, during.failure
    assert any("VLEK is valid at 2025-06-01" in link for link in during.links)
    after = _real(VLEK.name, cert.not_after + datetime.timedelta(seconds=1))
    assert after.code == LINK_VALIDITY and "the VLEK expired at 2025-12-10" in (after.failure or "")
    before = _real(VLEK.name, cert.not_before - datetime.timedelta(seconds=1))
    assert before.code == LINK_VALIDITY and "not valid before" in (before.failure or "")


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_real_chain_is_refused_after_its_ark_expired(name: str) -> None:
    """2050: past every AMD ARK (2045-2048); the anchor's own certificate is named."""
    result = _real(name, datetime.datetime(2050, 1, 1, tzinfo=UTC))
    assert result.code == LINK_VALIDITY, result.failure
    assert " ARK expired" in (result.failure or "") or " ASK expired" in (result.failure or "")


def test_the_verification_time_defaults_to_now() -> None:
    platform = sim_platform()
    raw = platform.report(ReportRequest(report_data=bytes(64), measurement=bytes(48)))
    result = check_report(raw, (platform.anchor(),), leaf=platform.vcek)
    assert result.ok and any(f"valid at {NOW:%Y-%m-%d}" in link for link in result.links)


def test_anchor_check_names_an_expired_intermediate() -> None:
    genoa = next(a for a in ANCHORS if a.name == "genoa")  # ARK of 2022-01, ASK of 2022-10
    with pytest.raises(ChainInvalid) as info:
        genoa.check(datetime.datetime(2022, 6, 1, tzinfo=UTC))
    assert info.value.reasons == ["certificate_expired"]
    assert "the genoa ASK is not valid before 2022-10-31" in info.value.message
    assert genoa.check(datetime.datetime(2023, 6, 1, tzinfo=UTC))[-1].startswith("the genoa ARK")


# -------------------------------------------------------------------- name chaining


def _platform(ask_issuer: str = "ARK-Milan", vcek_issuer: str = "SEV-Milan") -> SnpPlatform:
    """A platform whose ASK and VCEK signatures verify but whose issuer names may not chain."""
    ark_key, ask_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab"
    )
    ark = sim._ca_cert("ARK-Milan", "ARK-Milan", ark_key, ark_key)
    ask = sim._ca_cert("SEV-Milan", ask_issuer, ask_key, ark_key)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    base = sim_platform()
    extensions = [
        sim._amd_ext("1", sim._der.encode_integer(0)),
        sim._amd_ext("2", sim._ia5("Milan-B0")),
        *sim._spl_extensions(base.tcb, base.generation),
        sim._amd_ext("4", base.chip_id),
    ]
    vcek = sim._leaf_cert("SEV-VCEK", vcek_issuer, vcek_key.public_key(), ask_key, extensions)
    return dataclasses.replace(
        base,
        name="names",
        ark=ark,
        ask=ask,
        asvk=ask,
        vcek=vcek,
        vlek=None,
        keys={SigningKey.VCEK: vcek_key},
        ark_key=ark_key,
    )


def _check(platform: SnpPlatform, **kwargs: object) -> ReportCheck:
    raw = platform.report(ReportRequest(report_data=bytes(64), measurement=bytes(48)))
    anchor = SnpAnchor("names", *(SnpCertificate.from_der(d) for d in (platform.ark, platform.ask)))
    return check_report(raw, (anchor,), leaf=platform.vcek, **kwargs)  # type: ignore[arg-type]


def test_names_that_chain_verify() -> None:
    assert _check(_platform()).ok


def test_a_vcek_whose_issuer_is_not_the_ask_subject_is_refused() -> None:
    result = _check(_platform(vcek_issuer="SEV-Genoa"))
    assert result.code == LINK_NAME == ISSUER_NAME_MISMATCH
    assert "VCEK's issuer is not the names ASK's subject" in (result.failure or "")


def test_an_ask_whose_issuer_is_not_the_ark_subject_is_refused() -> None:
    platform = _platform(ask_issuer="ARK-Genoa")
    with pytest.raises(ChainInvalid) as info:
        SnpAnchor(
            "names", SnpCertificate.from_der(platform.ark), SnpCertificate.from_der(platform.ask)
        ).check()
    assert info.value.reasons == [ISSUER_NAME_MISMATCH]
    assert _check(platform).code == LINK_NAME


def test_real_chains_chain_by_name() -> None:
    for anchor in ANCHORS:
        assert anchor.ark.issued_by_name(anchor.ark)
        assert anchor.ask.issued_by_name(anchor.ark)
        assert anchor.asvk is not None and anchor.asvk.issued_by_name(anchor.ark)
    milan = next(a for a in ANCHORS if a.name == "milan")
    for vector in BY_NAME.values():
        cert = SnpCertificate.from_der(vector.leaf())
        signer = milan.asvk if vector.signing_key == "vlek" else milan.ask
        assert signer is not None and cert.issued_by_name(signer), vector.name


def test_the_fallback_reader_reads_names_and_dates_like_cryptography() -> None:
    for vector in BY_NAME.values():
        der = vector.leaf()
        main, fallback = (
            SnpCertificate.from_der(der),
            SnpCertificate.from_der(der, force_fallback=True),
        )
        assert fallback.fallback
        for attr in ("issuer", "subject", "not_before", "not_after"):
            assert getattr(main, attr) == getattr(fallback, attr), (vector.name, attr)


# ---------------------------------------------------------------------------- CRLs


def _crl(platform: SnpPlatform, **kwargs: object) -> dict[str, SnpCrl]:
    return {platform.name: SnpCrl.from_der(platform.crl(**kwargs))}  # type: ignore[arg-type]


def _sim_check(key: SigningKey = SigningKey.VCEK, **kwargs: object) -> ReportCheck:
    platform = sim_platform()
    raw = platform.report(
        ReportRequest(report_data=bytes(64), measurement=bytes(48), signing_key=key)
    )
    return check_report(
        raw,
        (*ANCHORS, platform.anchor()),
        leaf=platform.leaf(key),
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_crl_parses_as_cryptography_reads_it() -> None:
    platform = sim_platform()
    crl = SnpCrl.from_der(platform.crl(revoke=("ask", "asvk")))
    anchor = platform.anchor()
    assert crl.signed_by(anchor.ark) and crl.revokes(anchor.ask)
    assert anchor.asvk is not None and crl.revokes(anchor.asvk)
    assert crl.next_update is not None and crl.next_update - crl.this_update == sim.CRL_VALIDITY
    assert not crl.signed_by(ANCHORS[0].ark)
    for bad in (b"", b"\x30\x03\x02\x01\x00", platform.ark, b"-----BEGIN X509 CRL-----\nxx\n"):
        with pytest.raises(ParseError):
            SnpCrl.from_der(bad)


def test_a_fresh_crl_not_listing_the_ask_is_checked() -> None:
    result = _sim_check(crls=_crl(sim_platform()))
    assert result.ok and result.verified is not None
    assert result.verified.revocation == REVOCATION_CHECKED
    assert any("ASK is not revoked" in link for link in result.links)


def test_a_revoked_ask_is_refused_and_a_revoked_asvk_refuses_only_vleks() -> None:
    platform = sim_platform()
    assert _sim_check(crls=_crl(platform, revoke=("ask",))).code == LINK_REVOKED
    assert _sim_check(SigningKey.VLEK, crls=_crl(platform, revoke=("ask",))).ok
    result = _sim_check(SigningKey.VLEK, crls=_crl(platform, revoke=("asvk",)))
    assert result.code == LINK_REVOKED and "ASVK is revoked" in (result.failure or "")
    assert _sim_check(crls=_crl(platform, revoke=("asvk",))).ok


def test_a_crl_of_another_ark_is_refused() -> None:
    other = SnpPlatform.create(name="other", rsa_bits=2048)
    crls = {sim_platform().name: SnpCrl.from_der(other.crl())}
    assert _sim_check(crls=crls).code == LINK_CRL


def test_a_flipped_crl_is_refused() -> None:
    der = bytearray(sim_platform().crl())
    der[-10] ^= 1  # in the signature
    crls = {sim_platform().name: SnpCrl.from_der(bytes(der))}
    assert _sim_check(crls=crls).code == LINK_CRL


def test_a_missing_or_stale_crl_refuses_only_when_required() -> None:
    missing = _sim_check()
    assert missing.ok and missing.verified is not None
    assert missing.verified.revocation == REVOCATION_MISSING
    assert any("revocation of the sim-milan ASK NOT checked" in link for link in missing.links)
    assert _sim_check(require_crl=True).code == LINK_CRL_MISSING
    old = datetime.datetime.now(UTC) - datetime.timedelta(days=30)
    stale = _crl(sim_platform(), this_update=old)
    result = _sim_check(crls=stale)
    assert result.ok and result.verified is not None
    assert result.verified.revocation == REVOCATION_STALE
    assert _sim_check(crls=stale, require_crl=True).code == LINK_CRL_MISSING
    revoked_stale = _crl(sim_platform(), this_update=old, revoke=("ask",))
    assert _sim_check(crls=revoked_stale).code == LINK_REVOKED  # revocation is permanent


@given(data=st.binary(max_size=400), flip=st.integers(0, 10_000))
@settings(max_examples=200, deadline=None)
def test_crl_parser_raises_only_parse_error(data: bytes, flip: int) -> None:
    der = bytearray(sim_platform().crl())
    der[flip % len(der)] ^= 1 << (flip % 8)
    for candidate in (data, bytes(der)):
        try:
            SnpCrl.from_der(candidate)
        except ParseError:
            pass
