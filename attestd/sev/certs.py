"""SEV platform certificates (PDH, PEK, OCA, CEK, GODH) and AMD CA certificates (ARK, ASK).

Layouts and signature rules: AMD SEV API spec #55766, appendix C ("Certificates"),
and ``docs/protocol.md``. Everything is little-endian, including ECC coordinates,
ECDSA r/s, RSA moduli and RSA signatures. Pure: bytes in, objects/bytes out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from attestd.errors import ParseError, Unsupported
from attestd.sev._binary import enum_value, le_bytes, le_int, require_zero, unpack_exact


class Usage(IntEnum):
    """Key usage (spec appendix B, table "Key usage")."""

    ARK = 0x0000
    ASK = 0x0013
    INV = 0x1000
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class Algorithm(IntEnum):
    """Public key / signature algorithm; bit 8 set means SHA-384."""

    NONE = 0x0000
    RSA_SHA256 = 0x0001
    ECDSA_SHA256 = 0x0002
    ECDH_SHA256 = 0x0003
    RSA_SHA384 = 0x0101
    ECDSA_SHA384 = 0x0102
    ECDH_SHA384 = 0x0103

    @property
    def is_signature(self) -> bool:
        """True for the RSA and ECDSA algorithms (the ones that make signatures)."""
        return self in _RSA_ALGOS or self in _ECDSA_ALGOS

    def hash(self) -> hashes.HashAlgorithm:
        """The digest this algorithm names (SHA-384 if bit 8 is set, else SHA-256)."""
        return hashes.SHA384() if self & 0x100 else hashes.SHA256()


_RSA_ALGOS = frozenset({Algorithm.RSA_SHA256, Algorithm.RSA_SHA384})
_ECDSA_ALGOS = frozenset({Algorithm.ECDSA_SHA256, Algorithm.ECDSA_SHA384})
_ECDH_ALGOS = frozenset({Algorithm.ECDH_SHA256, Algorithm.ECDH_SHA384})
_EC_ALGOS = _ECDSA_ALGOS | _ECDH_ALGOS


class Curve(IntEnum):
    """ECC curve id inside an SEV public key."""

    P256 = 1
    P384 = 2

    @property
    def curve(self) -> ec.EllipticCurve:
        """The ``cryptography`` curve object."""
        return ec.SECP256R1() if self is Curve.P256 else ec.SECP384R1()


_CURVE_IDS = {"secp256r1": Curve.P256, "secp384r1": Curve.P384}

#: Size of a SEV (v1) platform certificate (PDH, PEK, OCA, CEK; spec appendix C.1).
SEV_CERT_SIZE = 0x824
#: Size of a chip id (GET_ID output), the key of the CEK at AMD KDS.
CHIP_ID_SIZE = 64
#: AMD's key distribution server (ASK-signed CEKs; SNP VCEKs).
AMD_KDS_URL = "https://kdsintf.amd.com"
_SIG_SIZE = 0x200
_COORD_SIZE = 72


@dataclass(frozen=True, slots=True)
class EcPublicKey:
    """ECDSA/ECDH public key union member (spec C.3.1): curve, qx, qy LE in 72 bytes each."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I72s72s880s")

    curve: Curve
    qx: int
    qy: int

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        curve, qx, qy, reserved_0a4 = unpack_exact(cls.LAYOUT, data, "EC public key")
        require_zero(reserved_0a4, "EC public key reserved area")
        return cls(enum_value(Curve, curve, "EC curve"), le_int(qx), le_int(qy))

    def pack(self) -> bytes:
        return self.LAYOUT.pack(
            self.curve,
            le_bytes(self.qx, _COORD_SIZE),
            le_bytes(self.qy, _COORD_SIZE),
            bytes(880),
        )

    def to_cryptography(self) -> ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object; ``ParseError`` if the point is not on the curve."""
        try:
            return ec.EllipticCurvePublicNumbers(self.qx, self.qy, self.curve.curve).public_key()
        except ValueError:
            raise ParseError("EC public key: point is not on the curve") from None

    @classmethod
    def from_cryptography(cls, key: ec.EllipticCurvePublicKey) -> Self:
        curve = _CURVE_IDS.get(key.curve.name)
        if curve is None:
            raise Unsupported(f"EC curve {key.curve.name} is not used by SEV")
        numbers = key.public_numbers()
        return cls(curve, numbers.x, numbers.y)


@dataclass(frozen=True, slots=True)
class RsaPublicKey:
    """RSA public key union member (spec C.3.2): modulus size in bits, exponent and modulus LE."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I512s512s")

    modulus_size: int
    pub_exp: int
    modulus: int

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        size, exp, modulus = unpack_exact(cls.LAYOUT, data, "RSA public key")
        return cls(size, le_int(exp), le_int(modulus))

    def pack(self) -> bytes:
        return self.LAYOUT.pack(
            self.modulus_size, le_bytes(self.pub_exp, 512), le_bytes(self.modulus, 512)
        )


