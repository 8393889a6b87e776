"""SNP report verification and the owner's decision, on the real vectors and the simulator."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwe, jwk

from attestd.errors import PolicyViolation
from attestd.sev.snp import _der
from attestd.sev.snp.certs import builtin_snp_anchors
from attestd.sev.snp.report import (
    FirmwareVersion,
    Generation,
    SigningKey,
    TcbVersion,
    extract_report,
)
from attestd.sev.snp.verify import (
    LINK_CERTIFICATE,
    LINK_CHAIN,
    LINK_CHIP_ID,
    LINK_REPORT,
    LINK_SIGNATURE,
    LINK_SIGNING_KEY,
    LINK_TCB,
    ReportCheck,
    SnpReferencePolicy,
    TeeKey,
    VerifiedAttestation,
    VerifiedReport,
    accept,
    check_report,
    decide,
    report_data_binding,
)
from attestd.sim.snp import ReportRequest
from tests.sev.snp.vectors import (
    BY_NAME,
    SNP,
    VECTORS,
    Vector,
    genoa_from_trustee_json,
    sim_platform,
)

ANCHORS = builtin_snp_anchors()
#: When the real vectors were valid (the Trustee VLEK lived 2024-12-10 .. 2025-12-10).
AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
REFUSED = {
    LINK_REPORT,
    LINK_SIGNING_KEY,
    LINK_CERTIFICATE,
    LINK_CHAIN,
    LINK_SIGNATURE,
    LINK_TCB,
    LINK_CHIP_ID,
    "generation_mismatch",
    "signature_algorithm_unsupported",
    "issuer_name_mismatch",
    "certificate_expired",
}


def check(vector: Vector, raw: bytes | None = None, leaf: bytes | None = None) -> ReportCheck:
    return check_report(
        extract_report(vector.raw_file()) if raw is None else raw,
        ANCHORS,
        leaf=vector.leaf() if leaf is None else leaf,
        at=AT,
    )


def verified(vector: Vector) -> VerifiedReport:
    result = check(vector)
    assert result.verified is not None, result.failure
    return result.verified


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_every_real_report_verifies(vector: Vector) -> None:
    result = check(vector)
    assert result.ok, result.failure
    assert result.verified is not None
    assert result.verified.generation is Generation.MILAN
    assert result.verified.anchor == "milan"
    role = "ASK" if vector.signing_key == "vcek" else "ASVK"
    leaf = vector.signing_key.upper()
    assert f"{leaf} is signed by the milan {role}" in result.links
    assert f"report is signed by the {leaf} (ECDSA P-384 SHA-384)" in result.links
    assert f"REPORTED_TCB equals the {leaf}'s SPLs" in result.links
    chip = "CHIP_ID equals the VCEK's hwID" if leaf == "VCEK" else "CHIP_ID is not bound"
    assert any(link.startswith(chip) for link in result.links)


def test_vlek_report_at_vmpl1_through_the_asvk() -> None:
    v = verified(BY_NAME["trustee-vlek-v3-vmpl1"])
    assert v.signing_key is SigningKey.VLEK and v.report.vmpl == 1
    cloud = SnpReferencePolicy(
        allow_provisional_firmware=True
    )  # CURRENT microcode 220 > COMMITTED 219
    assert [r.code for r in decide(v, replace(cloud, max_vmpl=0))] == ["vmpl_too_high"]
    assert decide(v, replace(cloud, max_vmpl=1)) == []
    assert [r.code for r in decide(v, SnpReferencePolicy(max_vmpl=1))] == ["provisional_firmware"]
    only_vcek = replace(cloud, max_vmpl=1, signing_keys=(SigningKey.VCEK,))
    assert [r.code for r in decide(v, only_vcek)] == ["signing_key_not_allowed"]


def test_debug_report_is_refused_by_a_no_debug_policy() -> None:
    v = verified(BY_NAME["go-sev-guest-debug"])
    assert [r.code for r in decide(v, SnpReferencePolicy(guest_policy=0x30000))] == [
        "policy_debug_not_allowed"
    ]
    assert decide(v, SnpReferencePolicy(guest_policy=0xB0000)) == []
    with pytest.raises(PolicyViolation) as exc:
        accept(v, SnpReferencePolicy())
    assert exc.value.reasons == [
        "policy_debug_not_allowed: the policy allows debug; the owner does not"
    ]


def test_genoa_report_rebuilt_from_trustee_json_verifies() -> None:
    raw, vcek = genoa_from_trustee_json()
    result = check_report(raw, ANCHORS, at=AT, leaf=vcek)
    assert result.verified is not None, result.failure
    assert result.verified.generation is Generation.GENOA
    assert "VCEK is signed by the genoa ASK" in result.links
    pinned = check_report(raw, ANCHORS, at=AT, leaf=vcek, generation=Generation.MILAN)
    assert pinned.code == "generation_mismatch"
    assert pinned.failure == (
        "generation mismatch: the report's CPUID says genoa, the certificate's productName "
        "says genoa, the trust anchor says genoa, the caller says milan"
    )


def test_wrong_or_missing_certificates_are_named() -> None:
    vcek_report = BY_NAME["trustee-milan-v2"]
    other_chip = (SNP / "vcek_milan.der").read_bytes()  # same TCB, another chip's key
    result = check(vcek_report, leaf=other_chip)
    assert (result.code, result.failure) == (
        LINK_SIGNATURE,
        "the report signature does not verify with the VCEK",
    )
    assert "VCEK is signed by the milan ASK" in result.links
    fake = (SNP / "trustee/test-vcek-invalid-legacy.der").read_bytes()
    assert check(vcek_report, leaf=fake).code == LINK_CHAIN
    vlek = (SNP / "trustee/test-vlek.der").read_bytes()
    assert check(vcek_report, leaf=vlek).code == LINK_CERTIFICATE
    assert check(BY_NAME["trustee-vlek-v3-vmpl1"], leaf=other_chip).code == LINK_CERTIFICATE
    raw = extract_report(vcek_report.raw_file())
    missing = check_report(raw, ANCHORS, at=AT)
    assert (missing.code, missing.failure) == (LINK_CERTIFICATE, "no VCEK certificate given")
    assert check_report(raw, ANCHORS, at=AT, leaf=b"garbage").code == LINK_CERTIFICATE
    assert (
        check_report(raw, ANCHORS, at=AT, leaf=vcek_report.leaf(), anchor="genoa").code
        == LINK_CHAIN
    )
    turin = (SNP / "vcek_turin.der").read_bytes()
    assert check(vcek_report, leaf=turin).code in {LINK_SIGNATURE, "generation_mismatch"}
    assert check_report(raw[:-1], ANCHORS, at=AT, leaf=vcek_report.leaf()).code == LINK_REPORT


def test_verified_values_cannot_be_forged() -> None:
    v = verified(BY_NAME["virtee-milan-hex"])
    with pytest.raises(TypeError):
        replace(v, _token=None)
    with pytest.raises(TypeError):
        VerifiedReport(v.raw, v.report, v.generation, "milan", SigningKey.VCEK, v.certificate, ())
    with pytest.raises(TypeError):
        VerifiedAttestation(v, None)


# ------------------------------------------------------------------ single-bit flips

VCEK_VECTOR = BY_NAME["trustee-milan-v2"]
VLEK_VECTOR = BY_NAME["trustee-vlek-v3-vmpl1"]
FIELDS = {  # offset, size of signed fields flipped bit by bit
    "policy": (0x008, 8),
    "vmpl": (0x030, 4),
    "key_info": (0x048, 4),
    "report_data": (0x050, 64),
    "measurement": (0x090, 48),
    "host_data": (0x0C0, 32),
    "reported_tcb": (0x180, 8),
    "chip_id": (0x1A0, 64),
}


def flipped(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def assert_refused(result: ReportCheck) -> None:
    assert not result.ok and result.verified is None
    assert result.code in REFUSED and result.failure


@pytest.mark.parametrize("vector", [VCEK_VECTOR, VLEK_VECTOR], ids=lambda v: v.name)
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_bit_of_signed_fields_is_refused(vector: Vector, field: str) -> None:
    raw = extract_report(vector.raw_file())
    leaf = vector.leaf()
    offset, size = FIELDS[field]
    for bit in range(8 * offset, 8 * (offset + size)):
        result = check_report(flipped(raw, bit), ANCHORS, at=AT, leaf=leaf)
        assert_refused(result)
        if result.code == LINK_SIGNATURE:
            assert "report is signed by" not in " ".join(result.links)


def test_every_bit_of_the_signature_is_refused() -> None:
    raw = extract_report(VCEK_VECTOR.raw_file())
    leaf = VCEK_VECTOR.leaf()
    for bit in range(8 * 0x2A0, 8 * (0x2A0 + 144)):
        result = check_report(flipped(raw, bit), ANCHORS, at=AT, leaf=leaf)
        assert_refused(result)
        assert result.code == LINK_SIGNATURE


@settings(max_examples=150, deadline=None)
@given(st.integers(8 * 0x2A0, 8 * 0x4A0 - 1))
def test_any_bit_of_the_vlek_signature_area_is_refused(bit: int) -> None:
    raw = extract_report(VLEK_VECTOR.raw_file())
    result = check_report(flipped(raw, bit), ANCHORS, at=AT, leaf=VLEK_VECTOR.leaf())
    assert_refused(result)
    assert result.code == (LINK_SIGNATURE if bit < 8 * (0x2A0 + 144) else LINK_REPORT)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 8 * 0x4A0 - 1))
def test_any_bit_of_the_report_is_refused(bit: int) -> None:
    raw = extract_report(VCEK_VECTOR.raw_file())
    assert_refused(check_report(flipped(raw, bit), ANCHORS, at=AT, leaf=VCEK_VECTOR.leaf()))


def _cert_outside_tbs_bits(der: bytes) -> list[int]:
    outer = _der.read_one(der, _der.SEQUENCE, "c")
    tbs = _der.children(outer.value)[0]
    header = len(outer.raw) - len(outer.value)
    tbs_end = header + len(tbs.raw)
    return [*range(8 * header), *range(8 * tbs_end, 8 * len(der))]


def test_every_bit_outside_the_leaf_tbs_is_refused() -> None:
    """The VCEK's unsigned parts: header, signature algorithm, signature (the VLEK: sampled)."""
    raw = extract_report(VCEK_VECTOR.raw_file())
    der = VCEK_VECTOR.leaf()
    for bit in _cert_outside_tbs_bits(der):
        assert_refused(check_report(raw, ANCHORS, at=AT, leaf=flipped(der, bit)))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_bit_of_the_leaf_certificate_is_refused(data: st.DataObject) -> None:
    vector = data.draw(st.sampled_from([VCEK_VECTOR, VLEK_VECTOR]))
    der = vector.leaf()
    outside = data.draw(st.booleans())
    bits = _cert_outside_tbs_bits(der) if outside else range(8 * len(der))
    bit = data.draw(st.sampled_from(bits))
    raw = extract_report(vector.raw_file())
    assert_refused(check_report(raw, ANCHORS, at=AT, leaf=flipped(der, bit)))


