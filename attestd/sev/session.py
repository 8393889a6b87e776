"""The SEV launch session: LAUNCH_START and LAUNCH_MEASURE (AMD SEV API #55766 §6.2, §6.5).

LAUNCH_START (sev-protocol.md §5):
The guest owner makes a fresh P-384 GODH key per launch, derives a shared secret
with the platform's PDH key, wraps fresh transport keys (TEK, TIK) under keys
derived from it and MACs the guest policy with the TIK. The firmware side of the
same exchange (:func:`open_session`) is used by the software platform.

LAUNCH_MEASURE (sev-protocol.md §6): ``measure = HMAC-SHA256(TIK, 0x04 || api_major ||
api_minor || build_id || policy || launch_digest || mnonce)`` for firmware API >= 0.17;
older firmware leaves out the first four bytes. Verification compares every candidate in
constant time. (The launch digests themselves are computed in :mod:`attestd.sev.measure`.)
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from cryptography.hazmat.primitives.asymmetric import ec

from attestd.errors import AttestationFailed, MeasurementMismatch, ParseError
from attestd.sev._binary import unpack_exact
from attestd.sev._crypto import aes_ctr as _aes_ctr
from attestd.sev._crypto import hmac_sha256 as _hmac
from attestd.sev.certs import ecdh_cert_for_godh
from attestd.sev.kdf import kdf
from attestd.sev.policy import policy_bytes

Rng = Callable[[int], bytes]

KEY_SIZE = 16
NONCE_SIZE = 16
SESSION_SIZE = 0x80

_LABEL_MASTER = b"sev-master-secret"
_LABEL_KEK = b"sev-kek"
_LABEL_KIK = b"sev-kik"
# Extra random bits beyond the P-384 order make the scalar's bias negligible
# (FIPS 186-5 A.2.1, "extra random bits").
_GODH_SEED_SIZE = 48 + 8
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)


@dataclass(frozen=True, slots=True)
class TransportKeys:
    """The per-launch transport encryption key (TEK) and integrity key (TIK)."""

    tek: bytes = field(repr=False)
    tik: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.tek) != KEY_SIZE or len(self.tik) != KEY_SIZE:
            raise ParseError("TEK and TIK must be 16 bytes each")

    @classmethod
    def generate(cls, rng: Rng = os.urandom) -> Self:
        """Fresh random transport keys."""
        return cls(rng(KEY_SIZE), rng(KEY_SIZE))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode TEK || TIK (the layout of sev-tool's and libvirt's ``tk`` file)."""
        if len(data) != 2 * KEY_SIZE:
            raise ParseError("transport keys must be 32 bytes (TEK || TIK)")
        return cls(data[:KEY_SIZE], data[KEY_SIZE:])

    def to_bytes(self) -> bytes:
        """Encode as TEK || TIK."""
        return self.tek + self.tik


@dataclass(frozen=True, slots=True)
class SessionBlob:
    """The 0x80-byte LAUNCH_START session buffer (sev-protocol.md §5.1 step 9)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16s32s16s32s32s")

    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 0x80 bytes."""
        return cls(*unpack_exact(cls.STRUCT, buf, "session blob"))

    def pack(self) -> bytes:
        """Encode to 0x80 bytes."""
        return self.STRUCT.pack(
            self.nonce, self.wrap_tk, self.wrap_iv, self.wrap_mac, self.policy_mac
        )


@dataclass(frozen=True, slots=True)
class LaunchStart:
    """Everything one launch needs: what goes to the host, and the keys that stay."""

    godh_cert: bytes
    session: bytes
    policy: int
    keys: TransportKeys = field(repr=False)


