"""The simulated SEV-SNP platform: an AMD secure processor that signs attestation reports.

It mints its own X.509 roots the way AMD's key server presents them (ARK
self-signed, ASK and ASVK signed by the ARK: RSA-4096, RSA-PSS SHA-384, salt 48,
AMD-like subjects) and, per simulated chip, a VCEK (ECDSA P-384, **serial number 0**
like AMD's, with the AMD extensions: structVersion, productName, the SPLs, hwID) and
optionally a VLEK (cspID, no hwID). A report is the 0x4A0-byte ATTESTATION_REPORT
for a given REPORT_DATA, with the launch measurement computed from the files the
VM is started with (:mod:`attestd.sev.measure`), HOST_DATA, policy, VMPL, the
platform's TCB and firmware version, and the CPUID of the simulated generation;
it is signed over ``[0x000, 0x2A0)`` with r and s little-endian.

The ARK/ASK/ASVK private keys are used once and dropped: like real firmware, the
platform never holds AMD's keys. :meth:`SnpPlatform.save` writes the state next to
the SEV simulator's (``snp.json``, ``snp-vcek.key``, ``snp-vlek.key``; mode 0600).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestd.errors import ParseError
from attestd.files import write_private
from attestd.sev.measure.digest import launch_digest
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.snp import _der
from attestd.sev.snp.certs import (
    AMD_ARC,
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    CertTable,
    SnpAnchor,
    SnpCertificate,
    pss_sha384,
)
from attestd.sev.snp.report import (
    COMPONENT_SIZE,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    AttestationReport,
    FirmwareVersion,
    Generation,
    KeyInfo,
    PlatformInfo,
    PolicyFlags,
    SigningKey,
    SnpPolicy,
    TcbVersion,
)
from attestd.sim.errors import FirmwareStatus, SevFirmwareError

STATE_FILE = "snp.json"
STATE_VERSION = 1
_KEY_FILES = {SigningKey.VCEK: "snp-vcek.key", SigningKey.VLEK: "snp-vlek.key"}
ARK_KEY_FILE = "snp-ark.key"
#: How long a CRL the simulated ARK issues is current (AMD's: days to weeks).
CRL_VALIDITY = datetime.timedelta(days=7)

#: CPUID family, model, stepping reported per generation (a real part of each line).
CPUID = {
    Generation.MILAN: (0x19, 0x01, 0x01),
    Generation.GENOA: (0x19, 0x11, 0x01),
    Generation.TURIN: (0x1A, 0x02, 0x01),
}
PRODUCT_NAME = {Generation.MILAN: "Milan-B0", Generation.GENOA: "Genoa", Generation.TURIN: "Turin"}
DEFAULT_TCB = {
    Generation.MILAN: TcbVersion.build(bootloader=4, tee=0, snp=24, microcode=219),
    Generation.GENOA: TcbVersion.build(bootloader=10, tee=0, snp=23, microcode=25),
    Generation.TURIN: TcbVersion.build(bootloader=1, tee=1, snp=3, microcode=9, fmc=1),
}
_VALIDITY = datetime.timedelta(days=365 * 25)
DEFAULT_FIRMWARE = FirmwareVersion(1, 55, 40)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: str, issuer: str, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, serial: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
    )


def _ca_cert(subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey) -> bytes:
    builder = _builder(subject, issuer, key.public_key(), int.from_bytes(os.urandom(8), "big") | 1)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    cert = builder.sign(signer, hashes.SHA384(), rsa_padding=pss_sha384())
    return cert.public_bytes(serialization.Encoding.DER)


def _amd_ext(suffix: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_ARC}.{suffix}"), value)


def _ia5(text: str) -> bytes:
    return _der.encode(_der.IA5_STRING, text.encode("ascii"))


def _leaf_cert(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    extensions: list[x509.UnrecognizedExtension],
) -> bytes:
    """An AMD-style VCEK/VLEK: serial number 0, signed RSA-PSS SHA-384 by the ASK/ASVK.

    ``cryptography`` builds certificates with positive serials only, so the TBS is
    built with serial 1, its one-byte serial patched to 0 (same length), and the
    certificate assembled and signed here over the patched TBS.
    """
    builder = _builder(subject, issuer, key, 1)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    template = builder.sign(signer, hashes.SHA384(), rsa_padding=pss_sha384())
    outer = _der.read_one(template.public_bytes(serialization.Encoding.DER), _der.SEQUENCE, "cert")
    tbs, sig_alg, _ = _der.children(outer.value)
    items = _der.children(tbs.value)
    serial = items[1]
    if serial.raw != b"\x02\x01\x01":
        raise AssertionError("unexpected TBS serial encoding")
    offset = tbs.raw.index(items[0].raw) + len(items[0].raw)
    patched = tbs.raw[:offset] + b"\x02\x01\x00" + tbs.raw[offset + 3 :]
    signature = signer.sign(patched, pss_sha384(), hashes.SHA384())
    body = patched + sig_alg.raw + _der.encode(_der.BIT_STRING, b"\x00" + signature)
    return _der.encode(_der.SEQUENCE, body)


def _spl_extensions(tcb: TcbVersion, generation: Generation) -> list[x509.UnrecognizedExtension]:
    spls = {1: tcb.bootloader, 2: tcb.tee, 3: tcb.snp, 8: tcb.microcode}
    reserved: tuple[int, ...] = (4, 5, 6, 7)
    if generation.has_fmc:
        spls[9] = tcb.fmc or 0
        reserved = (5, 6, 7)
    for number in reserved:
        spls[number] = 0
    return [_amd_ext(f"3.{n}", _der.encode_integer(value)) for n, value in sorted(spls.items())]


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """What a guest's SNP_GET_REPORT and its launch put in a report (besides the platform's)."""

    report_data: bytes
    measurement: bytes
    host_data: bytes = bytes(32)
    policy: int = 0x30000
    vmpl: int = 0
    signing_key: SigningKey = SigningKey.VCEK
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    mask_chip_id: bool = False


@dataclass
class SnpPlatform:
    """A simulated SNP platform (one chip) with its own AMD-like roots."""

    name: str
    generation: Generation
    ark: bytes = field(repr=False)
    ask: bytes = field(repr=False)
    asvk: bytes = field(repr=False)
    vcek: bytes = field(repr=False)
    vlek: bytes | None = field(repr=False)
    keys: dict[SigningKey, ec.EllipticCurvePrivateKey] = field(repr=False)
    chip_id: bytes = field(repr=False)
    tcb: TcbVersion
    firmware: FirmwareVersion = DEFAULT_FIRMWARE
    platform_info: int = int(PlatformInfo.SMT_EN | PlatformInfo.TSME_EN)
    report_version: int = 3
    #: The ARK's private key: the simulated KDS signs this platform's CRL with it.
    ark_key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    #: COMMITTED_TCB when a provisional firmware update runs (CURRENT = ``tcb``); None:
    #: the running firmware is the committed one.
    committed_tcb: TcbVersion | None = None

    @classmethod
    def create(
        cls,
        *,
        name: str = "sim-snp",
        generation: Generation = Generation.MILAN,
        tcb: TcbVersion | None = None,
        vlek: bool = False,
        report_version: int = 3,
        rsa_bits: int = 4096,
    ) -> Self:
        """Mint roots (ARK, ASK, ASVK), a chip id, a VCEK for ``tcb`` and optionally a VLEK."""
        if not name or "/" in name or name.startswith("."):
            raise ParseError(f"invalid platform name {name!r}")
        if rsa_bits not in (2048, 4096):
            raise ParseError("the roots are RSA-4096 like AMD's (2048 for quick tests)")
        if report_version not in (3, 5):
            raise ParseError("the simulator signs report versions 3 and 5")
        tcb = tcb or DEFAULT_TCB[generation]
        if (tcb.fmc is not None) != generation.has_fmc:
            raise ParseError("an FMC SPL is given exactly for Turin")
        product = generation.product
        ark_key, ask_key, asvk_key = (
            rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits) for _ in range(3)
        )
        ark = _ca_cert(f"ARK-{product}", f"ARK-{product}", ark_key, ark_key)
        ask = _ca_cert(f"SEV-{product}", f"ARK-{product}", ask_key, ark_key)
        asvk = _ca_cert(f"SEV-VLEK-{product}", f"ARK-{product}", asvk_key, ark_key)
        hw_id = os.urandom(8 if generation.has_fmc else 64)
        chip_id = hw_id + bytes(64 - len(hw_id))
        common = [
            _amd_ext("1", _der.encode_integer(1 if generation.has_fmc else 0)),
            _amd_ext("2", _ia5(PRODUCT_NAME[generation])),
            *_spl_extensions(tcb, generation),
        ]
        keys = {SigningKey.VCEK: ec.generate_private_key(ec.SECP384R1())}
        vcek = _leaf_cert(
            "SEV-VCEK",
            f"SEV-{product}",
            keys[SigningKey.VCEK].public_key(),
            ask_key,
            [*common, _amd_ext("4", hw_id)],
        )
        vlek_der = None
        if vlek:
            keys[SigningKey.VLEK] = ec.generate_private_key(ec.SECP384R1())
            vlek_der = _leaf_cert(
                "SEV-VLEK",
                f"SEV-VLEK-{product}",
                keys[SigningKey.VLEK].public_key(),
                asvk_key,
                [*common, _amd_ext("5", _ia5("CN=attestd-sim"))],
            )
        return cls(
            name=name,
            generation=generation,
            ark=ark,
            ask=ask,
            asvk=asvk,
            vcek=vcek,
            vlek=vlek_der,
            keys=keys,
            chip_id=chip_id,
            tcb=tcb,
            report_version=report_version,
            ark_key=ark_key,
        )

    # ------------------------------------------------------------------ exports

    def crl(
        self,
        *,
        revoke: tuple[str, ...] = (),
        this_update: datetime.datetime | None = None,
        validity: datetime.timedelta = CRL_VALIDITY,
    ) -> bytes:
        """The ARK's CRL as AMD KDS serves it (DER, RSA-PSS SHA-384), revoking the named
        intermediates (``"ask"``, ``"asvk"``)."""
        if self.ark_key is None:
            raise ParseError("this platform was saved without its ARK key: cannot sign a CRL")
        issued = this_update or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        ark = x509.load_der_x509_certificate(self.ark)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ark.subject)
            .last_update(issued)
            .next_update(issued + validity)
        )
        for name in revoke:
            der = {"ask": self.ask, "asvk": self.asvk}.get(name)
            if der is None:
                raise ParseError(f"cannot revoke {name!r}: only ask and asvk")
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(x509.load_der_x509_certificate(der).serial_number)
                .revocation_date(issued)
                .build()
            )
        crl = builder.sign(self.ark_key, hashes.SHA384(), rsa_padding=pss_sha384())
        return crl.public_bytes(serialization.Encoding.DER)

    def anchor(self) -> SnpAnchor:
        """This platform's roots as an SNP trust anchor named after the platform."""
        return SnpAnchor(
            self.name,
            SnpCertificate.from_der(self.ark),
            SnpCertificate.from_der(self.ask),
            SnpCertificate.from_der(self.asvk),
        )

    def write_anchor(self, directory: Path) -> Path:
        """Write ``<directory>/<name>/{ark,ask,asvk}.pem`` (the trust-anchor directory layout)."""
        target = directory / self.name
        target.mkdir(parents=True, exist_ok=True)
        for filename, der in zip(
            ("ark.pem", "ask.pem", "asvk.pem"), (self.ark, self.ask, self.asvk), strict=True
        ):
            (target / filename).write_bytes(_pem(der))
        return target

    def leaf(self, key: SigningKey = SigningKey.VCEK) -> bytes:
        """The VCEK (or VLEK) as DER."""
        if key is SigningKey.VCEK:
            return self.vcek
        if key is SigningKey.VLEK and self.vlek is not None:
            return self.vlek
        raise SevFirmwareError(FirmwareStatus.INVALID_CONFIG, f"this platform has no {key.label}")

    def cert_table(self, key: SigningKey = SigningKey.VCEK) -> bytes:
        """The extended-report certificate table a guest gets: ARK, ASK, then VCEK or VLEK."""
        leaf_guid = GUID_VCEK if key is SigningKey.VCEK else GUID_VLEK
        signer = self.ask if key is SigningKey.VCEK else self.asvk
        return CertTable({GUID_ARK: self.ark, GUID_ASK: signer, leaf_guid: self.leaf(key)}).pack()

    # ------------------------------------------------------------------ guests

    @staticmethod
    def measure(
        firmware: bytes,
        *,
        kernel: bytes | None = None,
        initrd: bytes | None = None,
        cmdline: str | None = None,
        vcpus: int = 1,
        vcpu_type: str = "EPYC-v4",
        guest_features: int = 0x1,
    ) -> bytes:
        """The SNP launch digest of a QEMU + OVMF guest started with these files."""
        hashes = None
        if kernel is not None:
            hashes = KernelHashes.from_content(kernel, initrd, cmdline)
        elif initrd is not None or cmdline is not None:
            raise ParseError("an initrd or a command line needs a kernel")
        return launch_digest(
            "snp",
            firmware,
            hashes=hashes,
            vcpus=vcpus,
            vcpu_type=vcpu_type,
            guest_features=guest_features,
        )

    def _check(self, request: ReportRequest) -> None:
        fail = SevFirmwareError
        sizes = (
            ("REPORT_DATA", request.report_data, 64),
            ("MEASUREMENT", request.measurement, 48),
            ("HOST_DATA", request.host_data, 32),
            ("FAMILY_ID", request.family_id, 16),
            ("IMAGE_ID", request.image_id, 16),
        )
        for what, value, size in sizes:
            if len(value) != size:
                raise fail(FirmwareStatus.INVALID_LENGTH, f"{what} must be {size} bytes")
        try:
            policy = SnpPolicy.from_u64(request.policy)
        except ParseError as exc:
            raise fail(FirmwareStatus.INVALID_PARAM, exc.message) from None
        if not policy.flags & PolicyFlags.RESERVED_1 or policy.unknown_bits:
            raise fail(FirmwareStatus.INVALID_PARAM, "policy bit 17 must be 1 and bits 26-63 0")
        if (policy.abi_major, policy.abi_minor) > (self.firmware.major, self.firmware.minor):
            raise fail(FirmwareStatus.POLICY_FAILURE, "the policy needs a newer firmware ABI")
        if self.platform_info & PlatformInfo.SMT_EN and not policy.flags & PolicyFlags.SMT:
            raise fail(FirmwareStatus.POLICY_FAILURE, "SMT is enabled but the policy forbids it")
        if not 0 <= request.vmpl <= 3:
            raise fail(FirmwareStatus.INVALID_PARAM, "VMPL must be 0..3")
        if not 0 <= request.guest_svn < 1 << 32:
            raise fail(FirmwareStatus.INVALID_PARAM, "GUEST_SVN is a 32-bit value")
        if request.signing_key not in self.keys:
            raise fail(FirmwareStatus.INVALID_CONFIG, f"no {request.signing_key.label} loaded")

    def report(self, request: ReportRequest) -> bytes:
        """SNP_GET_REPORT: the signed 0x4A0-byte attestation report."""
        self._check(request)
        family, model, stepping = CPUID[self.generation]
        mask = request.mask_chip_id
        tcb, fw = self.tcb.raw, self.firmware
        unsigned = AttestationReport(
            version=self.report_version,
            guest_svn=request.guest_svn,
            policy=request.policy,
            family_id=request.family_id,
            image_id=request.image_id,
            vmpl=request.vmpl,
            signature_algo=SIGNATURE_ALGO_ECDSA_P384_SHA384,
            current_tcb=tcb,
            platform_info=self.platform_info,
            key_info=KeyInfo(False, mask, request.signing_key),
            report_data=request.report_data,
            measurement=request.measurement,
            host_data=request.host_data,
            id_key_digest=bytes(48),
            author_key_digest=bytes(48),
            report_id=hashlib.sha256(request.measurement + self.chip_id).digest(),
            report_id_ma=b"\xff" * 32,
            reported_tcb=tcb,
            cpuid_fam_id=family,
            cpuid_mod_id=model,
            cpuid_step=stepping,
            chip_id=bytes(64) if mask else self.chip_id,
            committed_tcb=tcb if self.committed_tcb is None else self.committed_tcb.raw,
            current_build=fw.build,
            current_minor=fw.minor,
            current_major=fw.major,
            committed_build=fw.build,
            committed_minor=fw.minor,
            committed_major=fw.major,
            launch_tcb=tcb,
            launch_mit_vector=0,
            current_mit_vector=0,
            signature_r=bytes(COMPONENT_SIZE),
            signature_s=bytes(COMPONENT_SIZE),
        )
        body = unsigned.pack()[:0x2A0]
        der = self.keys[request.signing_key].sign(body, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(COMPONENT_SIZE, "little") + s.to_bytes(COMPONENT_SIZE, "little")
        return body + signature + bytes(0x4A0 - 0x2A0 - len(signature))

    # -------------------------------------------------------------- persistence

    def save(self, directory: Path) -> None:
        """Persist to ``directory`` (created 0700): ``snp.json`` and the VCEK/VLEK keys (0600)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for key_kind, key in self.keys.items():
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(directory / _KEY_FILES[key_kind], pem)
        if self.ark_key is not None:
            pem = self.ark_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(directory / ARK_KEY_FILE, pem)
        state = {
            "version": STATE_VERSION,
            "name": self.name,
            "generation": self.generation.value,
            "tcb": self.tcb.raw,
            "committed_tcb": None if self.committed_tcb is None else self.committed_tcb.raw,
            "firmware": list(self.firmware.as_tuple()),
            "platform_info": self.platform_info,
            "report_version": self.report_version,
            "chip_id": self.chip_id.hex(),
            "certs": {
                "ark": self.ark.hex(),
                "ask": self.ask.hex(),
                "asvk": self.asvk.hex(),
                "vcek": self.vcek.hex(),
                "vlek": None if self.vlek is None else self.vlek.hex(),
            },
        }
        write_private(directory / STATE_FILE, json.dumps(state, indent=1).encode())

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Load a platform saved by :meth:`save`; ``FileNotFoundError`` if there is none."""
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION:
            raise ParseError(f"unsupported SNP simulator state version in {directory}")
        keys: dict[SigningKey, ec.EllipticCurvePrivateKey] = {}
        certs = state["certs"]
        for kind, filename in _KEY_FILES.items():
            if kind is SigningKey.VLEK and certs["vlek"] is None:
                continue
            key = serialization.load_pem_private_key(
                (directory / filename).read_bytes(), password=None
            )
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ParseError(f"unexpected key type in {filename}")
            keys[kind] = key
        ark_key = None
        if (directory / ARK_KEY_FILE).exists():
            loaded = serialization.load_pem_private_key(
                (directory / ARK_KEY_FILE).read_bytes(), password=None
            )
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ParseError(f"unexpected key type in {ARK_KEY_FILE}")
            ark_key = loaded
        generation = Generation(state["generation"])
        major, minor, build = state["firmware"]
        return cls(
            name=state["name"],
            generation=generation,
            ark=bytes.fromhex(certs["ark"]),
            ask=bytes.fromhex(certs["ask"]),
            asvk=bytes.fromhex(certs["asvk"]),
            vcek=bytes.fromhex(certs["vcek"]),
            vlek=None if certs["vlek"] is None else bytes.fromhex(certs["vlek"]),
            keys=keys,
            chip_id=bytes.fromhex(state["chip_id"]),
            tcb=TcbVersion.decode(int(state["tcb"]), turin=generation.has_fmc),
            firmware=FirmwareVersion(int(major), int(minor), int(build)),
            platform_info=int(state["platform_info"]),
            report_version=int(state["report_version"]),
            ark_key=ark_key,
            committed_tcb=None
            if state.get("committed_tcb") is None
            else TcbVersion.decode(int(state["committed_tcb"]), turin=generation.has_fmc),
        )


def _pem(der: bytes) -> bytes:
    """PEM for a root certificate (positive serial: ``cryptography`` re-encodes it as is)."""
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