# ------------------------------------------------------------ simulator: every reason


def sim_report(**changes: object) -> tuple[bytes, bytes]:
    platform = sim_platform()
    request = ReportRequest(report_data=bytes(64), measurement=b"\x11" * 48)
    request = replace(request, **changes)  # type: ignore[arg-type]
    return platform.report(request), platform.leaf(request.signing_key)


def sim_verified(**changes: object) -> VerifiedReport:
    raw, leaf = sim_report(**changes)
    platform = sim_platform()
    result = check_report(raw, (*ANCHORS, platform.anchor()), leaf=leaf)
    assert result.verified is not None, result.failure
    return result.verified


def codes(v: VerifiedReport, policy: SnpReferencePolicy, **kw: bytes) -> list[str]:
    return [r.code for r in decide(v, policy, **kw)]


def test_simulated_report_is_not_trusted_without_its_anchor() -> None:
    raw, leaf = sim_report()
    result = check_report(raw, ANCHORS, at=AT, leaf=leaf)
    assert result.code == LINK_CHAIN
    assert result.failure == "VCEK is not signed by any trusted ASK (tried: milan, genoa, turin)"


def test_chip_and_tcb_binding_on_the_simulator() -> None:
    platform = sim_platform()
    other = sim_platform(Generation.MILAN, 5)
    raw, _ = sim_report()
    anchors = (*ANCHORS, platform.anchor(), replace(other.anchor(), name="other"))
    # A VCEK of another chip (another simulated platform's, validly chained).
    result = check_report(raw, anchors, leaf=other.vcek)
    assert result.code == LINK_SIGNATURE
    # A report claiming another chip: signed, but CHIP_ID differs from hwID.
    forged = replace(platform, chip_id=os.urandom(64))
    raw2 = forged.report(ReportRequest(report_data=bytes(64), measurement=bytes(48)))
    assert check_report(raw2, anchors, leaf=platform.vcek).code == LINK_CHIP_ID
    # REPORTED_TCB not the VCEK's.
    newer = replace(platform, tcb=TcbVersion.build(bootloader=4, tee=0, snp=25, microcode=219))
    raw3 = newer.report(ReportRequest(report_data=bytes(64), measurement=bytes(48)))
    result = check_report(raw3, anchors, leaf=platform.vcek)
    assert result.code == LINK_TCB and "snp" in (result.failure or "")
    masked = check_report(
        platform.report(ReportRequest(bytes(64), bytes(48), mask_chip_id=True)),
        anchors,
        leaf=platform.vcek,
    )
    assert masked.ok and "CHIP_ID is masked (MASK_CHIP_KEY)" in masked.links


