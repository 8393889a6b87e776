"""Verify an SEV-SNP attestation report, then decide whether the owner accepts it.

Two steps, as in ``attestd.sev.chain`` and ``attestd.policy``:

1. :func:`check_report` walks the evidence over the **raw bytes received** (never a
   re-serialisation): the report parses, its signature algorithm, the signing key
   KEY_INFO names (VCEK or VLEK), the leaf certificate chained to a pinned ARK
   (ARK -> ASK -> VCEK, ARK -> ASVK -> VLEK) with issuer names chaining and every
   certificate valid at the verification time, the ASK/ASVK not on the ARK's CRL
   (a missing or stale CRL refuses only when required), the ECDSA P-384 signature over
   ``[0x000, 0x2A0)``, REPORTED_TCB equal to the certificate's SPLs and, for a VCEK,
   CHIP_ID equal to its hwID (Turin: the first 8 bytes). The result lists every link
   that verified and names the first that failed; success carries a
   :class:`VerifiedReport`.
2. :func:`decide` applies an :class:`SnpReferencePolicy` (snp.md §4: go-sev-guest's
   policy rule, minimum TCB, VMPL, measurements, HOST_DATA, REPORT_DATA, allow-lists,
   minimum guest SVN and firmware, allowed signing keys) and returns **every**
   failing reason. :func:`accept` turns an empty list into a
   :class:`VerifiedAttestation`, the only object that can encrypt a payload.

Pure: bytes and objects in, objects out.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwe
from jwcrypto import jwk as jose_jwk

from attestd.errors import ChainInvalid, ParseError, PolicyViolation
from attestd.sev.snp.certs import (
    CERTIFICATE_EXPIRED,
    ISSUER_NAME_MISMATCH,
    CertTable,
    SnpAnchor,
    SnpCertificate,
    SnpCrl,
)
from attestd.sev.snp.report import (
    POLICY_ALLOWS,
    POLICY_REQUIRES,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    AttestationReport,
    FirmwareVersion,
    Generation,
    PlatformInfo,
    PolicyFlags,
    SigningKey,
    SnpPolicy,
    TcbVersion,
    signed_bytes,
)

#: Failure codes of :func:`check_report`, one per link (stable, machine-readable).
LINK_REPORT = "report_malformed"
LINK_ALGORITHM = "signature_algorithm_unsupported"
LINK_SIGNING_KEY = "signing_key_unsupported"
LINK_CERTIFICATE = "certificate_invalid"
LINK_CHAIN = "chain_untrusted"
LINK_GENERATION = "generation_mismatch"
LINK_SIGNATURE = "signature_invalid"
LINK_TCB = "reported_tcb_mismatch"
LINK_CHIP_ID = "chip_id_mismatch"
LINK_NAME = ISSUER_NAME_MISMATCH
LINK_VALIDITY = CERTIFICATE_EXPIRED
LINK_CRL = "crl_invalid"
LINK_CRL_MISSING = "crl_missing"
LINK_REVOKED = "certificate_revoked"

#: :attr:`VerifiedReport.revocation` values.
REVOCATION_CHECKED = "checked"
REVOCATION_MISSING = "no-crl"
REVOCATION_STALE = "crl-stale"

_TOKEN = object()


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature, chain, REPORTED_TCB and chip id verified.

    Only :func:`check_report` makes one. ``raw`` is the exact 0x4A0 bytes verified.
    """

    raw: bytes = field(repr=False)
    report: AttestationReport
    generation: Generation
    anchor: str
    signing_key: SigningKey
    certificate: SnpCertificate = field(repr=False)
    links: tuple[str, ...]
    #: whether the ASK/ASVK was checked against a fresh CRL (``checked``), or not
    #: (``no-crl``, ``crl-stale``: allowed because the caller did not require a CRL)
    revocation: str = REVOCATION_MISSING
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("a VerifiedReport comes only from check_report()")

    def tcb(self, raw: int) -> TcbVersion:
        """Decode one of the report's TCB fields with this generation's layout."""
        return self.report.tcb(raw, self.generation)

    @property
    def reported_tcb(self) -> TcbVersion:
        return self.tcb(self.report.reported_tcb)