@dataclass(frozen=True, slots=True)
class SevSignature:
    """One signature slot of an SEV certificate (usage, algo, 512 bytes of signature).

    The raw fields are kept so that any certificate round-trips byte-exact. A slot
    whose algo is not a signature algorithm is empty (old KDS CEKs had usage 0x0010
    in their empty slot).
    """

    usage: int
    algo: int
    sig: bytes

    def __post_init__(self) -> None:
        if len(self.sig) != _SIG_SIZE:
            raise ValueError(f"a signature slot holds {_SIG_SIZE} bytes")

    @classmethod
    def empty(cls) -> Self:
        return cls(Usage.INV, Algorithm.NONE, bytes(_SIG_SIZE))

    @property
    def algorithm(self) -> Algorithm | None:
        """The slot's algorithm if it is a known signature algorithm, else None (empty slot)."""
        try:
            algo = Algorithm(self.algo)
        except ValueError:
            return None
        return algo if algo.is_signature else None

    @property
    def is_empty(self) -> bool:
        return self.algorithm is None

    def ecdsa_der(self) -> bytes:
        """The ECDSA signature (r, s LE in 72 bytes each) as DER for ``cryptography``."""
        require_zero(self.sig[2 * _COORD_SIZE :], "ECDSA signature reserved area")
        r = le_int(self.sig[:_COORD_SIZE])
        s = le_int(self.sig[_COORD_SIZE : 2 * _COORD_SIZE])
        return encode_dss_signature(r, s)

    def rsa_signature(self, modulus_bytes: int) -> bytes | None:
        """The RSA signature big-endian in ``modulus_bytes``, or None if it is wider."""
        return _rsa_big_endian(self.sig, modulus_bytes)


def _rsa_big_endian(signature: bytes, modulus_bytes: int) -> bytes | None:
    """An LE signature as the big-endian string RSA wants, or None if wider than the modulus."""
    value = le_int(signature)
    if value.bit_length() > 8 * modulus_bytes:
        return None
    return value.to_bytes(modulus_bytes, "big")


def _ecdsa_slot(key: ec.EllipticCurvePrivateKey, usage: Usage, body: bytes) -> SevSignature:
    der = key.sign(body, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = le_bytes(r, _COORD_SIZE) + le_bytes(s, _COORD_SIZE) + bytes(_SIG_SIZE - 2 * _COORD_SIZE)
    return SevSignature(usage, Algorithm.ECDSA_SHA256, sig)


def rsa_algorithm(modulus_bits: int) -> Algorithm:
    """The RSA-PSS algorithm AMD uses for a key size: 2048 -> SHA-256, 4096 -> SHA-384."""
    if modulus_bits == 2048:
        return Algorithm.RSA_SHA256
    if modulus_bits == 4096:
        return Algorithm.RSA_SHA384
    raise Unsupported(f"RSA key size {modulus_bits} is not used by AMD")


def _pss(algorithm: Algorithm) -> padding.PSS:
    digest = algorithm.hash()
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)