def test_turin_reports_use_the_fmc_layout_and_8_byte_hwid() -> None:
    platform = sim_platform(Generation.TURIN, 5)
    raw = platform.report(ReportRequest(bytes(64), bytes(48)))
    result = check_report(raw, (*ANCHORS, platform.anchor()), leaf=platform.vcek)
    assert result.verified is not None, result.failure
    assert result.verified.report.version == 5
    assert result.verified.reported_tcb.fmc == platform.tcb.fmc == 1
    assert "CHIP_ID equals the VCEK's hwID (first 8 bytes)" in result.links
    assert platform.chip_id[8:] == bytes(56)
    policy = SnpReferencePolicy(
        min_tcb=TcbVersion.build(bootloader=0, tee=0, snp=0, microcode=0, fmc=2)
    )
    assert [r.detail for r in decide(result.verified, policy)] == [
        "REPORTED_TCB fmc 1 is below the minimum 2"
    ]


@pytest.mark.parametrize("component", ["bootloader", "tee", "snp", "microcode"])
def test_minimum_tcb_each_component(component: str) -> None:
    v = sim_verified()
    have = v.reported_tcb.components()
    wanted = dict(have, **{component: have[component] + 1})
    minimum = TcbVersion.build(**wanted)
    reasons = decide(v, SnpReferencePolicy(min_tcb=minimum, min_launch_tcb=minimum))
    assert [(r.code, r.detail.split()[1]) for r in reasons] == [
        ("reported_tcb_below_minimum", component),
        ("launch_tcb_below_minimum", component),
    ]
    assert decide(v, SnpReferencePolicy(min_tcb=v.reported_tcb)) == []