@dataclass(frozen=True)
class ReportCheck:
    """The outcome of :func:`check_report`: links verified, then the failure if any."""

    links: tuple[str, ...]
    failure: str | None = None
    code: str | None = None
    report: AttestationReport | None = None
    verified: VerifiedReport | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.verified is not None


class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _leaf(
    key: SigningKey, leaf: bytes | None, cert_table: bytes | None
) -> tuple[SnpCertificate, str]:
    label = key.label.upper()
    der = leaf
    if der is None and cert_table is not None:
        try:
            found = CertTable.unpack(cert_table).leaf()
        except ParseError as exc:
            raise _Failed(LINK_CERTIFICATE, exc.message) from None
        if found is not None:
            if found[0] != key.label:
                raise _Failed(
                    LINK_CERTIFICATE,
                    f"the report is signed by a {label} but the certificate table "
                    f"carries a {found[0].upper()}",
                )
            der = found[1]
    if der is None:
        raise _Failed(LINK_CERTIFICATE, f"no {label} certificate given")
    try:
        cert = SnpCertificate.from_der(der)
        cert.ec_key()
        hw_id, csp_id = cert.hw_id, cert.csp_id
    except ParseError as exc:
        raise _Failed(LINK_CERTIFICATE, f"{label}: {exc.message}") from None
    except ChainInvalid as exc:  # not a P-384 key
        raise _Failed(LINK_CERTIFICATE, f"{label}: {exc.message}") from None
    if key is SigningKey.VCEK and hw_id is None:
        raise _Failed(LINK_CERTIFICATE, "the certificate has no hwID: it is not a VCEK")
    if key is SigningKey.VLEK and (hw_id is not None or csp_id is None):
        raise _Failed(LINK_CERTIFICATE, "the certificate is not a VLEK (no cspID, or a hwID)")
    return cert, label


def _anchor(
    cert: SnpCertificate,
    label: str,
    key: SigningKey,
    anchors: Sequence[SnpAnchor],
    wanted: str | None,
    links: list[str],
    at: datetime.datetime,
) -> SnpAnchor:
    role = "ASK" if key is SigningKey.VCEK else "ASVK"
    candidates = [a for a in anchors if wanted is None or a.name == wanted]
    for anchor in candidates:
        signer = anchor.ask if key is SigningKey.VCEK else anchor.asvk
        if signer is None or not cert.is_signed_by(signer):
            continue
        try:
            links.extend(anchor.check(at))
        except ChainInvalid as exc:
            raise _Failed(exc.reasons[0] if exc.reasons else LINK_CHAIN, exc.message) from None
        if not cert.issued_by_name(signer):
            raise _Failed(
                LINK_NAME, f"the {label}'s issuer is not the {anchor.name} {role}'s subject"
            )
        links.append(f"{label} is signed by the {anchor.name} {role}")
        problem = cert.validity_problem(label, at)
        if problem is not None:
            raise _Failed(LINK_VALIDITY, problem)
        links.append(f"{label} is valid at {at:%Y-%m-%d %H:%M:%S}Z")
        return anchor
    tried = ", ".join(a.name for a in candidates) or "none"
    raise _Failed(LINK_CHAIN, f"{label} is not signed by any trusted {role} (tried: {tried})")


def _generation(
    report: AttestationReport,
    cert: SnpCertificate,
    anchor: SnpAnchor,
    given: Generation | None,
) -> Generation:
    named = {g.value: g for g in Generation}
    sources = {
        "the report's CPUID": report.cpuid_generation,
        "the certificate's productName": cert.generation,
        "the trust anchor": named.get(anchor.name),
        "the caller": given,
    }
    known = {source: gen for source, gen in sources.items() if gen is not None}
    if not known:
        raise _Failed(LINK_GENERATION, "cannot tell the CPU generation (TCB layout) of the report")
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{source} says {gen.value}" for source, gen in known.items())
        raise _Failed(LINK_GENERATION, f"generation mismatch: {detail}")
    return next(iter(known.values()))