def _rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> tuple[Algorithm, bytes]:
    """RSA-PSS signature (hash by key size, salt = digest length) as a LE bignum."""
    algorithm = rsa_algorithm(key.key_size)
    signature = key.sign(message, _pss(algorithm), algorithm.hash())
    return algorithm, signature[::-1]


def _rsa_verify(key: rsa.RSAPublicKey, algorithm: Algorithm, signature: bytes, msg: bytes) -> bool:
    try:
        key.verify(signature, msg, _pss(algorithm), algorithm.hash())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SevCertificate:
    """The 0x824-byte SEV platform certificate (spec appendix C.1).

    Signed region (both slots, every signer): ``[0:0x414]`` (``body``).
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IBBHII1028sII512sII512s")
    BODY_SIZE: ClassVar[int] = 0x414

    version: int
    api_major: int
    api_minor: int
    usage: Usage
    algorithm: Algorithm
    key: EcPublicKey | RsaPublicKey
    signatures: tuple[SevSignature, SevSignature]

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        (
            version,
            api_major,
            api_minor,
            reserved_006,
            usage,
            algo,
            pubkey,
            sig1_usage,
            sig1_algo,
            sig1,
            sig2_usage,
            sig2_algo,
            sig2,
        ) = unpack_exact(cls.LAYOUT, data, "SEV certificate")
        if version != 1:
            raise ParseError(f"SEV certificate: unsupported version {version}")
        require_zero(struct.pack("<H", reserved_006), "SEV certificate header")
        algorithm = enum_value(Algorithm, algo, "SEV certificate key algorithm")
        key: EcPublicKey | RsaPublicKey
        if algorithm in _EC_ALGOS:
            key = EcPublicKey.unpack(pubkey)
        elif algorithm in _RSA_ALGOS:
            key = RsaPublicKey.unpack(pubkey)
        else:
            raise ParseError("SEV certificate: key algorithm NONE")
        slots = (
            SevSignature(sig1_usage, sig1_algo, sig1),
            SevSignature(sig2_usage, sig2_algo, sig2),
        )
        for slot in slots:
            if not slot.is_empty:
                enum_value(Usage, slot.usage, "SEV certificate signature usage")
        return cls(
            version,
            api_major,
            api_minor,
            enum_value(Usage, usage, "SEV certificate key usage"),
            algorithm,
            key,
            slots,
        )

    def pack(self) -> bytes:
        s1, s2 = self.signatures
        return self.LAYOUT.pack(
            self.version,
            self.api_major,
            self.api_minor,
            0,
            self.usage,
            self.algorithm,
            self.key.pack(),
            s1.usage,
            s1.algo,
            s1.sig,
            s2.usage,
            s2.algo,
            s2.sig,
        )

    @property
    def body(self) -> bytes:
        """The signed region ``[0:0x414]``: header and public key."""
        return self.pack()[: self.BODY_SIZE]

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the signed region only: the identity of the certified key.

        Signature slots are left out, so bytes no signature covers (an unused slot, the
        padding of a used one) cannot make one platform look like a new one.
        """
        return hashlib.sha256(self.body).hexdigest()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The certified EC key; ``Unsupported`` for an RSA key, ``ParseError`` if off-curve."""
        if not isinstance(self.key, EcPublicKey):
            raise Unsupported("SEV certificate holds an RSA key; only EC keys are used")
        return self.key.to_cryptography()

    @classmethod
    def from_public_key(
        cls,
        key: ec.EllipticCurvePublicKey,
        usage: Usage,
        algorithm: Algorithm,
        api_major: int = 0,
        api_minor: int = 0,
    ) -> Self:
        """A certificate for an EC key with both signature slots empty."""
        if algorithm not in _EC_ALGOS:
            raise Unsupported(f"{algorithm.name} is not an EC algorithm")
        empty = SevSignature.empty()
        return cls(
            1,
            api_major,
            api_minor,
            usage,
            algorithm,
            EcPublicKey.from_cryptography(key),
            (empty, empty),
        )

    def _with_slot(self, slot: int, signature: SevSignature) -> Self:
        if slot not in (0, 1):
            raise ValueError("signature slot must be 0 or 1")
        slots = list(self.signatures)
        slots[slot] = signature
        return replace(self, signatures=(slots[0], slots[1]))

    def sign_ecdsa(self, key: ec.EllipticCurvePrivateKey, signer_usage: Usage, slot: int) -> Self:
        """A copy signed ECDSA_SHA256 in ``slot`` by ``key``, whose usage is ``signer_usage``."""
        return self._with_slot(slot, _ecdsa_slot(key, signer_usage, self.body))

    def sign_rsa(self, key: rsa.RSAPrivateKey, slot: int = 0) -> Self:
        """A copy with an ASK signature (RSA-PSS, hash by key size) in ``slot``."""
        algorithm, signature = _rsa_sign(key, self.body)
        padded = signature + bytes(_SIG_SIZE - len(signature))
        return self._with_slot(slot, SevSignature(Usage.ASK, algorithm, padded))

    def signed_slot(self, signer: SevCertificate | AmdCaCertificate) -> int | None:
        """The index of the slot that ``signer`` verifiably signed, or None.

        A slot is considered only if its usage equals the signer's key usage and
        its algo equals the signer's key algorithm (for an ASK: RSA_SHA256 for a
        2048-bit key, RSA_SHA384 for a 4096-bit key), as the firmware does.
        """
        if isinstance(signer, AmdCaCertificate):
            return self._signed_by_ca(signer)
        if signer.algorithm not in _ECDSA_ALGOS:
            return None
        for index, slot in enumerate(self.signatures):
            if slot.usage != signer.usage or slot.algo != signer.algorithm:
                continue
            try:
                der = slot.ecdsa_der()
                signer.public_key().verify(der, self.body, ec.ECDSA(signer.algorithm.hash()))
            except (InvalidSignature, ParseError, ValueError):
                continue
            return index
        return None

    def _signed_by_ca(self, signer: AmdCaCertificate) -> int | None:
        try:
            algorithm = rsa_algorithm(signer.modulus_size)
            key = signer.public_key()
        except (Unsupported, ParseError):
            return None
        for index, slot in enumerate(self.signatures):
            if slot.usage != signer.usage or slot.algo != algorithm:
                continue
            signature = slot.rsa_signature(signer.modulus_size // 8)
            if signature is not None and _rsa_verify(key, algorithm, signature, self.body):
                return index
        return None

    def is_signed_by(self, signer: SevCertificate | AmdCaCertificate) -> bool:
        """True if one slot holds a valid signature by ``signer`` (SEV cert, or ASK)."""
        return self.signed_slot(signer) is not None


def ecdh_cert_for_godh(key: ec.EllipticCurvePublicKey) -> SevCertificate:
    """The guest owner's GODH certificate: usage PDH, ECDH_SHA256, both slots empty."""
    return SevCertificate.from_public_key(key, Usage.PDH, Algorithm.ECDH_SHA256)