@pytest.mark.parametrize(
    ("owner", "report", "code"),
    [
        (0x30000, 0xB0000, "policy_debug_not_allowed"),
        (0x20000, 0x30000, "policy_smt_not_allowed"),
        (0x30000, 0x70000, "policy_migrate_ma_not_allowed"),
        (0x30000, 0x230000, "policy_cxl_not_allowed"),
        (0x130000, 0x30000, "policy_single_socket_required"),
        (0x430000, 0x30000, "policy_aes_256_xts_required"),
        (0x1030000, 0x30000, "policy_ciphertext_hiding_required"),
        (0x2030000, 0x30000, "policy_page_swap_disable_required"),
        (0x30105, 0x30100, "policy_abi_too_old"),
    ],
)
def test_policy_rule(owner: int, report: int, code: str) -> None:
    v = sim_verified(policy=report)
    assert codes(v, SnpReferencePolicy(guest_policy=owner)) == [code]
    assert codes(v, SnpReferencePolicy(guest_policy=report)) == []


def test_rapl_rule_and_platform_smt() -> None:
    platform = replace(sim_platform(), platform_info=0x8)  # RAPL disabled, SMT off
    anchors = (*ANCHORS, platform.anchor())
    raw = platform.report(ReportRequest(bytes(64), bytes(48), policy=0x20000))
    v = check_report(raw, anchors, leaf=platform.vcek).verified
    assert v is not None
    assert codes(v, SnpReferencePolicy(guest_policy=0x830000)) == ["policy_rapl_disable_required"]
    assert codes(v, SnpReferencePolicy(guest_policy=0x30000)) == []


