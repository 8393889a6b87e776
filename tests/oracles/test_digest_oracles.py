"""Launch digests against both independent oracles (see shared/reference/oracles.md).

* sev-snp-measure (PyPI, in .venv): builds the current (host >= 6.10) VMSA flavour.
* libvirt's virt-qemu-sev-validate (Debian bookworm): validates a launch measurement we
  compute from attestd's digest with a known TIK. It builds the legacy VMSA flavour
  itself from --cpu-family/model/stepping, or takes VMSA pages as files.
Both tools really run here, on real firmware and small fake kernels/initrds.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from attestd.errors import Unsupported
from attestd.sev.measure import KernelHashes, VmsaFlavour, launch_digest
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.vmsa import VCPU_TYPES, vcpu_signature, vmsa_pages
from attestd.sev.session import FirmwareVersion, compute_measure
from tests.conftest import TESTDATA

SEV_SNP_MEASURE = Path(sys.executable).parent / "sev-snp-measure"
VALIDATE = ("/usr/bin/python3", "/usr/bin/virt-qemu-sev-validate")

FIRMWARE = {
    "amdsev": TESTDATA / "ovmf" / "OVMF.amdsev.fd",
    "debian-ovmf": Path("/usr/share/ovmf/OVMF.fd"),
    "debian-code-4m": Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
}
CMDLINE = "console=ttyS0 root=/dev/vda1"

# Firmware-independent launch inputs for the validator.
API_MAJOR, API_MINOR, BUILD_ID = 1, 55, 21
POLICY = {"sev": 0x01, "seves": 0x05}  # NODBG (+ ES)


@dataclass(frozen=True)
class Boot:
    """Which direct-boot inputs are given: none, kernel only, or kernel+initrd+cmdline."""

    name: str
    kernel: bool = False
    initrd: bool = False
    cmdline: bool = False


NO_KERNEL = Boot("firmware-only")
KERNEL = Boot("kernel")
FULL = Boot("kernel+initrd+cmdline", kernel=True, initrd=True, cmdline=True)


@dataclass(frozen=True)
class Case:
    mode: str
    firmware: str
    boot: Boot
    vcpus: int = 1
    vcpu_type: str = "EPYC-v4"
    guest_features: int = 0x1  # snp only

    def __str__(self) -> str:
        cpu = f"-{self.vcpus}x{self.vcpu_type}" if self.mode != "sev" else ""
        features = f"-features{self.guest_features:#x}" if self.mode == "snp" else ""
        return f"{self.mode}-{self.firmware}-{self.boot.name}{cpu}{features}"


CASES = [
    Case("sev", "amdsev", NO_KERNEL),
    Case("sev", "amdsev", KERNEL),
    Case("sev", "amdsev", FULL),
    Case("sev", "debian-ovmf", NO_KERNEL),
    Case("sev", "debian-code-4m", NO_KERNEL),
    Case("seves", "amdsev", NO_KERNEL, 1, "EPYC-v4"),
    Case("seves", "amdsev", KERNEL, 2, "EPYC-Milan"),
    Case("seves", "amdsev", FULL, 4, "EPYC-v4"),
    Case("seves", "amdsev", FULL, 3, "EPYC-Rome"),
    Case("seves", "debian-ovmf", NO_KERNEL, 1, "EPYC-Milan"),
    Case("seves", "debian-ovmf", NO_KERNEL, 4, "EPYC-v4"),
    Case("seves", "debian-code-4m", NO_KERNEL, 2, "EPYC-Genoa"),
]
SEVES_CASES = [c for c in CASES if c.mode == "seves"]
# SEV-SNP: only sev-snp-measure implements it (virt-qemu-sev-validate is SEV/SEV-ES only).
SNP_CASES = [
    Case("snp", "amdsev", NO_KERNEL, 4, "EPYC-v4"),
    Case("snp", "amdsev", FULL, 2, "EPYC-Milan", 0x21),
    Case("snp", "amdsev", KERNEL, 1, "EPYC-Genoa"),
    Case("snp", "debian-ovmf", NO_KERNEL, 3, "EPYC-Milan"),
]


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="module")
def guest_files(tmp_path_factory: pytest.TempPathFactory) -> GuestFiles:
    directory = tmp_path_factory.mktemp("guest")
    kernel = directory / "vmlinuz"
    initrd = directory / "initrd.img"
    kernel.write_bytes(b"MZ fake kernel\0" + os.urandom(40_000))
    initrd.write_bytes(b"070701 fake initrd" + os.urandom(20_000))
    return GuestFiles(kernel, initrd)


def _boot_args(case: Case, files: GuestFiles, *, append: str) -> list[str]:
    args: list[str] = []
    if case.boot.kernel:
        args += ["--kernel", str(files.kernel)]
    if case.boot.initrd:
        args += ["--initrd", str(files.initrd)]
    if case.boot.cmdline:
        args += [append, CMDLINE]
    return args


def _hashes(case: Case, files: GuestFiles) -> KernelHashes | None:
    if not case.boot.kernel:
        return None
    return KernelHashes.from_content(
        files.kernel.read_bytes(),
        files.initrd.read_bytes() if case.boot.initrd else None,
        CMDLINE if case.boot.cmdline else None,
    )


def _attestd_digest(case: Case, files: GuestFiles, flavour: VmsaFlavour) -> bytes:
    return launch_digest(
        case.mode,
        FIRMWARE[case.firmware].read_bytes(),
        hashes=_hashes(case, files),
        vcpus=case.vcpus,
        vcpu_type=case.vcpu_type,
        flavour=flavour,
        guest_features=case.guest_features,
    )


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _sev_snp_measure(case: Case, files: GuestFiles, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(SEV_SNP_MEASURE), "--mode", case.mode, "--ovmf", str(FIRMWARE[case.firmware])]
    argv += _boot_args(case, files, append="--append")
    if case.mode != "sev":
        argv += ["--vcpus", str(case.vcpus), "--vcpu-type", case.vcpu_type, "--dump-vmsa"]
        argv += ["--guest-features", hex(case.guest_features)]
    return _run([*argv, "--output-format", "hex"], cwd)


@pytest.mark.parametrize("case", CASES + SNP_CASES, ids=str)
def test_sev_snp_measure_agrees(case: Case, guest_files: GuestFiles, tmp_path: Path) -> None:
    result = _sev_snp_measure(case, guest_files, tmp_path)
    assert result.returncode == 0, result.stderr
    expected = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{96}", expected), result.stdout
    assert _attestd_digest(case, guest_files, VmsaFlavour.CURRENT).hex() == expected
    if case.mode != "sev":
        ovmf = Ovmf.from_bytes(FIRMWARE[case.firmware].read_bytes())
        assert ovmf.sev_es_reset_eip is not None
        features = case.guest_features if case.mode == "snp" else 0
        pages = vmsa_pages(
            case.vcpus,
            ovmf.sev_es_reset_eip,
            vcpu_signature(case.vcpu_type),
            sev_features=features,
        )
        dumped = [(tmp_path / f"vmsa{i}.bin").read_bytes() for i in range(case.vcpus)]
        assert dumped == pages


def _validate(
    case: Case,
    files: GuestFiles,
    tmp_path: Path,
    launch_digest_: bytes,
    vmsa_args: list[str],
) -> tuple[int, str]:
    """Run virt-qemu-sev-validate on a measurement made from ``launch_digest_``.

    Returns its exit status and the launch digest it computed itself.
    """
    tek, tik, mnonce = os.urandom(16), os.urandom(16), os.urandom(16)
    tk = tmp_path / "tk.bin"
    tk.write_bytes(tek + tik)
    policy = POLICY[case.mode]
    version = FirmwareVersion(API_MAJOR, API_MINOR, BUILD_ID)
    measure = compute_measure(tik, version, policy, launch_digest_, mnonce)
    argv = [*VALIDATE, "--debug", "--firmware", str(FIRMWARE[case.firmware])]
    argv += _boot_args(case, files, append="--cmdline")
    argv += ["--tk", str(tk), "--measurement", base64.b64encode(measure + mnonce).decode()]
    argv += ["--api-major", str(API_MAJOR), "--api-minor", str(API_MINOR)]
    argv += ["--build-id", str(BUILD_ID), "--policy", str(policy), *vmsa_args]
    result = _run(argv, tmp_path)
    found = re.search(r"Measured-data\(sha256\): ([0-9a-f]{64})", result.stderr + result.stdout)
    assert found, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, found.group(1)


def _legacy_cpu_args(case: Case) -> list[str]:
    family, model, stepping = VCPU_TYPES[case.vcpu_type]
    return [
        "--num-cpus",
        str(case.vcpus),
        "--cpu-family",
        str(family),
        "--cpu-model",
        str(model),
        "--cpu-stepping",
        str(stepping),
    ]


def _page_args(case: Case, tmp_path: Path, flavour: VmsaFlavour) -> list[str]:
    ovmf = Ovmf.from_bytes(FIRMWARE[case.firmware].read_bytes())
    assert ovmf.sev_es_reset_eip is not None
    # Always two pages: the tool wants a cpu1 file even for one vCPU.
    bsp, ap = vmsa_pages(2, ovmf.sev_es_reset_eip, vcpu_signature(case.vcpu_type), flavour)
    (tmp_path / "vmsa0.bin").write_bytes(bsp)
    (tmp_path / "vmsa1.bin").write_bytes(ap)
    return [
        "--num-cpus",
        str(case.vcpus),
        "--vmsa-cpu0",
        str(tmp_path / "vmsa0.bin"),
        "--vmsa-cpu1",
        str(tmp_path / "vmsa1.bin"),
    ]


@pytest.mark.parametrize("case", [c for c in CASES if c.mode == "sev"], ids=str)
def test_virt_qemu_sev_validate_sev(case: Case, guest_files: GuestFiles, tmp_path: Path) -> None:
    ld = _attestd_digest(case, guest_files, VmsaFlavour.CURRENT)
    status, computed = _validate(case, guest_files, tmp_path, ld, [])
    assert computed == ld.hex()
    assert status == 0


@pytest.mark.parametrize("case", SEVES_CASES, ids=str)
def test_virt_qemu_sev_validate_seves_legacy(
    case: Case, guest_files: GuestFiles, tmp_path: Path
) -> None:
    """libvirt builds its own (pre-6.10) VMSAs: they equal attestd's LEGACY flavour."""
    ld = _attestd_digest(case, guest_files, VmsaFlavour.LEGACY)
    status, computed = _validate(case, guest_files, tmp_path, ld, _legacy_cpu_args(case))
    assert computed == ld.hex()
    assert status == 0


