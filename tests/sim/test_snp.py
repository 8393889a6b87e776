"""The simulated SEV-SNP platform: faithful enough for an independent verifier.

The independent check below uses only ``cryptography`` and the offsets of the SEV-SNP
ABI report table (snp.md §1), as the real vectors were re-checked (PROVENANCE.md);
it shares no code with ``attestd.sev.snp``. Launch digests are compared with
``sev-snp-measure --mode snp`` (PyPI 0.0.13) on the real OVMF.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from attestd.errors import ParseError
from attestd.sev.snp.report import Generation, SigningKey
from attestd.sim.errors import FirmwareStatus, SevFirmwareError
from attestd.sim.snp import ReportRequest, SnpPlatform
from tests.conftest import TESTDATA
from tests.sev.snp.vectors import sim_platform

SEV_SNP_MEASURE = Path(sys.executable).parent / "sev-snp-measure"
OVMF = TESTDATA / "ovmf" / "OVMF.amdsev.fd"
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number:UserWarning")
AMD = "1.3.6.1.4.1.3704.1."


def load(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def pss_verify(child: x509.Certificate, issuer: x509.Certificate) -> None:
    key = issuer.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
    key.verify(
        child.signature,
        child.tbs_certificate_bytes,
        padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
        hashes.SHA384(),
    )


def ext_int(cert: x509.Certificate, suffix: str) -> int:
    value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(AMD + suffix)).value
    raw = value.value  # type: ignore[attr-defined]
    assert raw[0] == 0x02 and raw[1] == len(raw) - 2  # DER INTEGER
    return int.from_bytes(raw[2:], "big")


def independent_verify(report: bytes, ark: bytes, ask: bytes, leaf: bytes, turin: bool) -> None:
    """Signature, chain, TCB and chip id, from the spec tables with plain ``cryptography``."""
    ark_c, ask_c, leaf_c = load(ark), load(ask), load(leaf)
    pss_verify(ark_c, ark_c)
    pss_verify(ask_c, ark_c)
    pss_verify(leaf_c, ask_c)
    assert leaf_c.serial_number == 0
    assert leaf_c.issuer == ask_c.subject and ask_c.issuer == ark_c.subject
    assert len(report) == 0x4A0 and int.from_bytes(report[0x34:0x38], "little") == 1
    r = int.from_bytes(report[0x2A0 : 0x2A0 + 72], "little")
    s = int.from_bytes(report[0x2A0 + 72 : 0x2A0 + 144], "little")
    leaf_key = leaf_c.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    leaf_key.verify(encode_dss_signature(r, s), report[:0x2A0], ec.ECDSA(hashes.SHA384()))
    tcb = report[0x180:0x188]
    if turin:
        wanted = {"3.9": 0, "3.1": 1, "3.2": 2, "3.3": 3, "3.8": 7}
    else:
        wanted = {"3.1": 0, "3.2": 1, "3.3": 6, "3.8": 7}
    for suffix, position in wanted.items():
        assert ext_int(leaf_c, suffix) == tcb[position]
    key_info = int.from_bytes(report[0x48:0x4C], "little")
    if (key_info >> 2) & 7 == 0:
        hw_id = leaf_c.extensions.get_extension_for_oid(x509.ObjectIdentifier(AMD + "4")).value
        raw = hw_id.value  # type: ignore[attr-defined]
        assert report[0x1A0 : 0x1A0 + len(raw)] == raw and len(raw) == (8 if turin else 64)


@pytest.mark.parametrize(
    ("generation", "version"),
    [(Generation.MILAN, 3), (Generation.GENOA, 3), (Generation.TURIN, 5)],
)
def test_reports_verify_independently(generation: Generation, version: int) -> None:
    platform = sim_platform(generation, version)
    report = platform.report(ReportRequest(b"\x5a" * 64, b"\x01" * 48, host_data=b"\x02" * 32))
    independent_verify(report, platform.ark, platform.ask, platform.vcek, generation.has_fmc)
    assert report[0x000] == version and report[0x050:0x090] == b"\x5a" * 64
    family = {Generation.TURIN: 0x1A}.get(generation, 0x19)
    assert report[0x188] == family
    assert platform.vlek is not None
    vlek_report = platform.report(ReportRequest(bytes(64), bytes(48), signing_key=SigningKey.VLEK))
    independent_verify(vlek_report, platform.ark, platform.asvk, platform.vlek, generation.has_fmc)
    assert report[0x048] == 0 and vlek_report[0x048] == 1 << 2


def test_certificates_look_like_amds() -> None:
    platform = sim_platform()
    ark, ask, vcek = load(platform.ark), load(platform.ask), load(platform.vcek)
    cn = lambda c: c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value  # noqa: E731
    assert (cn(ark), cn(ask), cn(vcek)) == ("ARK-Milan", "SEV-Milan", "SEV-VCEK")
    assert cn(load(platform.asvk)) == "SEV-VLEK-Milan"
    assert ext_int(vcek, "1") == 0
    name = vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier(AMD + "2")).value
    assert name.value == b"\x16\x08Milan-B0"  # type: ignore[attr-defined]
    assert isinstance(vcek.public_key(), ec.EllipticCurvePublicKey)
    assert vcek.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("vcpus", "kernel"),
    [(1, False), (2, False), (4, True), (8, True)],
)
def test_measurement_equals_sev_snp_measure(tmp_path: Path, vcpus: int, kernel: bool) -> None:
    argv = [
        str(SEV_SNP_MEASURE),
        "--mode",
        "snp",
        "--ovmf",
        str(OVMF),
        "--vcpus",
        str(vcpus),
        "--vcpu-type",
        "EPYC-v4",
        "--output-format",
        "hex",
    ]
    files: dict[str, bytes | str | None] = {"kernel": None, "initrd": None, "cmdline": None}
    if kernel:
        (tmp_path / "vmlinuz").write_bytes(b"kernel image " * 1000)
        (tmp_path / "initrd").write_bytes(b"initrd image " * 500)
        argv += ["--kernel", str(tmp_path / "vmlinuz"), "--initrd", str(tmp_path / "initrd")]
        argv += ["--append", "console=ttyS0 root=/dev/vda1"]
        files = {
            "kernel": b"kernel image " * 1000,
            "initrd": b"initrd image " * 500,
            "cmdline": "console=ttyS0 root=/dev/vda1",
        }
    expected = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    measured = SnpPlatform.measure(
        OVMF.read_bytes(),
        kernel=files["kernel"],  # type: ignore[arg-type]
        initrd=files["initrd"],  # type: ignore[arg-type]
        cmdline=files["cmdline"],  # type: ignore[arg-type]
        vcpus=vcpus,
        vcpu_type="EPYC-v4",
    )
    assert measured.hex() == expected
    report = sim_platform().report(ReportRequest(bytes(64), measured))
    assert report[0x090:0x0C0].hex() == expected


def test_firmware_checks_like_the_psp() -> None:
    platform = sim_platform()
    base = ReportRequest(bytes(64), bytes(48))
    cases = [
        (ReportRequest(bytes(63), bytes(48)), FirmwareStatus.INVALID_LENGTH),
        (ReportRequest(bytes(64), bytes(32)), FirmwareStatus.INVALID_LENGTH),
        (ReportRequest(bytes(64), bytes(48), host_data=bytes(31)), FirmwareStatus.INVALID_LENGTH),
        (ReportRequest(bytes(64), bytes(48), policy=0x10000), FirmwareStatus.INVALID_PARAM),
        (ReportRequest(bytes(64), bytes(48), policy=0x20000), FirmwareStatus.POLICY_FAILURE),
        (ReportRequest(bytes(64), bytes(48), policy=0x33700), FirmwareStatus.POLICY_FAILURE),
        (
            ReportRequest(bytes(64), bytes(48), policy=1 << 40 | 0x30000),
            FirmwareStatus.INVALID_PARAM,
        ),
        (ReportRequest(bytes(64), bytes(48), vmpl=4), FirmwareStatus.INVALID_PARAM),
    ]
    for request, status in cases:
        with pytest.raises(SevFirmwareError) as exc:
            platform.report(request)
        assert exc.value.status is status, request
    assert len(platform.report(base)) == 0x4A0
    with pytest.raises(ParseError):
        SnpPlatform.measure(OVMF.read_bytes(), initrd=b"x")


def test_save_and_load_keep_keys_private(tmp_path: Path) -> None:
    platform = sim_platform(Generation.TURIN, 5)
    platform.save(tmp_path / "sim")
    for name in ("snp.json", "snp-vcek.key", "snp-vlek.key"):
        assert stat.S_IMODE((tmp_path / "sim" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "sim").stat().st_mode) == 0o700
    loaded = SnpPlatform.load(tmp_path / "sim")
    assert loaded.vcek == platform.vcek and loaded.tcb == platform.tcb
    assert loaded.generation is Generation.TURIN and loaded.report_version == 5
    report = loaded.report(ReportRequest(bytes(64), bytes(48)))
    independent_verify(report, loaded.ark, loaded.ask, loaded.vcek, turin=True)
    anchor_dir = loaded.write_anchor(tmp_path / "anchors")
    assert sorted(p.name for p in anchor_dir.iterdir()) == ["ark.pem", "ask.pem", "asvk.pem"]