def test_every_reason_is_listed_not_just_the_first() -> None:
    host_data = os.urandom(32)
    v = sim_verified(
        policy=0xB0000, vmpl=2, signing_key=SigningKey.VLEK, guest_svn=1, host_data=host_data
    )
    fw = v.report.current_version
    policy = SnpReferencePolicy(
        guest_policy=0x30000,
        min_tcb=TcbVersion.build(bootloader=99, tee=0, snp=0, microcode=0),
        max_vmpl=0,
        measurements=[b"\x22" * 48],
        host_data=bytes(32),
        report_data=b"\x01" * 64,
        chip_ids=[os.urandom(64)],
        id_key_digests=[b"\x33" * 48],
        author_key_digests=[b"\x44" * 48],
        family_id=b"\x55" * 16,
        image_id=b"\x66" * 16,
        min_guest_svn=2,
        min_firmware=FirmwareVersion(fw.major, fw.minor, fw.build + 1),
        signing_keys=(SigningKey.VCEK,),
    )
    assert codes(v, policy) == [
        "policy_debug_not_allowed",
        "reported_tcb_below_minimum",
        "vmpl_too_high",
        "signing_key_not_allowed",
        "measurement_not_accepted",
        "host_data_mismatch",
        "report_data_mismatch",
        "family_id_mismatch",
        "image_id_mismatch",
        "chip_id_not_allowed",
        "id_key_not_allowed",
        "author_key_not_allowed",
        "guest_svn_below_minimum",
        "firmware_below_minimum",
    ]
    good = SnpReferencePolicy(
        guest_policy=0xB0000,
        max_vmpl=2,
        measurements=[b"\x22" * 48, b"\x11" * 48],
        host_data=host_data,
        report_data=bytes(64),
        family_id=bytes(16),
        image_id=bytes(16),
        id_key_digests=[bytes(48)],
        min_guest_svn=1,
        min_firmware=fw,
    )
    assert codes(v, good) == []


def test_chip_id_allow_list_and_provisional_firmware() -> None:
    platform = sim_platform()
    v = sim_verified()
    assert codes(v, SnpReferencePolicy(chip_ids=[platform.chip_id])) == []
    assert codes(v, SnpReferencePolicy(chip_ids=[os.urandom(64)])) == ["chip_id_not_allowed"]
    real = verified(BY_NAME["trustee-milan-v2"])  # CURRENT microcode 206 > COMMITTED 115
    strict = SnpReferencePolicy(guest_policy=None)  # the default: provisional refused
    assert codes(real, strict) == ["provisional_firmware"]
    assert codes(real, replace(strict, allow_provisional_firmware=True)) == []
    assert codes(verified(BY_NAME["virtee-milan-hex"]), strict) == []  # CURRENT = COMMITTED
    azure = verified(BY_NAME["azure-hcl"])  # a real cloud report: microcode 210 > 115
    assert codes(azure, strict) == ["provisional_firmware"]
    assert codes(azure, replace(strict, allow_provisional_firmware=True)) == []


# ------------------------------------------------------------- binding and the JWE


def guest_key() -> tuple[jwk.JWK, dict[str, str]]:
    private = jwk.JWK.generate(kty="EC", crv="P-384")
    public = json.loads(private.export_public())
    return private, {k: public[k] for k in ("kty", "crv", "x", "y")}


def test_report_data_binding_is_the_rcar_runtime_data_hash() -> None:
    _, public = guest_key()
    nonce = "bm9uY2U="
    text = (
        '{"nonce":"' + nonce + '","tee-pubkey":{'
        f'"crv":"P-384","kty":"EC","x":"{public["x"]}","y":"{public["y"]}"'
        "}}"
    )
    expected = hashlib.sha384(text.encode()).digest() + bytes(16)
    assert report_data_binding(nonce, public) == expected
    assert len(expected) == 64