def _revocation(
    anchor: SnpAnchor,
    key: SigningKey,
    crl: SnpCrl | None,
    at: datetime.datetime,
    require: bool,
    links: list[str],
) -> str:
    """Check the ASK (VCEK) or ASVK (VLEK) against the anchor's CRL; the revocation state."""
    role = "ASK" if key is SigningKey.VCEK else "ASVK"
    signer = anchor.ask if key is SigningKey.VCEK else anchor.asvk
    name = f"the {anchor.name} {role}"
    if crl is None:
        if require:
            raise _Failed(LINK_CRL_MISSING, f"no CRL of the {anchor.name} ARK: {name} is unchecked")
        links.append(f"no CRL of the {anchor.name} ARK: revocation of {name} NOT checked")
        return REVOCATION_MISSING
    if not crl.signed_by(anchor.ark):
        raise _Failed(LINK_CRL, f"the CRL is not issued and signed by the {anchor.name} ARK")
    if signer is not None and crl.revokes(signer):
        raise _Failed(LINK_REVOKED, f"{name} is revoked (CRL of {crl.this_update:%Y-%m-%d})")
    if not crl.fresh_at(at):
        until = "never" if crl.next_update is None else f"{crl.next_update:%Y-%m-%d %H:%M}Z"
        if require:
            raise _Failed(
                LINK_CRL_MISSING, f"the {anchor.name} CRL is not current (next update {until})"
            )
        links.append(
            f"{name} is not on the {anchor.name} CRL, but it is not current (next update "
            f"{until}): revocation NOT checked"
        )
        return REVOCATION_STALE
    links.append(f"{name} is not revoked (CRL of {crl.this_update:%Y-%m-%d}, signed by the ARK)")
    return REVOCATION_CHECKED


def _signature(report: AttestationReport) -> bytes:
    """The report's r and s (72 bytes each, little-endian) as a DER ECDSA signature."""
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    return encode_dss_signature(r, s)


def check_report(
    raw: bytes,
    anchors: Sequence[SnpAnchor],
    *,
    leaf: bytes | None = None,
    cert_table: bytes | None = None,
    generation: Generation | None = None,
    anchor: str | None = None,
    at: datetime.datetime | None = None,
    crls: Mapping[str, SnpCrl] | None = None,
    require_crl: bool = False,
) -> ReportCheck:
    """Verify a raw 0x4A0-byte report; every check names its link (see the module doc).

    ``leaf`` is the VCEK/VLEK DER; else it is taken from ``cert_table`` (the
    extended-report certificate table). Certificates in the table other than the
    leaf are ignored: only ``anchors`` are trusted. ``generation`` and ``anchor``
    pin what the caller expects. ``at`` is the verification time (default: now, UTC)
    at which every certificate must be valid. ``crls`` maps an anchor name to its
    ARK's CRL; without a current one the ASK/ASVK is refused if ``require_crl``, else
    accepted with :attr:`VerifiedReport.revocation` saying so.
    """
    when = at or datetime.datetime.now(datetime.UTC)
    links: list[str] = []
    try:
        report = AttestationReport.unpack(raw)
    except ParseError as exc:
        return ReportCheck((), exc.message, LINK_REPORT)
    try:
        links.append(f"report parses (version {report.version}, reserved bytes zero)")
        if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
            raise _Failed(
                LINK_ALGORITHM, f"signature algorithm {report.signature_algo} is not ECDSA P-384"
            )
        key = report.key_info.signing_key
        if key is SigningKey.NONE:
            raise _Failed(LINK_SIGNING_KEY, "the report is not signed (KEY_INFO: no signing key)")
        links.append(f"KEY_INFO names the {key.label.upper()} as the signing key")
        cert, label = _leaf(key, leaf, cert_table)
        found = _anchor(cert, label, key, anchors, anchor, links, when)
        revocation = _revocation(found, key, (crls or {}).get(found.name), when, require_crl, links)
        gen = _generation(report, cert, found, generation)
        links.append(f"generation {gen.value}")
        try:
            cert.ec_key().verify(_signature(report), signed_bytes(raw), ec.ECDSA(hashes.SHA384()))
        except (InvalidSignature, ValueError):
            raise _Failed(
                LINK_SIGNATURE, f"the report signature does not verify with the {label}"
            ) from None
        links.append(f"report is signed by the {label} (ECDSA P-384 SHA-384)")
        reported = report.tcb(report.reported_tcb, gen)
        expected = cert.tcb(turin=gen.has_fmc)
        if reported.raw != expected.raw:
            raise _Failed(
                LINK_TCB,
                f"REPORTED_TCB {reported.to_json()} is not the {label}'s TCB {expected.to_json()}",
            )
        links.append(f"REPORTED_TCB equals the {label}'s SPLs")
        links.append(_chip_link(report, cert, key, gen))
    except _Failed as exc:
        return ReportCheck(tuple(links), exc.message, exc.code, report)
    verified = VerifiedReport(
        raw, report, gen, found.name, key, cert, tuple(links), revocation, _token=_TOKEN
    )
    return ReportCheck(tuple(links), None, None, report, verified)