@pytest.mark.parametrize("case", SEVES_CASES, ids=str)
def test_virt_qemu_sev_validate_seves_current_pages(
    case: Case, guest_files: GuestFiles, tmp_path: Path
) -> None:
    """Given attestd's CURRENT VMSA pages, libvirt validates attestd's CURRENT digest."""
    ld = _attestd_digest(case, guest_files, VmsaFlavour.CURRENT)
    args = _page_args(case, tmp_path, VmsaFlavour.CURRENT)
    status, computed = _validate(case, guest_files, tmp_path, ld, args)
    assert computed == ld.hex()
    assert status == 0


def test_flavour_mismatch_fails_validation(guest_files: GuestFiles, tmp_path: Path) -> None:
    """A digest for the wrong VMSA flavour does not validate (the oracle can say no)."""
    case = Case("seves", "amdsev", FULL, 2, "EPYC-v4")
    current = _attestd_digest(case, guest_files, VmsaFlavour.CURRENT)
    status, computed = _validate(case, guest_files, tmp_path, current, _legacy_cpu_args(case))
    assert computed != current.hex()
    assert status == 1


@pytest.mark.parametrize("firmware", ["debian-ovmf", "debian-code-4m"])
@pytest.mark.parametrize("mode", ["sev", "seves", "snp"])
def test_kernel_hashes_unsupported_firmware(
    firmware: str, mode: str, guest_files: GuestFiles, tmp_path: Path
) -> None:
    """Debian's OVMF has its hashes area at address 0: attestd and sev-snp-measure refuse.

    (For snp, Debian's OVMF.fd lacks the SNP kernel hashes section and OVMF_CODE_4M.fd
    has no SEV metadata at all.)
    """
    case = Case(mode, firmware, FULL)
    message = "SEV metadata" if (mode, firmware) == ("snp", "debian-code-4m") else "direct boot"
    with pytest.raises(Unsupported, match=message):
        _attestd_digest(case, guest_files, VmsaFlavour.CURRENT)
    result = _sev_snp_measure(case, guest_files, tmp_path)
    assert result.returncode != 0
    assert "Kernel specified but OVMF" in result.stdout + result.stderr