def _kek_kik(shared: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    master = kdf(shared, _LABEL_MASTER, nonce, KEY_SIZE)
    return kdf(master, _LABEL_KEK, b"", KEY_SIZE), kdf(master, _LABEL_KIK, b"", KEY_SIZE)


def policy_mac(tik: bytes, policy: int) -> bytes:
    """HMAC-SHA256 of the u32 LE policy under the TIK."""
    return _hmac(tik, policy_bytes(policy))


def wrap_session(
    shared: bytes, nonce: bytes, wrap_iv: bytes, keys: TransportKeys, policy: int
) -> SessionBlob:
    """Build the session blob from explicit inputs (deterministic; the KAT entry point)."""
    if len(nonce) != NONCE_SIZE or len(wrap_iv) != NONCE_SIZE:
        raise ParseError("nonce and wrap IV must be 16 bytes each")
    kek, kik = _kek_kik(shared, nonce)
    wrap_tk = _aes_ctr(kek, wrap_iv, keys.to_bytes())
    return SessionBlob(nonce, wrap_tk, wrap_iv, _hmac(kik, wrap_tk), policy_mac(keys.tik, policy))


def shared_secret(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """ECDH: the X coordinate of the shared point, 48 bytes big-endian."""
    if not isinstance(private.curve, ec.SECP384R1) or not isinstance(peer.curve, ec.SECP384R1):
        raise ParseError("SEV ECDH keys must be on P-384")
    return private.exchange(ec.ECDH(), peer)


def generate_godh_key(rng: Rng = os.urandom) -> ec.EllipticCurvePrivateKey:
    """A fresh P-384 GODH private key whose scalar comes from ``rng``."""
    seed = int.from_bytes(rng(_GODH_SEED_SIZE), "big")
    return ec.derive_private_key(seed % (_P384_ORDER - 1) + 1, ec.SECP384R1())


def open_session(
    pdh_key: ec.EllipticCurvePrivateKey,
    godh_key: ec.EllipticCurvePublicKey,
    session: bytes,
    policy: int,
) -> TransportKeys:
    """Firmware side of LAUNCH_START: unwrap TEK/TIK, verify the wrap and policy MACs.

    Raises ``ParseError`` for a malformed blob and ``AttestationFailed`` when a MAC
    does not verify (the message names which one, never any key material).
    """
    blob = SessionBlob.unpack(session)
    kek, kik = _kek_kik(shared_secret(pdh_key, godh_key), blob.nonce)
    if not hmac.compare_digest(_hmac(kik, blob.wrap_tk), blob.wrap_mac):
        raise AttestationFailed("session wrap MAC does not verify")
    keys = TransportKeys.from_bytes(_aes_ctr(kek, blob.wrap_iv, blob.wrap_tk))
    if not hmac.compare_digest(policy_mac(keys.tik, policy), blob.policy_mac):
        raise AttestationFailed("session policy MAC does not verify")
    return keys


def start_launch(
    pdh_key: ec.EllipticCurvePublicKey, policy: int, *, rng: Rng = os.urandom
) -> LaunchStart:
    """A fresh launch session for a **verified** PDH key.

    Makes a new GODH key, nonce, wrap IV, TEK and TIK (all from ``rng``) and
    returns the GODH certificate (0x824 bytes, both signature slots empty) and the
    session blob for the host, plus the transport keys the guest owner keeps.
    """
    policy_bytes(policy)
    godh = generate_godh_key(rng)
    keys = TransportKeys.generate(rng)
    nonce, wrap_iv = rng(NONCE_SIZE), rng(NONCE_SIZE)
    blob = wrap_session(shared_secret(godh, pdh_key), nonce, wrap_iv, keys, policy)
    godh_cert = ecdh_cert_for_godh(godh.public_key()).pack()
    return LaunchStart(godh_cert, blob.pack(), policy, keys)


# -- LAUNCH_MEASURE ---------------------------------------------------------------------

DIGEST_SIZE = 32
MNONCE_SIZE = 16
_CTX_MEASURE = 0x04
_CONTEXT_API = (0, 17)


@dataclass(frozen=True, slots=True, order=True)
class FirmwareVersion:
    """The running firmware's API version and build (from the host, bound by the MAC)."""

    api_major: int
    api_minor: int
    build_id: int = 0

    def __post_init__(self) -> None:
        for value in (self.api_major, self.api_minor, self.build_id):
            if not 0 <= value <= 0xFF:
                raise ParseError("firmware version fields must fit in one byte")

    @property
    def has_measure_context(self) -> bool:
        """True for API >= 0.17, where the MACs cover the context prefix / the measure."""
        return (self.api_major, self.api_minor) >= _CONTEXT_API

    def __str__(self) -> str:
        return f"{self.api_major}.{self.api_minor} build {self.build_id}"


@dataclass(frozen=True, slots=True)
class LaunchMeasurement:
    """The 48-byte LAUNCH_MEASURE output: ``measure`` (32) || ``mnonce`` (16)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<32s16s")

    measure: bytes
    mnonce: bytes

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        """Decode exactly 48 bytes."""
        return cls(*unpack_exact(cls.STRUCT, buf, "launch measurement"))

    def pack(self) -> bytes:
        """Encode to 48 bytes."""
        return self.STRUCT.pack(self.measure, self.mnonce)


def compute_measure(
    tik: bytes, version: FirmwareVersion, policy: int, launch_digest: bytes, mnonce: bytes
) -> bytes:
    """The 32-byte ``measure`` the firmware reports for these inputs."""
    if len(launch_digest) != DIGEST_SIZE:
        raise ParseError("launch digest must be 32 bytes")
    if len(mnonce) != MNONCE_SIZE:
        raise ParseError("mnonce must be 16 bytes")
    msg = policy_bytes(policy) + launch_digest + mnonce
    if version.has_measure_context:
        msg = bytes((_CTX_MEASURE, version.api_major, version.api_minor, version.build_id)) + msg
    return _hmac(tik, msg)


def verify_measurement(
    tik: bytes,
    measurement: LaunchMeasurement,
    version: FirmwareVersion,
    policy: int,
    candidates: Sequence[bytes],
) -> bytes:
    """Return the accepted launch digest that ``measurement`` proves.

    Every candidate is checked with ``hmac.compare_digest`` and the loop never
    exits early, so timing reveals neither the match nor its position. Raises
    ``MeasurementMismatch`` when none matches (without the computed values).
    """
    if len(measurement.measure) != DIGEST_SIZE or len(measurement.mnonce) != MNONCE_SIZE:
        raise ParseError("launch measurement must be 32 + 16 bytes")
    found: bytes | None = None
    for digest in candidates:
        expected = compute_measure(tik, version, policy, digest, measurement.mnonce)
        if hmac.compare_digest(expected, measurement.measure) and found is None:
            found = digest
    if found is None:
        raise MeasurementMismatch(
            "launch measurement does not match any accepted launch digest",
            reasons=[f"{len(candidates)} candidate digest(s) checked, firmware {version}"],
        )
    return found