def _chip_link(
    report: AttestationReport, cert: SnpCertificate, key: SigningKey, gen: Generation
) -> str:
    if key is SigningKey.VLEK:
        return "CHIP_ID is not bound by a VLEK (not checked)"
    if report.key_info.mask_chip_key:
        if any(report.chip_id):
            raise _Failed(LINK_CHIP_ID, "MASK_CHIP_KEY is set but CHIP_ID is not zero")
        return "CHIP_ID is masked (MASK_CHIP_KEY)"
    hw_id = cert.hw_id or b""
    if not hmac.compare_digest(report.hw_id(gen), hw_id):
        raise _Failed(LINK_CHIP_ID, "CHIP_ID is not the VCEK's hwID (a VCEK of another chip)")
    return "CHIP_ID equals the VCEK's hwID" + (" (first 8 bytes)" if gen.has_fmc else "")


# ------------------------------------------------------------------------ decision


@dataclass(frozen=True, slots=True)
class Reason:
    """One failed check: a stable machine code and a human-readable detail."""

    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True)
class SnpReferencePolicy:
    """What the owner accepts (snp.md §4). ``None`` means "not checked".

    ``guest_policy`` is the owner's policy for go-sev-guest's rule: the report may not
    allow more (SMT, MIGRATE_MA, DEBUG, CXL) nor require less (SINGLE_SOCKET,
    AES-256-XTS, RAPL disabled, ciphertext hiding, page swap disabled), and its ABI
    version must be at least the owner's. ``min_tcb`` is compared component by
    component with REPORTED_TCB (``min_launch_tcb`` with LAUNCH_TCB). COMMITTED_TCB
    may never exceed CURRENT_TCB; they (and the firmware versions) must be equal unless
    ``allow_provisional_firmware`` (off by default, as go-sev-guest's
    ``PermitProvisionalFirmware``: a provisional update can still be rolled back).
    """

    guest_policy: int | None = 0x30000
    min_tcb: TcbVersion | None = None
    min_launch_tcb: TcbVersion | None = None
    allow_provisional_firmware: bool = False
    max_vmpl: int = 0
    measurements: Collection[bytes] | None = None
    host_data: bytes | None = None
    report_data: bytes | None = None
    chip_ids: Collection[bytes] | None = None
    id_key_digests: Collection[bytes] | None = None
    author_key_digests: Collection[bytes] | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    min_guest_svn: int | None = None
    min_firmware: FirmwareVersion | None = None
    signing_keys: Collection[SigningKey] = (SigningKey.VCEK, SigningKey.VLEK)


def _in(value: bytes, allowed: Collection[bytes]) -> bool:
    found = False
    for candidate in allowed:
        found |= len(candidate) == len(value) and hmac.compare_digest(candidate, value)
    return found


_FLAG_NAMES = {
    PolicyFlags.SMT: "smt",
    PolicyFlags.MIGRATE_MA: "migrate_ma",
    PolicyFlags.DEBUG: "debug",
    PolicyFlags.CXL_ALLOW: "cxl",
    PolicyFlags.SINGLE_SOCKET: "single_socket",
    PolicyFlags.MEM_AES_256_XTS: "aes_256_xts",
    PolicyFlags.RAPL_DIS: "rapl_disable",
    PolicyFlags.CIPHERTEXT_HIDING: "ciphertext_hiding",
    PolicyFlags.PAGE_SWAP_DISABLE: "page_swap_disable",
}