def test_only_a_verified_attestation_encrypts_and_only_to_the_bound_key() -> None:
    private, public = guest_key()
    nonce = "Y2hhbGxlbmdl"
    v = sim_verified(report_data=report_data_binding(nonce, public))
    attestation = accept(v, SnpReferencePolicy(), nonce=nonce, tee_key=public)
    token = attestation.encrypt_payload(b'{"version": 1}', public)
    assert token.count(".") == 4
    header = json.loads(jwk.base64url_decode(token.split(".")[0]))
    assert header == {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": header["epk"]}
    received = jwe.JWE()
    received.deserialize(token, key=private)
    assert received.payload == b'{"version": 1}'
    _, other = guest_key()
    with pytest.raises(ValueError, match="binds"):
        attestation.encrypt_payload(b"x", other)
    with pytest.raises(PolicyViolation) as exc:
        accept(v, SnpReferencePolicy(), nonce="another nonce", tee_key=public)
    assert [r.split(":")[0] for r in exc.value.reasons] == ["report_data_mismatch"]
    with pytest.raises(PolicyViolation):
        accept(v, SnpReferencePolicy(), nonce=nonce, tee_key=other)
    unbound = accept(v, SnpReferencePolicy())
    with pytest.raises(ValueError, match="binds"):
        unbound.encrypt_payload(b"x", public)


def test_a_tee_key_is_checked_once_and_encrypted_to_as_bound() -> None:
    """The service parses the guest's key once (:class:`TeeKey`) and hands the same object
    to ``accept`` and ``encrypt_payload``: the JWE opens with the guest's private key, and
    the object still refuses any other key (as a TeeKey or as a JWK)."""
    private, public = guest_key()
    key = TeeKey.parse(public)
    assert dict(key.jwk) == public and key.jwk is not public
    with pytest.raises(TypeError):
        TeeKey(public, key.jose)
    with pytest.raises(TypeError):
        key.jwk["x"] = public["y"]  # type: ignore[index]
    nonce = "Y2hhbGxlbmdl"
    v = sim_verified(report_data=report_data_binding(nonce, public))
    attestation = accept(v, SnpReferencePolicy(), nonce=nonce, tee_key=key)
    assert attestation.tee_key is key
    for given_key in (key, TeeKey.parse(public), public):
        token = attestation.encrypt_payload(b'{"version": 1}', given_key)
        received = jwe.JWE()
        received.deserialize(token, key=private)
        assert received.payload == b'{"version": 1}'
    _, other = guest_key()
    for wrong in (TeeKey.parse(other), other):
        with pytest.raises(ValueError, match="binds"):
            attestation.encrypt_payload(b"x", wrong)
    with pytest.raises(PolicyViolation):
        accept(v, SnpReferencePolicy(), nonce=nonce, tee_key=TeeKey.parse(other))


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"kty": "EC", "crv": "P-384", "x": "AA"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-384", "x": 1, "y": 2},
    ],
)
def test_tee_pubkey_validation(bad: object) -> None:
    from attestd.errors import ParseError

    with pytest.raises(ParseError):
        TeeKey.parse(bad)


def test_tee_pubkey_refuses_a_private_key_and_off_curve_points() -> None:
    from attestd.errors import ParseError

    private, public = guest_key()
    with pytest.raises(ParseError):
        TeeKey.parse(json.loads(private.export_private()))
    key = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    off = dict(public, y=jwk.base64url_encode((key.y ^ 1).to_bytes(48, "big")))
    with pytest.raises(ParseError, match="point on P-384"):
        TeeKey.parse(off)
    assert dict(TeeKey.parse(public).jwk) == public


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0x4A0, max_size=0x4A0), st.binary(max_size=200))
def test_random_evidence_is_refused_without_exceptions(report: bytes, leaf: bytes) -> None:
    for raw in (report, bytes([2, 0, 0, 0]) + report[4:]):
        for cert in (leaf, VCEK_VECTOR.leaf()):
            assert_refused(check_report(raw, ANCHORS, at=AT, leaf=cert))
            assert_refused(check_report(raw, ANCHORS, at=AT, cert_table=leaf))
