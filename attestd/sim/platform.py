"""The simulated AMD SEV platform (firmware side of the guest-owner protocol).

It mints an AMD-format test root (ARK, ASK) and a platform chain the way real
firmware and AMD's key server present them: ``PDH_CERT_EXPORT`` returns PEK, OCA
and an **unsigned** CEK; the ASK-signed CEK is what a KDS would serve. Guest
commands follow the firmware's state machine (AMD SEV API #55766 §6):
LAUNCH_START → LUPDATE, LAUNCH_UPDATE_DATA/VMSA (running launch digest),
LAUNCH_MEASURE → LSECRET, LAUNCH_SECRET, LAUNCH_FINISH → RUNNING. Failures raise
:class:`SevFirmwareError` with the status the firmware would return.

State lives in memory; :meth:`SimulatedPlatform.save` / :meth:`load` persist it to
a directory (keys as PKCS#8 PEM, mode 0600) so separate processes can share one
platform. The directory holds private keys and guest transport keys: it models
the inside of the secure processor and must be treated as secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestd.errors import AttestationFailed, ParseError, SecretTooLarge, Unsupported
from attestd.files import write_private
from attestd.sev.certs import (
    CHIP_ID_SIZE,
    SEV_CERT_SIZE,
    Algorithm,
    AmdCaCertificate,
    Curve,
    EcPublicKey,
    SevCertificate,
    Usage,
)
from attestd.sev.chain import TrustAnchor
from attestd.sev.policy import GuestPolicy, PolicyFlags
from attestd.sev.secrets import LaunchSecret, SecretHeader, check_secret_size, open_launch_secret
from attestd.sev.session import (
    SESSION_SIZE,
    FirmwareVersion,
    LaunchMeasurement,
    TransportKeys,
    compute_measure,
    open_session,
)
from attestd.sim.errors import FirmwareStatus, SevFirmwareError

STATE_FILE = "platform.json"
STATE_VERSION = 1
VMSA_SIZE = 4096
_KEY_NAMES = ("cek", "oca", "pek", "pdh")
_GODH_HEADER = struct.Struct("<IBBHII")


class GuestState(StrEnum):
    """Guest states of the SEV firmware (the subset a launch goes through)."""

    LUPDATE = "LUPDATE"
    LSECRET = "LSECRET"
    RUNNING = "RUNNING"


@dataclass(frozen=True, slots=True)
class PlatformExport:
    """What the host hands the guest owner (libvirt ``virNodeGetSEVInfo`` plus the KDS CEK)."""

    pdh: bytes
    cert_chain: bytes
    chip_id: bytes
    signed_cek: bytes


@dataclass(slots=True)
class _Guest:
    policy: int
    keys: TransportKeys = field(repr=False)
    state: GuestState = GuestState.LUPDATE
    measured: bytearray = field(default_factory=bytearray, repr=False)
    vmsas: int = 0
    measure: bytes | None = None
    secret_table: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "tk": self.keys.to_bytes().hex(),
            "state": self.state.value,
            "vmsas": self.vmsas,
            "measure": None if self.measure is None else self.measure.hex(),
            "secret_table": None if self.secret_table is None else self.secret_table.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], measured: bytes) -> _Guest:
        measure, table = data["measure"], data["secret_table"]
        return cls(
            policy=int(data["policy"]),
            keys=TransportKeys.from_bytes(bytes.fromhex(data["tk"])),
            state=GuestState(data["state"]),
            measured=bytearray(measured),
            vmsas=int(data["vmsas"]),
            measure=None if measure is None else bytes.fromhex(measure),
            secret_table=None if table is None else bytes.fromhex(table),
        )


def _fail(status: FirmwareStatus, message: str) -> SevFirmwareError:
    return SevFirmwareError(status, message)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


class SimulatedPlatform:
    """A software SEV platform with its own keys, chain and guests."""

    def __init__(
        self,
        *,
        name: str,
        keys: dict[str, ec.EllipticCurvePrivateKey],
        ark: AmdCaCertificate,
        ask: AmdCaCertificate,
        certs: dict[str, SevCertificate],
        chip_id: bytes,
        api_major: int,
        api_minor: int,
        build_id: int,
    ) -> None:
        self.name = name
        self._keys = keys
        self.ark = ark
        self.ask = ask
        self._certs = certs
        self.chip_id = chip_id
        self.api_major = api_major
        self.api_minor = api_minor
        self.build_id = build_id
        self._guests: dict[int, _Guest] = {}
        self._next_handle = 1
        FirmwareVersion(api_major, api_minor, build_id)  # validates the ranges

    # ----------------------------------------------------------------- minting

    @classmethod
    def create(
        cls,
        *,
        name: str = "sim",
        api_major: int = 1,
        api_minor: int = 55,
        build_id: int = 21,
        rsa_bits: int = 4096,
    ) -> Self:
        """Mint a new platform: test ARK/ASK (RSA ``rsa_bits``), CEK, OCA, PEK, PDH.

        The ARK/ASK private keys sign the ASK and the KDS copy of the CEK, then are
        dropped: like real firmware, the platform never holds AMD's keys.
        """
        if not name or "/" in name or name.startswith("."):
            raise ParseError(f"invalid platform name {name!r}")
        FirmwareVersion(api_major, api_minor, build_id)  # before the version goes into certificates
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        ark_id, ask_id = os.urandom(16), os.urandom(16)
        ark = AmdCaCertificate.create(
            ark_key, key_id=ark_id, certifying_id=ark_id, usage=Usage.ARK, signer=ark_key
        )
        ask = AmdCaCertificate.create(
            ask_key, key_id=ask_id, certifying_id=ark_id, usage=Usage.ASK, signer=ark_key
        )
        cek_key, oca_key, pek_key, pdh_key = _ec_key(), _ec_key(), _ec_key(), _ec_key()
        keys = {
            "cek": cek_key,
            "oca": oca_key,
            "pek": pek_key,
            "pdh": pdh_key,
        }
        version = {"api_major": api_major, "api_minor": api_minor}
        ecdsa = Algorithm.ECDSA_SHA256
        cek = SevCertificate.from_public_key(cek_key.public_key(), Usage.CEK, ecdsa, **version)
        oca = SevCertificate.from_public_key(oca_key.public_key(), Usage.OCA, ecdsa, **version)
        oca = oca.sign_ecdsa(oca_key, Usage.OCA, 0)
        pek = SevCertificate.from_public_key(pek_key.public_key(), Usage.PEK, ecdsa, **version)
        pek = pek.sign_ecdsa(oca_key, Usage.OCA, 0).sign_ecdsa(cek_key, Usage.CEK, 1)
        pdh = SevCertificate.from_public_key(
            pdh_key.public_key(), Usage.PDH, Algorithm.ECDH_SHA256, **version
        )
        pdh = pdh.sign_ecdsa(pek_key, Usage.PEK, 0)
        certs = {
            "cek": cek,
            "cek.signed": cek.sign_rsa(ask_key, 0),
            "oca": oca,
            "pek": pek,
            "pdh": pdh,
        }
        return cls(
            name=name,
            keys=keys,
            ark=ark,
            ask=ask,
            certs=certs,
            chip_id=os.urandom(CHIP_ID_SIZE),
            api_major=api_major,
            api_minor=api_minor,
            build_id=build_id,
        )

    @property
    def version(self) -> FirmwareVersion:
        """The running firmware's API version and build."""
        return FirmwareVersion(self.api_major, self.api_minor, self.build_id)

    def export(self) -> PlatformExport:
        """PDH_CERT_EXPORT + GET_ID, and the ASK-signed CEK a KDS would serve."""
        chain = self._certs["pek"].pack() + self._certs["oca"].pack() + self._certs["cek"].pack()
        return PlatformExport(
            pdh=self._certs["pdh"].pack(),
            cert_chain=chain,
            chip_id=self.chip_id,
            signed_cek=self._certs["cek.signed"].pack(),
        )

    def trust_anchor(self) -> TrustAnchor:
        """This platform's test ARK/ASK as a trust anchor named after the platform."""
        return TrustAnchor(self.name, self.ark, self.ask)

    def write_trust_anchor(self, directory: Path) -> Path:
        """Write ``<directory>/<name>/{ark,ask}.cert`` (the trust-anchor directory layout)."""
        target = directory / self.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "ark.cert").write_bytes(self.ark.pack())
        (target / "ask.cert").write_bytes(self.ask.pack())
        return target

    # ------------------------------------------------------------ guest commands

    def _guest(self, handle: int, *states: GuestState) -> _Guest:
        guest = self._guests.get(handle)
        if guest is None:
            raise _fail(FirmwareStatus.INVALID_GUEST, f"no guest with handle {handle}")
        if states and guest.state not in states:
            raise _fail(
                FirmwareStatus.INVALID_GUEST_STATE,
                f"guest {handle} is in state {guest.state.value}",
            )
        return guest

    def _godh_key(self, godh_cert: bytes) -> ec.EllipticCurvePublicKey:
        """The firmware's GODH sanity check: size, version, usage, algorithm, curve, point."""
        if len(godh_cert) != SEV_CERT_SIZE:
            raise _fail(
                FirmwareStatus.INVALID_LENGTH, f"GODH certificate is {len(godh_cert)} bytes"
            )
        version, _, _, _, usage, algo = _GODH_HEADER.unpack_from(godh_cert)
        if version != 1:
            raise _fail(FirmwareStatus.INVALID_CERTIFICATE, f"GODH cert version {version}")
        if usage != Usage.PDH:
            raise _fail(FirmwareStatus.INVALID_CERTIFICATE, f"GODH usage 0x{usage:x} is not PDH")
        if algo != Algorithm.ECDH_SHA256:
            raise _fail(FirmwareStatus.INVALID_CERTIFICATE, f"GODH algo 0x{algo:x} not ECDH_SHA256")
        try:
            key = EcPublicKey.unpack(godh_cert[_GODH_HEADER.size : SevCertificate.BODY_SIZE])
            if key.curve is not Curve.P384:
                raise ParseError("GODH key is not on P-384")
            return key.to_cryptography()
        except ParseError as exc:
            raise _fail(FirmwareStatus.INVALID_CERTIFICATE, exc.message) from None

    def launch_start(self, godh_cert: bytes, session: bytes, policy: int) -> int:
        """LAUNCH_START: check the GODH cert, unwrap TEK/TIK, verify both MACs."""
        key = self._godh_key(godh_cert)
        if len(session) != SESSION_SIZE:
            raise _fail(FirmwareStatus.INVALID_LENGTH, f"session is {len(session)} bytes")
        try:
            wanted = GuestPolicy.from_u32(policy)
        except ParseError as exc:
            raise _fail(FirmwareStatus.INVALID_PARAM, exc.message) from None
        if (wanted.api_major, wanted.api_minor) > (self.api_major, self.api_minor):
            raise _fail(
                FirmwareStatus.POLICY_FAILURE,
                f"policy needs API {wanted.api_major}.{wanted.api_minor}, have {self.version}",
            )
        try:
            keys = open_session(self._keys["pdh"], key, session, policy)
        except AttestationFailed as exc:
            raise _fail(FirmwareStatus.BAD_MEASUREMENT, exc.message) from None
        handle = self._next_handle
        self._next_handle += 1
        self._guests[handle] = _Guest(policy=policy, keys=keys)
        return handle

    def launch_update_data(self, handle: int, data: bytes) -> None:
        """LAUNCH_UPDATE_DATA: encrypt in place and extend the launch digest."""
        guest = self._guest(handle, GuestState.LUPDATE)
        if not data or len(data) % 16:
            raise _fail(FirmwareStatus.INVALID_LENGTH, "data length must be a multiple of 16")
        guest.measured += data

    def launch_update_vmsa(self, handle: int, vmsa: bytes) -> None:
        """LAUNCH_UPDATE_VMSA: SEV-ES guests only; extend the digest with one VMSA page."""
        guest = self._guest(handle, GuestState.LUPDATE)
        if not guest.policy & PolicyFlags.ES:
            raise _fail(FirmwareStatus.INVALID_PARAM, "guest policy does not enable SEV-ES")
        if len(vmsa) != VMSA_SIZE:
            raise _fail(FirmwareStatus.INVALID_LENGTH, f"VMSA must be {VMSA_SIZE} bytes")
        guest.measured += vmsa
        guest.vmsas += 1

    def launch_measure(self, handle: int) -> bytes:
        """LAUNCH_MEASURE: ``measure || mnonce`` (48 bytes) with a fresh mnonce."""
        guest = self._guest(handle, GuestState.LUPDATE)
        if guest.policy & PolicyFlags.ES and guest.vmsas == 0:
            raise _fail(FirmwareStatus.INVALID_GUEST_STATE, "SEV-ES guest has no VMSA yet")
        digest = hashlib.sha256(guest.measured).digest()
        mnonce = os.urandom(16)
        measure = compute_measure(guest.keys.tik, self.version, guest.policy, digest, mnonce)
        guest.measure = measure
        guest.state = GuestState.LSECRET
        return LaunchMeasurement(measure, mnonce).pack()

    def launch_secret(self, handle: int, header: bytes, ciphertext: bytes) -> None:
        """LAUNCH_SECRET: verify the packet MAC against this launch's measure, decrypt."""
        guest = self._guest(handle, GuestState.LSECRET)
        if len(header) != SecretHeader.STRUCT.size:
            raise _fail(FirmwareStatus.INVALID_LENGTH, "secret header must be 52 bytes")
        try:
            check_secret_size(len(ciphertext))
        except (ParseError, SecretTooLarge) as exc:
            raise _fail(FirmwareStatus.INVALID_LENGTH, exc.message) from None
        if guest.measure is None:
            raise _fail(FirmwareStatus.INVALID_GUEST_STATE, f"guest {handle} was not measured")
        try:
            table = open_launch_secret(
                guest.keys, guest.measure, LaunchSecret(header, ciphertext), version=self.version
            )
        except Unsupported as exc:
            raise _fail(FirmwareStatus.UNSUPPORTED, exc.message) from None
        except AttestationFailed as exc:
            raise _fail(FirmwareStatus.BAD_MEASUREMENT, exc.message) from None
        guest.secret_table = table

    def launch_finish(self, handle: int) -> None:
        """LAUNCH_FINISH: the guest runs; no more secrets can be injected."""
        guest = self._guest(handle, GuestState.LUPDATE, GuestState.LSECRET)
        guest.state = GuestState.RUNNING

    def secret_table(self, handle: int) -> bytes | None:
        """The decrypted secret table the guest would find in its secret area."""
        return self._guest(handle).secret_table

    def guest_state(self, handle: int) -> GuestState:
        """The state of guest ``handle``."""
        return self._guest(handle).state

    def handles(self) -> list[int]:
        """All guest handles."""
        return sorted(self._guests)

    # --------------------------------------------------------------- persistence

    def save(self, directory: Path) -> None:
        """Persist keys, certificates and guests to ``directory`` (created 0700)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in _KEY_NAMES:
            pem = self._keys[name].private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(directory / f"{name}.key", pem)
        guests: dict[str, Any] = {}
        for handle, guest in self._guests.items():
            guests[str(handle)] = guest.to_json()
            write_private(directory / f"guest-{handle}.measured", bytes(guest.measured))
        state = {
            "version": STATE_VERSION,
            "name": self.name,
            "api_major": self.api_major,
            "api_minor": self.api_minor,
            "build_id": self.build_id,
            "chip_id": self.chip_id.hex(),
            "ark": self.ark.pack().hex(),
            "ask": self.ask.pack().hex(),
            "certs": {name: cert.pack().hex() for name, cert in self._certs.items()},
            "next_handle": self._next_handle,
            "guests": guests,
        }
        write_private(directory / STATE_FILE, json.dumps(state, indent=1).encode())

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Load a platform saved by :meth:`save`; ``FileNotFoundError`` if there is none.

        A state that does not parse (binary, truncated, edited) is a ParseError.
        """
        try:
            return cls._load(directory)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # UnicodeDecodeError, JSONDecodeError and bad hex are ValueErrors
            raise ParseError(f"simulator state in {directory} does not parse: {exc}") from None

    @classmethod
    def _load(cls, directory: Path) -> Self:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ParseError(f"unsupported simulator state version in {directory}")
        keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        for name in _KEY_NAMES:
            key = serialization.load_pem_private_key(
                (directory / f"{name}.key").read_bytes(), password=None
            )
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ParseError(f"unexpected key type in {name}.key")
            keys[name] = key
        platform = cls(
            name=state["name"],
            keys=keys,
            ark=AmdCaCertificate.unpack(bytes.fromhex(state["ark"])),
            ask=AmdCaCertificate.unpack(bytes.fromhex(state["ask"])),
            certs={k: SevCertificate.unpack(bytes.fromhex(v)) for k, v in state["certs"].items()},
            chip_id=bytes.fromhex(state["chip_id"]),
            api_major=int(state["api_major"]),
            api_minor=int(state["api_minor"]),
            build_id=int(state["build_id"]),
        )
        platform._next_handle = int(state["next_handle"])
        for handle, data in state["guests"].items():
            measured = (directory / f"guest-{handle}.measured").read_bytes()
            platform._guests[int(handle)] = _Guest.from_json(data, measured)
        return platform
