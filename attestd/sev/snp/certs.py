"""SEV-SNP X.509 certificates: ARK, ASK, ASVK (RSA-4096) and VCEK, VLEK (ECDSA P-384).

Pure: bytes in, objects out. ``cryptography`` parses the certificates; every VCEK
and VLEK has serial number 0, which ``cryptography`` warns about and will refuse
in a future release, so a minimal DER reader (:mod:`attestd.sev.snp._der`) takes over
when it does: the TBSCertificate, the signature and the public key are all that
verification needs. AMD's extensions (OID arc 1.3.6.1.4.1.3704.1, the AMD VCEK spec)
are decoded from their raw DER in both paths.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.snp import _der
from attestd.sev.snp.report import Generation, TcbVersion

AMD_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{AMD_ARC}.1"
OID_PRODUCT_NAME = f"{AMD_ARC}.2"
OID_BL_SPL = f"{AMD_ARC}.3.1"
OID_TEE_SPL = f"{AMD_ARC}.3.2"
OID_SNP_SPL = f"{AMD_ARC}.3.3"
OID_UCODE_SPL = f"{AMD_ARC}.3.8"
OID_FMC_SPL = f"{AMD_ARC}.3.9"
OID_HW_ID = f"{AMD_ARC}.4"
OID_CSP_ID = f"{AMD_ARC}.5"
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"

#: Which ``.3.N`` SPL extension fills which TCB_VERSION byte, per layout.
_SPL_BYTES_MILAN = {1: 0, 2: 1, 4: 2, 5: 3, 6: 4, 7: 5, 3: 6, 8: 7}
_SPL_BYTES_TURIN = {9: 0, 1: 1, 2: 2, 3: 3, 5: 4, 6: 5, 7: 6, 8: 7}

_PSS_SALT = 48
#: The AlgorithmIdentifier of RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48, as AMD encodes
#: it (trailerField 1 explicit) and as ``cryptography`` does (default trailerField omitted).
PSS_SHA384_ALGORITHMS = frozenset(
    bytes.fromhex(
        "30" + length + "06092a864886f70d01010a30" + inner + "a00f300d06096086480165030402020500"
        "a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130" + trailer
    )
    for length, inner, trailer in (("46", "39", "a303020101"), ("41", "34", ""))
)

#: Extended-report certificate table GUIDs (SEV-SNP GHCB spec; snp.md §2).
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
_TABLE_ENTRY = 24
_MAX_TABLE_ENTRIES = 64


def pss_sha384() -> padding.PSS:
    """RSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt: how AMD signs SNP certificates."""
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=_PSS_SALT)


#: Results of RSA-PSS SHA-384 verifications already made, by the SHA-256 of the issuer's
#: public key (SubjectPublicKeyInfo), of the signed bytes and of the signature: every
#: attestation checks the same ARK, ASK, CRL and (per chip) VCEK signatures again. The
#: same key and bytes give the same answer, so a hit is what the verification would say;
#: bounded (cleared when full).
_PSS_RESULTS: dict[tuple[bytes, bytes, bytes], bool] = {}
_PSS_RESULTS_MAX = 1024
_PSS_LOCK = threading.Lock()


def pss_sha384_verifies(issuer: SnpCertificate, tbs: bytes, signature: bytes) -> bool:
    """True if ``issuer``'s RSA key made ``signature`` (RSA-PSS SHA-384) over ``tbs``;
    each distinct (issuer, bytes, signature) is verified once per process."""
    public_key = issuer.rsa_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = (
        hashlib.sha256(spki).digest(),
        hashlib.sha256(tbs).digest(),
        hashlib.sha256(signature).digest(),
    )
    found = _PSS_RESULTS.get(key)
    if found is not None:
        return found
    try:
        public_key.verify(signature, tbs, pss_sha384(), hashes.SHA384())
        found = True
    except (InvalidSignature, ValueError):
        found = False
    with _PSS_LOCK:
        if len(_PSS_RESULTS) >= _PSS_RESULTS_MAX:
            _PSS_RESULTS.clear()
        _PSS_RESULTS[key] = found
    return found


@dataclass(frozen=True, slots=True)
class SnpCertificate:
    """One X.509 certificate reduced to what SNP verification uses.

    ``tbs`` and ``signature`` are the exact bytes received; ``signature_algorithm`` is the
    outer AlgorithmIdentifier, which must equal the one inside the TBS
    (``tbs_algorithm_matches``); ``extensions`` maps each extension OID to its raw
    ``extnValue`` contents. ``issuer`` and ``subject`` are the exact DER Names (RFC 5280
    name chaining compares them), ``not_before``/``not_after`` the validity period (UTC),
    both read from the DER in either path. ``fallback`` says the minimal DER reader parsed
    it (``cryptography`` refused it).
    """

    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    signature_oid: str
    signature: bytes = field(repr=False)
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = field(repr=False)
    serial_number: int
    extensions: dict[str, bytes] = field(repr=False)
    signature_algorithm: bytes = field(default=b"", repr=False)
    tbs_algorithm_matches: bool = False
    fallback: bool = False
    issuer: bytes = field(default=b"", repr=False)
    subject: bytes = field(default=b"", repr=False)
    not_before: datetime.datetime = field(
        default=datetime.datetime.max.replace(tzinfo=datetime.UTC)
    )
    not_after: datetime.datetime = field(default=datetime.datetime.min.replace(tzinfo=datetime.UTC))

    @classmethod
    def from_der(cls, der: bytes, *, force_fallback: bool = False) -> SnpCertificate:
        """Parse a DER certificate (with ``cryptography``, else the fallback reader).

        The certificates of the last 256 distinct inputs of at most 8 KiB are kept (AMD's
        are under 2 KiB): every attestation of a chip presents (or the store gives) the
        same VCEK, and a certificate is immutable.
        """
        data = bytes(der)
        if len(data) <= _KEPT_DER_SIZE:
            return _parse_certificate(data, force_fallback)
        return _parse_certificate.__wrapped__(data, force_fallback)

    def valid_at(self, at: datetime.datetime) -> bool:
        """True if ``at`` lies in the validity period (notBefore <= at <= notAfter)."""
        return self.not_before <= at <= self.not_after

    def validity_problem(self, role: str, at: datetime.datetime) -> str | None:
        """Why this certificate is not valid at ``at`` (None if it is)."""
        if at < self.not_before:
            return f"the {role} is not valid before {self.not_before:%Y-%m-%d %H:%M:%S}Z"
        if at > self.not_after:
            return f"the {role} expired at {self.not_after:%Y-%m-%d %H:%M:%S}Z"
        return None

    def issued_by_name(self, issuer: SnpCertificate) -> bool:
        """Name chaining: this certificate's issuer is exactly ``issuer``'s subject (DER)."""
        return bool(self.issuer) and self.issuer == issuer.subject

    @property
    def is_rsa(self) -> bool:
        return isinstance(self.public_key, rsa.RSAPublicKey)

    def rsa_key(self) -> rsa.RSAPublicKey:
        if not isinstance(self.public_key, rsa.RSAPublicKey):
            raise ChainInvalid("certificate key is not an RSA key")
        return self.public_key

    def ec_key(self) -> ec.EllipticCurvePublicKey:
        key = self.public_key
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise ChainInvalid("certificate key is not an ECDSA P-384 key")
        return key

    def is_signed_by(self, issuer: SnpCertificate) -> bool:
        """True if ``issuer``'s RSA key made this certificate's RSA-PSS SHA-384 signature."""
        if (
            self.signature_oid != OID_RSASSA_PSS
            or self.signature_algorithm not in PSS_SHA384_ALGORITHMS
            or not self.tbs_algorithm_matches
            or not issuer.is_rsa
        ):
            return False
        return pss_sha384_verifies(issuer, self.tbs, self.signature)

    # ------------------------------------------------------------- AMD extensions

    def _ext_integer(self, oid: str) -> int | None:
        value = self.extensions.get(oid)
        if value is None:
            return None
        number = _der.decode_integer(_der.read_one(value, _der.INTEGER, oid), oid)
        if not 0 <= number <= 0xFF:
            raise ParseError(f"VCEK extension {oid}: value {number} out of range")
        return number

    def _ext_ia5(self, oid: str) -> str | None:
        value = self.extensions.get(oid)
        if value is None:
            return None
        text = _der.read_one(value, _der.IA5_STRING, oid).value
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError(f"VCEK extension {oid}: not ASCII") from None

    @property
    def struct_version(self) -> int | None:
        return self._ext_integer(OID_STRUCT_VERSION)

    @property
    def product_name(self) -> str | None:
        return self._ext_ia5(OID_PRODUCT_NAME)

    @property
    def csp_id(self) -> str | None:
        """cspID (VLEKs: the cloud provider the VLEK was issued to)."""
        return self._ext_ia5(OID_CSP_ID)

    @property
    def hw_id(self) -> bytes | None:
        """hwID: 64 bytes (8 on Turin), raw or as a DER OCTET STRING (both exist)."""
        value = self.extensions.get(OID_HW_ID)
        if value is None:
            return None
        if len(value) in (8, 64):
            return value
        inner = _der.read_one(value, _der.OCTET_STRING, "VCEK hwID").value
        if len(inner) not in (8, 64):
            raise ParseError(f"VCEK hwID: {len(inner)} bytes (expected 64, or 8 on Turin)")
        return inner

    @property
    def generation(self) -> Generation | None:
        """The generation its productName names (``Milan-B0`` -> milan), if any."""
        name = self.product_name
        return None if name is None else Generation.from_product_name(name)

    def spl(self, number: int) -> int:
        """The ``.3.<number>`` SPL extension (0 when absent)."""
        return self._ext_integer(f"{AMD_ARC}.3.{number}") or 0

    def tcb(self, *, turin: bool) -> TcbVersion:
        """The SPLs as a TCB_VERSION in the given layout (every byte, reserved ones too)."""
        layout = _SPL_BYTES_TURIN if turin else _SPL_BYTES_MILAN
        data = bytearray(8)
        for number, position in layout.items():
            data[position] = self.spl(number)
        return TcbVersion.decode(int.from_bytes(data, "little"), turin=turin)

    def describe_extensions(self) -> dict[str, object]:
        """The AMD extensions decoded for display."""
        hw = self.hw_id
        return {
            "struct-version": self.struct_version,
            "product-name": self.product_name,
            "bl-spl": self.spl(1),
            "tee-spl": self.spl(2),
            "snp-spl": self.spl(3),
            "ucode-spl": self.spl(8),
            "fmc-spl": self._ext_integer(OID_FMC_SPL),
            "hw-id": None if hw is None else hw.hex(),
            "csp-id": self.csp_id,
        }


_KEPT_DER_SIZE = 8192


@functools.lru_cache(maxsize=256)
def _parse_certificate(der: bytes, force_fallback: bool) -> SnpCertificate:
    if force_fallback:
        return _from_der_reader(der)
    try:
        return _from_cryptography(der)
    except ParseError:
        raise
    except Exception:  # refused: serial 0 (announced), X.509 version, other strictness
        return _from_der_reader(der)  # the DER reader decides; it raises only ParseError


def _public_key(spki: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm):
        raise ParseError("certificate: unreadable subjectPublicKeyInfo") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ParseError("certificate: key is neither RSA nor EC")
    return key


def _from_cryptography(der: bytes) -> SnpCertificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(der)
        serial = cert.serial_number
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise ParseError("certificate: unreadable public key") from None
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ParseError("certificate: key is neither RSA nor EC")
        extensions: dict[str, bytes] = {}
        for ext in cert.extensions:
            if isinstance(ext.value, x509.UnrecognizedExtension):
                extensions[ext.oid.dotted_string] = ext.value.value
            else:
                extensions[ext.oid.dotted_string] = ext.value.public_bytes()
        outer, matches = _algorithms(der)
        issuer, subject, not_before, not_after = _names_validity(der)
        return SnpCertificate(
            der,
            cert.tbs_certificate_bytes,
            cert.signature_algorithm_oid.dotted_string,
            cert.signature,
            key,
            serial,
            extensions,
            outer,
            matches,
            issuer=issuer,
            subject=subject,
            not_before=not_before,
            not_after=not_after,
        )


def _signed(der: bytes, what: str, kind: str) -> tuple[_der.Tlv, _der.Tlv, _der.Tlv]:
    """``SEQUENCE {tbs, signatureAlgorithm, BIT STRING}`` (a Certificate or a CRL)."""
    outer = _der.read_one(der, _der.SEQUENCE, what)
    parts = _der.children(outer.value)
    if len(parts) != 3 or parts[0].tag != _der.SEQUENCE or parts[2].tag != _der.BIT_STRING:
        raise ParseError(f"{what}: not an X.509 {kind}")
    tbs, sig_alg, sig_bits = parts
    if not sig_bits.value or sig_bits.value[0] != 0:
        raise ParseError(f"{what}: signature BIT STRING has unused bits")
    return tbs, sig_alg, sig_bits


def _tbs_fields(der: bytes) -> tuple[_der.Tlv, _der.Tlv, _der.Tlv, list[_der.Tlv], int]:
    """Certificate ::= SEQUENCE {tbs, sigAlg, BIT STRING}; the TBS fields after the version."""
    tbs, sig_alg, sig_bits = _signed(der, "certificate", "Certificate")
    fields_ = _der.children(tbs.value)
    index = 1 if fields_ and fields_[0].tag == _der.EXPLICIT_0 else 0
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    if len(fields_) < index + 6:
        raise ParseError("certificate: truncated TBSCertificate")
    return tbs, sig_alg, sig_bits, fields_, index


def _algorithms(der: bytes) -> tuple[bytes, bool]:
    """The outer signature AlgorithmIdentifier and whether the TBS names the same one."""
    _, sig_alg, _, fields_, index = _tbs_fields(der)
    return sig_alg.raw, fields_[index + 1].raw == sig_alg.raw


def _names_validity(der: bytes) -> tuple[bytes, bytes, datetime.datetime, datetime.datetime]:
    """issuer and subject (exact DER Names) and the validity period of the TBS."""
    _, _, _, fields_, index = _tbs_fields(der)
    issuer, validity, subject = fields_[index + 2 : index + 5]
    if issuer.tag != _der.SEQUENCE or subject.tag != _der.SEQUENCE:
        raise ParseError("certificate: malformed issuer or subject Name")
    times = _der.children(validity.value) if validity.tag == _der.SEQUENCE else []
    if len(times) != 2:
        raise ParseError("certificate: malformed validity")
    not_before = _der.decode_time(times[0], "certificate notBefore")
    not_after = _der.decode_time(times[1], "certificate notAfter")
    return issuer.raw, subject.raw, not_before, not_after


def _from_der_reader(der: bytes) -> SnpCertificate:
    """RFC 5280 §4.1 read by hand: Certificate ::= SEQUENCE {tbs, sigAlg, BIT STRING}."""
    tbs, sig_alg, sig_bits, fields_, index = _tbs_fields(der)
    algs = _der.children(sig_alg.value)
    if not algs:
        raise ParseError("certificate: empty signatureAlgorithm")
    signature_oid = _der.decode_oid(algs[0])
    serial = _der.decode_integer(fields_[index], "certificate serialNumber")
    spki = fields_[index + 5]
    if spki.tag != _der.SEQUENCE:
        raise ParseError("certificate: malformed subjectPublicKeyInfo")
    extensions: dict[str, bytes] = {}
    for item in fields_[index + 6 :]:
        if item.tag != _der.EXPLICIT_3:
            continue
        seq = _der.read_one(item.value, _der.SEQUENCE, "certificate extensions")
        for ext in _der.children(seq.value):
            members = _der.children(ext.value)
            if ext.tag != _der.SEQUENCE or len(members) not in (2, 3):
                raise ParseError("certificate: malformed extension")
            value = members[-1]
            if value.tag != _der.OCTET_STRING:
                raise ParseError("certificate: extension value is not an OCTET STRING")
            extensions[_der.decode_oid(members[0])] = value.value
    issuer, subject, not_before, not_after = _names_validity(der)
    return SnpCertificate(
        der,
        tbs.raw,
        signature_oid,
        sig_bits.value[1:],
        _public_key(spki.raw),
        serial,
        extensions,
        sig_alg.raw,
        fields_[index + 1].raw == sig_alg.raw,
        fallback=True,
        issuer=issuer,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
    )


def load_pem_or_der(data: bytes) -> list[SnpCertificate]:
    """Every certificate in a PEM bundle, or the single DER certificate."""
    if b"-----BEGIN" in data:
        try:
            blobs = [c.public_bytes(serialization.Encoding.DER) for c in _pem_certs(data)]
        except ValueError as exc:
            raise ParseError(f"PEM certificates: {exc}") from None
        if not blobs:
            raise ParseError("PEM: no certificate found")
        return [SnpCertificate.from_der(blob) for blob in blobs]
    return [SnpCertificate.from_der(data)]


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_pem_x509_certificates(data)


# ------------------------------------------------------------------ trust anchors

#: Failure codes of chain checks beyond signatures (``ChainInvalid.reasons[0]``).
ISSUER_NAME_MISMATCH = "issuer_name_mismatch"
CERTIFICATE_EXPIRED = "certificate_expired"


@dataclass(frozen=True)
class SnpAnchor:
    """A pinned SNP root: ARK, ASK (signs VCEKs) and optionally ASVK (signs VLEKs)."""

    name: str
    ark: SnpCertificate
    ask: SnpCertificate
    asvk: SnpCertificate | None = None

    def check(self, at: datetime.datetime | None = None) -> tuple[str, ...]:
        """Verify ARK (self-signed), ASK and ASVK (signed by the ARK, issuer = ARK subject);
        with ``at``, each is valid at that time. ``ChainInvalid`` (``.code`` names the
        failing check) if not."""
        links = []
        for role, cert in (("ARK", self.ark), ("ASK", self.ask), ("ASVK", self.asvk)):
            if cert is None:
                continue
            if not cert.is_rsa or cert.rsa_key().key_size not in (2048, 4096):
                raise ChainInvalid(f"the {self.name} {role} is not an RSA-4096 (or 2048) key")
        if not self.ark.is_signed_by(self.ark):
            raise ChainInvalid(f"the {self.name} ARK is not self-signed (RSA-PSS SHA-384)")
        if not self.ark.issued_by_name(self.ark):
            raise ChainInvalid(
                f"the {self.name} ARK's issuer is not its own subject",
                reasons=[ISSUER_NAME_MISMATCH],
            )
        links.append(f"ARK ({self.name}) is self-signed")
        for role, cert in (("ASK", self.ask), ("ASVK", self.asvk)):
            if cert is None:
                continue
            if not cert.is_signed_by(self.ark):
                raise ChainInvalid(f"the {self.name} {role} is not signed by the {self.name} ARK")
            if not cert.issued_by_name(self.ark):
                raise ChainInvalid(
                    f"the {self.name} {role}'s issuer is not the {self.name} ARK's subject",
                    reasons=[ISSUER_NAME_MISMATCH],
                )
            links.append(f"{role} ({self.name}) is signed by the {self.name} ARK")
        if at is not None:
            for role, cert in (("ARK", self.ark), ("ASK", self.ask), ("ASVK", self.asvk)):
                problem = None if cert is None else cert.validity_problem(f"{self.name} {role}", at)
                if problem is not None:
                    raise ChainInvalid(problem, reasons=[CERTIFICATE_EXPIRED])
            links.append(f"the {self.name} ARK, ASK and ASVK are valid at {at:%Y-%m-%d %H:%M:%S}Z")
        return tuple(links)


def anchor_from_pem(name: str, ark: bytes, ask: bytes, asvk: bytes | None = None) -> SnpAnchor:
    """Build and validate an anchor from the bytes of ``ark.pem``, ``ask.pem``, ``asvk.pem``.

    Each file holds one certificate (PEM or DER). ``ChainInvalid`` if the ARK is not
    self-signed or the ASK/ASVK is not signed by it; ``ParseError`` if unreadable.
    """

    def one(data: bytes, what: str) -> SnpCertificate:
        certs = load_pem_or_der(data)
        if len(certs) != 1:
            raise ParseError(f"{what}: expected one certificate, got {len(certs)}")
        return certs[0]

    anchor = SnpAnchor(
        name,
        one(ark, "ark.pem"),
        one(ask, "ask.pem"),
        None if asvk is None else one(asvk, "asvk.pem"),
    )
    anchor.check()
    return anchor


def split_ask_ark_asvk(data: bytes) -> tuple[SnpCertificate, ...]:
    """A KDS/Trustee bundle (ASK, ARK[, ASVK]) in file order."""
    return tuple(load_pem_or_der(data))


@functools.cache
def builtin_snp_anchors() -> tuple[SnpAnchor, ...]:
    """The pinned AMD SNP roots for Milan, Genoa and Turin (package data, re-checked)."""
    root = resources.files("attestd.sev") / "builtin" / "snp"
    anchors = []
    for gen in Generation:
        directory = root / gen.value
        anchor = SnpAnchor(
            gen.value,
            load_pem_or_der((directory / "ark.pem").read_bytes())[0],
            load_pem_or_der((directory / "ask.pem").read_bytes())[0],
            load_pem_or_der((directory / "asvk.pem").read_bytes())[0],
        )
        anchor.check()
        anchors.append(anchor)
    return tuple(anchors)


# ------------------------------------------------------------------------- CRLs


@dataclass(frozen=True)
class SnpCrl:
    """An AMD KDS certificate revocation list (``/vcek/v1/<product>/crl``, RFC 5280 §5).

    One per product line, signed by the ARK (RSA-PSS SHA-384), listing the serial
    numbers of revoked ASKs and ASVKs. Read from the DER by hand (the signature is
    checked over the exact ``tbs`` bytes received); :meth:`signed_by` and
    :meth:`fresh_at` are the checks, :attr:`revoked` the serial numbers.
    """

    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    signature_oid: str
    signature: bytes = field(repr=False)
    signature_algorithm: bytes = field(repr=False)
    tbs_algorithm_matches: bool
    issuer: bytes = field(repr=False)
    this_update: datetime.datetime
    next_update: datetime.datetime | None
    revoked: frozenset[int]

    @classmethod
    def from_der(cls, der: bytes) -> SnpCrl:
        """Parse a DER (or PEM) CRL; ``ParseError`` naming the CRL if it is not one."""
        try:
            return cls._read(der)
        except ParseError as exc:
            if exc.message.startswith("CRL"):
                raise
            raise ParseError(f"CRL: {exc.message}") from None

    @classmethod
    def _read(cls, der: bytes) -> SnpCrl:
        """CertificateList ::= SEQUENCE {tbsCertList, signatureAlgorithm, signatureValue}."""
        if der.startswith(b"-----BEGIN"):
            try:
                der = x509.load_pem_x509_crl(der).public_bytes(serialization.Encoding.DER)
            except ValueError:
                raise ParseError("CRL: unreadable PEM") from None
        tbs, sig_alg, sig_bits = _signed(der, "CRL", "CertificateList")
        algs = _der.children(sig_alg.value)
        if sig_alg.tag != _der.SEQUENCE or not algs:
            raise ParseError("CRL: malformed signatureAlgorithm")
        items = _der.children(tbs.value)
        if items and items[0].tag == _der.INTEGER:  # version v2
            items = items[1:]
        if len(items) < 3 or items[1].tag != _der.SEQUENCE:
            raise ParseError("CRL: truncated tbsCertList")
        tbs_alg, issuer, this_update, *rest = items
        next_update = None
        if rest and rest[0].tag in (_der.UTC_TIME, _der.GENERALIZED_TIME):
            next_update = _der.decode_time(rest.pop(0), "CRL nextUpdate")
        revoked: set[int] = set()
        if rest and rest[0].tag == _der.SEQUENCE:
            for entry in _der.children(rest.pop(0).value):
                members = _der.children(entry.value) if entry.tag == _der.SEQUENCE else []
                if len(members) < 2:
                    raise ParseError("CRL: malformed revoked certificate entry")
                revoked.add(_der.decode_integer(members[0], "CRL userCertificate"))
        if any(item.tag != EXPLICIT_0_CRL for item in rest):
            raise ParseError("CRL: unexpected field in tbsCertList")
        return cls(
            der,
            tbs.raw,
            _der.decode_oid(algs[0]),
            sig_bits.value[1:],
            sig_alg.raw,
            tbs_alg.raw == sig_alg.raw,
            issuer.raw,
            _der.decode_time(this_update, "CRL thisUpdate"),
            next_update,
            frozenset(revoked),
        )

    def signed_by(self, ark: SnpCertificate) -> bool:
        """True if ``ark`` issued this CRL: its Name and its RSA-PSS SHA-384 signature."""
        if (
            self.signature_oid != OID_RSASSA_PSS
            or self.signature_algorithm not in PSS_SHA384_ALGORITHMS
            or not self.tbs_algorithm_matches
            or self.issuer != ark.subject
            or not ark.is_rsa
        ):
            return False
        return pss_sha384_verifies(ark, self.tbs, self.signature)

    def fresh_at(self, at: datetime.datetime) -> bool:
        """thisUpdate <= at < nextUpdate (a CRL without nextUpdate is never fresh)."""
        return self.next_update is not None and self.this_update <= at < self.next_update

    def revokes(self, cert: SnpCertificate) -> bool:
        """True if ``cert`` (an ASK or ASVK the CRL's ARK issued) is on the list."""
        return cert.serial_number in self.revoked


#: crlExtensions [0] EXPLICIT in a tbsCertList.
EXPLICIT_0_CRL = 0xA0


# --------------------------------------------------------- extended-report cert table


@dataclass(frozen=True, slots=True)
class CertTable:
    """The extended-report certificate table: GUID -> certificate bytes (DER)."""

    entries: dict[uuid.UUID, bytes]

    @classmethod
    def unpack(cls, data: bytes) -> CertTable:
        """Parse ``{GUID (LE), offset u32, length u32}`` entries up to an all-zero one."""
        entries: dict[uuid.UUID, bytes] = {}
        for index in range(_MAX_TABLE_ENTRIES + 1):
            start = index * _TABLE_ENTRY
            entry = data[start : start + _TABLE_ENTRY]
            if len(entry) != _TABLE_ENTRY:
                raise ParseError("certificate table: no terminating all-zero entry")
            if not any(entry):
                return cls(entries)
            guid = uuid.UUID(bytes_le=entry[:16])
            offset = int.from_bytes(entry[16:20], "little")
            length = int.from_bytes(entry[20:24], "little")
            if offset < start + _TABLE_ENTRY or length == 0 or offset + length > len(data):
                raise ParseError(f"certificate table: entry {guid} points outside the table")
            if guid in entries:
                raise ParseError(f"certificate table: duplicate entry {guid}")
            entries[guid] = data[offset : offset + length]
        raise ParseError(f"certificate table: more than {_MAX_TABLE_ENTRIES} entries")

    def pack(self) -> bytes:
        """Encode: the entries, the all-zero terminator, then each blob in order."""
        header = _TABLE_ENTRY * (len(self.entries) + 1)
        out = bytearray()
        blobs = bytearray()
        for guid, blob in self.entries.items():
            offset = header + len(blobs)
            out += guid.bytes_le + offset.to_bytes(4, "little") + len(blob).to_bytes(4, "little")
            blobs += blob
        return bytes(out + bytes(_TABLE_ENTRY) + blobs)

    def leaf(self) -> tuple[str, bytes] | None:
        """``("vlek", der)`` or ``("vcek", der)`` if the table carries one (VLEK first)."""
        for label, guid in (("vlek", GUID_VLEK), ("vcek", GUID_VCEK)):
            if guid in self.entries:
                return label, self.entries[guid]
        return None


def find_anchor(anchors: Sequence[SnpAnchor], name: str) -> SnpAnchor | None:
    """The anchor called ``name``, if any."""
    return next((a for a in anchors if a.name == name), None)