def _policy_reasons(report: AttestationReport, owner_raw: int | None) -> list[Reason]:
    reasons = []
    policy = report.guest_policy
    if not policy.flags & PolicyFlags.RESERVED_1 or policy.unknown_bits:
        reasons.append(
            Reason(
                "policy_reserved_bits", f"guest policy {policy.raw:#x}: bit 17 must be 1, 26-63 0"
            )
        )
    info = report.platform_info
    if not policy.flags & PolicyFlags.SMT and info & PlatformInfo.SMT_EN:
        reasons.append(
            Reason("platform_smt_enabled", "the policy forbids SMT but the platform has SMT on")
        )
    if owner_raw is None:
        return reasons
    owner = SnpPolicy.from_u64(owner_raw)
    if (policy.abi_major, policy.abi_minor) < (owner.abi_major, owner.abi_minor):
        reasons.append(
            Reason(
                "policy_abi_too_old",
                f"policy ABI {policy.abi_major}.{policy.abi_minor} is below the owner's "
                f"{owner.abi_major}.{owner.abi_minor}",
            )
        )
    for flag in POLICY_ALLOWS:
        if policy.flags & flag and not owner.flags & flag:
            name = _FLAG_NAMES[flag]
            reasons.append(
                Reason(
                    f"policy_{name}_not_allowed", f"the policy allows {name}; the owner does not"
                )
            )
    for flag in POLICY_REQUIRES:
        if owner.flags & flag and not policy.flags & flag:
            name = _FLAG_NAMES[flag]
            reasons.append(
                Reason(f"policy_{name}_required", f"the owner requires {name}; the policy does not")
            )
    return reasons


def _tcb_reasons(verified: VerifiedReport, policy: SnpReferencePolicy) -> list[Reason]:
    report = verified.report
    reasons = []
    for code, name, raw, minimum in (
        ("reported_tcb_below_minimum", "REPORTED_TCB", report.reported_tcb, policy.min_tcb),
        ("launch_tcb_below_minimum", "LAUNCH_TCB", report.launch_tcb, policy.min_launch_tcb),
    ):
        if minimum is None:
            continue
        tcb = verified.tcb(raw)
        wanted = minimum.components()
        for component in tcb.below(minimum):
            have = tcb.components().get(component, 0)
            reasons.append(
                Reason(
                    code,
                    f"{name} {component} {have} is below the minimum {wanted[component]}",
                )
            )
    current, committed = verified.tcb(report.current_tcb), verified.tcb(report.committed_tcb)
    above = current.below(committed)
    if above:
        reasons.append(
            Reason(
                "committed_tcb_above_current",
                f"COMMITTED_TCB is above CURRENT_TCB in {', '.join(above)}",
            )
        )
    provisional = current.raw != committed.raw or (
        report.current_version != report.committed_version
    )
    if provisional and not policy.allow_provisional_firmware:
        reasons.append(
            Reason(
                "provisional_firmware",
                f"the running firmware (TCB {current.to_json()}, {report.current_version}) is "
                f"not the committed one (TCB {committed.to_json()}, {report.committed_version})",
            )
        )
    return reasons


