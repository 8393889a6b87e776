"""``attestd digest``: output, flags and error paths."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from attestd import cli
from attestd.sev.measure import KernelHashes, VmsaFlavour, launch_digest

BIN = Path(sys.executable).parent
DEBIAN_OVMF = "/usr/share/ovmf/OVMF.fd"


@pytest.fixture
def amdsev(testdata: Path) -> Path:
    return testdata / "ovmf" / "OVMF.amdsev.fd"


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"fake kernel" * 100)
    return path


@pytest.fixture
def initrd(tmp_path: Path) -> Path:
    path = tmp_path / "initrd"
    path.write_bytes(b"fake initrd" * 50)
    return path


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["digest", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("flavour", list(VmsaFlavour))
def test_seves_direct_boot(
    capsys: pytest.CaptureFixture[str],
    amdsev: Path,
    kernel: Path,
    initrd: Path,
    flavour: VmsaFlavour,
) -> None:
    status, out, _ = _main(
        capsys,
        *("--mode", "seves", "--firmware", str(amdsev), "--kernel", str(kernel)),
        *("--initrd", str(initrd), "--cmdline", "console=ttyS0", "--vcpus", "3"),
        *("--vcpu-type", "EPYC-Milan", "--vmsa-flavour", flavour.value),
    )
    assert status == 0
    expected = launch_digest(
        "seves",
        amdsev.read_bytes(),
        hashes=KernelHashes.from_content(kernel.read_bytes(), initrd.read_bytes(), "console=ttyS0"),
        vcpus=3,
        vcpu_type="EPYC-Milan",
        flavour=flavour,
    )
    assert out.splitlines()[-1] == expected.hex()


def test_sev_firmware_only_is_sha256_of_the_image(
    capsys: pytest.CaptureFixture[str], amdsev: Path
) -> None:
    status, out, _ = _main(capsys, "--mode", "sev", "--firmware", str(amdsev))
    assert status == 0
    assert out.splitlines()[-1] == hashlib.sha256(amdsev.read_bytes()).hexdigest()


def test_kernel_on_debian_ovmf_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], kernel: Path
) -> None:
    status, out, err = _main(
        capsys, "--mode", "sev", "--firmware", DEBIAN_OVMF, "--kernel", str(kernel)
    )
    assert status == 1
    assert out == ""
    assert "[unsupported]" in err and "measured direct boot" in err
    assert "Traceback" not in err


def test_usage_errors(capsys: pytest.CaptureFixture[str], amdsev: Path, tmp_path: Path) -> None:
    status, _, err = _main(capsys, "--mode", "sev", "--firmware", str(amdsev), "--cmdline", "x")
    assert status == 2 and "require --kernel" in err
    missing = tmp_path / "nope.fd"
    status, _, err = _main(capsys, "--mode", "sev", "--firmware", str(missing))
    assert status == 2 and "cannot read firmware" in err
    status, _, err = _main(
        capsys, "--mode", "seves", "--firmware", str(amdsev), "--vcpu-type", "qemu64"
    )
    assert status == 1 and "unknown vCPU type" in err
    status, _, err = _main(capsys, "--mode", "seves", "--firmware", str(amdsev), "--vcpus", "0")
    assert status == 1 and "vcpus" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["digest", "--mode", "tdx", "--firmware", str(amdsev)])
    assert exc.value.code == 2


def test_snp(
    capsys: pytest.CaptureFixture[str], amdsev: Path, kernel: Path, tmp_path: Path
) -> None:
    status, out, _ = _main(
        capsys,
        *("--mode", "snp", "--firmware", str(amdsev), "--kernel", str(kernel)),
        *("--vcpus", "2", "--guest-features", "0x21"),
    )
    assert status == 0
    expected = launch_digest(
        "snp",
        amdsev.read_bytes(),
        hashes=KernelHashes.from_content(kernel.read_bytes(), None, None),
        vcpus=2,
        guest_features=0x21,
    )
    assert out.splitlines()[-1] == expected.hex()
    no_metadata = tmp_path / "plain.fd"
    no_metadata.write_bytes(b"\xff" * 0x10000)
    status, _, err = _main(capsys, "--mode", "snp", "--firmware", str(no_metadata))
    assert status == 1 and "SEV metadata" in err


def test_console_script_matches_sev_snp_measure(amdsev: Path, kernel: Path) -> None:
    inputs = ["--kernel", str(kernel), "--vcpus", "2"]
    tail = ["--vcpu-type", "EPYC-v4", "--output-format", "hex"]
    ours = subprocess.run(
        [str(BIN / "attestd"), "digest", "--mode", "seves", "--firmware", str(amdsev), *inputs],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = subprocess.run(
        [str(BIN / "sev-snp-measure"), "--mode", "seves", "--ovmf", str(amdsev), *inputs, *tail],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ours.stdout.splitlines()[-1] == theirs.stdout.strip()