@dataclass(frozen=True, slots=True)
class AmdCaCertificate:
    """AMD's own signing-key format for the ARK and ASK (spec appendix C.2, "AMD SEV key").

    64-byte header, then exponent, modulus and signature, each LE and sized from the
    header. Signed region: header, exponent and modulus (``body``); RSA-PSS with
    SHA-256 for 2048-bit keys and SHA-384 for 4096-bit keys, salt = digest length.
    """

    HEADER: ClassVar[struct.Struct] = struct.Struct("<I16s16sI16sII")

    version: int
    key_id: bytes
    certifying_id: bytes
    usage: Usage
    pub_exp_size: int
    modulus_size: int
    pub_exp: int
    modulus: int
    signature: bytes

    @classmethod
    def unpack_prefix(cls, data: bytes) -> tuple[Self, bytes]:
        """Parse one certificate from the start of ``data``; return it and the rest."""
        if len(data) < cls.HEADER.size:
            raise ParseError(f"AMD CA certificate: {len(data)} bytes is shorter than its header")
        header = data[: cls.HEADER.size]
        version, key_id, cert_id, usage, reserved_028, exp_bits, mod_bits = cls.HEADER.unpack(
            header
        )
        if version != 1:
            raise ParseError(f"AMD CA certificate: unsupported version {version}")
        require_zero(reserved_028, "AMD CA certificate header")
        key_usage = enum_value(Usage, usage, "AMD CA certificate key usage")
        if key_usage not in (Usage.ARK, Usage.ASK):
            raise ParseError(f"AMD CA certificate: key usage {key_usage.name} is not ARK or ASK")
        if mod_bits not in (2048, 4096) or exp_bits != mod_bits:
            raise ParseError(
                f"AMD CA certificate: unsupported key sizes ({exp_bits}/{mod_bits} bits)"
            )
        exp_len, mod_len = exp_bits // 8, mod_bits // 8
        end = cls.HEADER.size + exp_len + 2 * mod_len
        if len(data) < end:
            raise ParseError(
                f"AMD CA certificate: expected {end} bytes, got {len(data)} (signature missing?)"
            )
        exp_at = cls.HEADER.size
        mod_at = exp_at + exp_len
        sig_at = mod_at + mod_len
        cert = cls(
            version,
            key_id,
            cert_id,
            key_usage,
            exp_bits,
            mod_bits,
            le_int(data[exp_at:mod_at]),
            le_int(data[mod_at:sig_at]),
            data[sig_at:end],
        )
        return cert, data[end:]

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        """Parse exactly one certificate."""
        cert, rest = cls.unpack_prefix(data)
        if rest:
            raise ParseError(f"AMD CA certificate: {len(rest)} trailing bytes")
        return cert

    @property
    def body(self) -> bytes:
        """The signed region: header, exponent and modulus."""
        header = self.HEADER.pack(
            self.version,
            self.key_id,
            self.certifying_id,
            self.usage,
            bytes(16),
            self.pub_exp_size,
            self.modulus_size,
        )
        return (
            header
            + le_bytes(self.pub_exp, self.pub_exp_size // 8)
            + le_bytes(self.modulus, self.modulus_size // 8)
        )

    def pack(self) -> bytes:
        return self.body + self.signature

    def public_key(self) -> rsa.RSAPublicKey:
        """The certified RSA key; ``ParseError`` if the numbers are not a valid RSA key."""
        try:
            return rsa.RSAPublicNumbers(self.pub_exp, self.modulus).public_key()
        except ValueError:
            raise ParseError("AMD CA certificate: invalid RSA public key") from None

    def is_signed_by(self, signer: AmdCaCertificate) -> bool:
        """True if ``signer`` (the ARK, or itself for the ARK) made this certificate's signature.

        Also requires ``certifying_id == signer.key_id`` (all 16 bytes).
        """
        if self.certifying_id != signer.key_id:
            return False
        try:
            algorithm = rsa_algorithm(signer.modulus_size)
            key = signer.public_key()
        except (Unsupported, ParseError):
            return False
        big_endian = _rsa_big_endian(self.signature, signer.modulus_size // 8)
        return big_endian is not None and _rsa_verify(key, algorithm, big_endian, self.body)

    @classmethod
    def create(
        cls,
        key: rsa.RSAPrivateKey,
        *,
        key_id: bytes,
        certifying_id: bytes,
        usage: Usage,
        signer: rsa.RSAPrivateKey,
    ) -> Self:
        """Mint a certificate for ``key``, signed by ``signer`` (``key`` itself for an ARK)."""
        if len(key_id) != 16 or len(certifying_id) != 16:
            raise ValueError("key_id and certifying_id must be 16 bytes")
        if usage not in (Usage.ARK, Usage.ASK):
            raise ValueError("an AMD CA certificate is an ARK or an ASK")
        rsa_algorithm(key.key_size)
        numbers = key.public_key().public_numbers()
        unsigned = cls(
            1, key_id, certifying_id, usage, key.key_size, key.key_size, numbers.e, numbers.n, b""
        )
        _, signature = _rsa_sign(signer, unsigned.body)
        return replace(unsigned, signature=le_bytes(le_int(signature), key.key_size // 8))