def decide(
    verified: VerifiedReport,
    policy: SnpReferencePolicy,
    *,
    binding: bytes | None = None,
) -> list[Reason]:
    """Every reason the owner's ``policy`` refuses ``verified`` (empty: accepted).

    ``binding`` is the expected REPORT_DATA for this request (see
    :func:`report_data_binding`), checked in addition to ``policy.report_data``.
    """
    report = verified.report
    reasons = _policy_reasons(report, policy.guest_policy)
    reasons += _tcb_reasons(verified, policy)
    if report.vmpl > policy.max_vmpl:
        reasons.append(
            Reason("vmpl_too_high", f"VMPL {report.vmpl} is above the allowed {policy.max_vmpl}")
        )
    if verified.signing_key not in policy.signing_keys:
        reasons.append(
            Reason(
                "signing_key_not_allowed",
                f"the report is signed by a {verified.signing_key.label.upper()}, not allowed",
            )
        )
    if policy.measurements is not None and not _in(report.measurement, policy.measurements):
        reasons.append(Reason("measurement_not_accepted", "MEASUREMENT is not an accepted digest"))
    for code, name, value, expected in (
        ("host_data_mismatch", "HOST_DATA", report.host_data, policy.host_data),
        ("report_data_mismatch", "REPORT_DATA", report.report_data, policy.report_data),
        ("report_data_mismatch", "REPORT_DATA", report.report_data, binding),
        ("family_id_mismatch", "FAMILY_ID", report.family_id, policy.family_id),
        ("image_id_mismatch", "IMAGE_ID", report.image_id, policy.image_id),
    ):
        if expected is not None and not _in(value, (expected,)):
            reasons.append(Reason(code, f"{name} is not the expected value"))
    if policy.chip_ids is not None:
        chip = report.hw_id(verified.generation)
        if verified.signing_key is not SigningKey.VCEK or report.key_info.mask_chip_key:
            reasons.append(Reason("chip_id_not_allowed", "the report does not name its chip"))
        elif not any(_in(chip, (c[: len(chip)],)) for c in policy.chip_ids):
            reasons.append(Reason("chip_id_not_allowed", "CHIP_ID is not in the allow-list"))
    if policy.id_key_digests is not None and not _in(report.id_key_digest, policy.id_key_digests):
        reasons.append(Reason("id_key_not_allowed", "ID_KEY_DIGEST is not in the allow-list"))
    if policy.author_key_digests is not None and (
        not report.key_info.author_key_en
        or not _in(report.author_key_digest, policy.author_key_digests)
    ):
        reasons.append(
            Reason("author_key_not_allowed", "AUTHOR_KEY_DIGEST is absent or not in the allow-list")
        )
    if policy.min_guest_svn is not None and report.guest_svn < policy.min_guest_svn:
        reasons.append(
            Reason(
                "guest_svn_below_minimum",
                f"GUEST_SVN {report.guest_svn} is below the minimum {policy.min_guest_svn}",
            )
        )
    if (
        policy.min_firmware is not None
        and report.current_version.as_tuple() < policy.min_firmware.as_tuple()
    ):
        reasons.append(
            Reason(
                "firmware_below_minimum",
                f"firmware {report.current_version} is below the minimum {policy.min_firmware}",
            )
        )
    return reasons


# ------------------------------------------------------- binding, type state, JWE

JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
_JWE_PROTECTED = json.dumps({"alg": JWE_ALG, "enc": JWE_ENC}, sort_keys=True)
_JWK_MEMBERS = {"kty", "crv", "x", "y"}


def _tee_members(jwk: object) -> dict[str, str]:
    """The members of an EC P-384 public JWK (kty, crv, x, y; no private part), checked
    for shape: 48-byte coordinates in unpadded base64url (on the curve: :class:`TeeKey`)."""
    if not isinstance(jwk, Mapping) or not all(isinstance(k, str) for k in jwk):
        raise ParseError("tee-pubkey must be a JSON object")
    if set(jwk) != _JWK_MEMBERS or not all(isinstance(v, str) for v in jwk.values()):
        raise ParseError("tee-pubkey must have exactly the string members kty, crv, x and y")
    if jwk["kty"] != "EC" or jwk["crv"] != "P-384":
        raise ParseError("tee-pubkey must be an EC P-384 key")
    for name in ("x", "y"):
        text = jwk[name]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ParseError(f"tee-pubkey {name} is not base64url") from None
        if len(raw) != 48 or "=" in text:
            raise ParseError(f"tee-pubkey {name} must be 48 bytes in unpadded base64url")
    return {k: str(v) for k, v in jwk.items()}


@dataclass(frozen=True, eq=False)
class TeeKey:
    """The guest's ephemeral EC P-384 public key (the request's ``tee-pubkey``), checked once.

    ``jwk`` holds exactly the members REPORT_DATA binds (kty, crv, x, y); ``jose`` is the
    same key as a jwcrypto JWK whose public key was built once, here, to check the point
    is on P-384, and is the one the JWE's ECDH-ES then uses (jwcrypto keeps it), so one
    attestation converts the guest's key once. Only :meth:`parse` makes one.
    """

    jwk: Mapping[str, str]
    jose: jose_jwk.JWK = field(repr=False)
    _token: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("a TeeKey comes only from TeeKey.parse()")

    @classmethod
    def parse(cls, jwk: object) -> TeeKey:
        """Check an EC P-384 public JWK: exactly kty, crv, x and y (no private part), 48-byte
        unpadded base64url coordinates of a point on P-384 (``ParseError`` otherwise)."""
        members = _tee_members(jwk)
        jose = jose_jwk.JWK(**members)
        try:
            jose.get_op_key("wrapKey")  # EllipticCurvePublicNumbers.public_key(): on P-384
        except ValueError:
            raise ParseError("tee-pubkey is not a point on P-384") from None
        return cls(MappingProxyType(members), jose, _token=_TOKEN)


def report_data_binding(nonce: str, jwk: Mapping[str, Any]) -> bytes:
    """REPORT_DATA binding a nonce and the guest's key (Trustee RCAR runtime-data).

    SHA-384 of ``{"nonce": nonce, "tee-pubkey": jwk}`` as JSON with sorted keys and no
    whitespace, followed by 16 zero bytes (64 bytes).
    """
    document = json.dumps(
        {"nonce": nonce, "tee-pubkey": dict(jwk)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha384(document.encode("utf-8")).digest() + bytes(16)


@dataclass(frozen=True)
class VerifiedAttestation:
    """A verified report the owner's policy accepted, bound to the guest's key.

    Only :func:`accept` makes one, and it is the only way to encrypt a payload: to
    the key its REPORT_DATA binds, and no other.
    """

    verified: VerifiedReport
    tee_key: TeeKey | None
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("a VerifiedAttestation comes only from accept()")

    def encrypt_payload(self, plaintext: bytes, tee_pubkey_jwk: TeeKey | Mapping[str, Any]) -> str:
        """JWE compact serialization (ECDH-ES+A256KW, A256GCM) to the bound key.

        ``ValueError`` if this attestation bound no key or ``tee_pubkey_jwk`` is another.
        The :class:`TeeKey` given to :func:`accept` is used as it is; a JWK is checked anew.
        """
        bound = self.tee_key
        key = tee_pubkey_jwk if isinstance(tee_pubkey_jwk, TeeKey) else TeeKey.parse(tee_pubkey_jwk)
        if bound is None or (key is not bound and dict(key.jwk) != dict(bound.jwk)):
            raise ValueError("the payload may only be encrypted to the key REPORT_DATA binds")
        token = jwe.JWE(plaintext, protected=_JWE_PROTECTED)
        token.add_recipient(bound.jose)
        return str(token.serialize(compact=True))


def accept(
    verified: VerifiedReport,
    policy: SnpReferencePolicy,
    *,
    nonce: str | None = None,
    tee_key: TeeKey | Mapping[str, Any] | None = None,
) -> VerifiedAttestation:
    """Apply ``policy`` (and the nonce/key binding if given); ``PolicyViolation`` lists all reasons.

    With ``nonce`` and ``tee_key``, REPORT_DATA must be :func:`report_data_binding` of
    them, and the result can encrypt a payload to ``tee_key`` (a :class:`TeeKey`, or a
    JWK checked here).
    """
    if (nonce is None) != (tee_key is None):
        raise ValueError("nonce and tee_key go together")
    if tee_key is None or isinstance(tee_key, TeeKey):
        key = tee_key
    else:
        key = TeeKey.parse(tee_key)
    binding = None if key is None or nonce is None else report_data_binding(nonce, key.jwk)
    reasons = decide(verified, policy, binding=binding)
    if reasons:
        raise PolicyViolation(
            "the attestation report is not acceptable", reasons=[str(r) for r in reasons]
        )
    return VerifiedAttestation(verified, key, _token=_TOKEN)
