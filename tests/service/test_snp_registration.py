"""The SEV-SNP registration variant: its rules, its public view, and the digests it accepts.

The service's SNP launch digests (from the registered firmware, kernel hashes, vCPU
count and type, guest features) are checked against ``sev-snp-measure --mode snp`` on
the real OVMF AmdSev build.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from attestd.errors import InvalidRegistration
from attestd.service.attestations import snp_inputs
from attestd.service.factory import Services
from attestd.service.registration import LuksPassphrase, Raw, Volume
from attestd.service.snp_registration import SnpRegistration
from attestd.sev.measure.digest import launch_digests

SEV_SNP_MEASURE = Path(sys.executable).parent / "sev-snp-measure"
DIGEST = "ab" * 48


def codes(reg: SnpRegistration) -> set[str]:
    return {p.code for p in reg.check()}


def test_a_minimal_registration_is_valid() -> None:
    assert SnpRegistration(policy=0x30000, launch_digests=(DIGEST,)).check() == []


@pytest.mark.parametrize(
    ("policy", "code"),
    [(0x10000, "policy_bit17_clear"), (0x30000 | 1 << 40, "reserved_policy_bits")],
)
def test_policy_bit_17_and_reserved_bits(policy: int, code: str) -> None:
    assert code in codes(SnpRegistration(policy=policy, launch_digests=(DIGEST,)))


def test_every_problem_is_listed() -> None:
    reg = SnpRegistration(
        policy=0x10000,
        initrd_hash="cd" * 32,
        signing_keys=("vcek", "ask"),
        min_tcb={"bootloader": 300, "tee": 0, "snp": 0, "microcode": 0},
        secrets=(
            LuksPassphrase("grub"),
            Raw(uuid.uuid4(), b"x"),
            Volume("data", "/dev/vdb", generate=True, mount_point="/etc"),
        ),
    )
    assert codes(reg) == {
        "policy_bit17_clear",
        "no_launch_inputs",
        "needs_kernel_hash",
        "signing_keys_invalid",
        "tcb_invalid",
        "secret_type_not_for_snp",
        "mount_point_reserved",
    }
    refused = [p for p in reg.check() if p.code == "secret_type_not_for_snp"]
    assert [p.field for p in refused] == [("secrets", 0, "type"), ("secrets", 1, "type")]
    assert "EFI secret area" in refused[0].message


def test_public_round_trips_without_secrets() -> None:
    reg = SnpRegistration(
        policy=0x30000,
        launch_digests=(DIGEST,),
        min_tcb={"bootloader": 1, "tee": 0, "snp": 8, "microcode": 100},
        host_data="11" * 32,
        chip_ids=("22" * 64,),
        min_firmware={"major": 1, "minor": 55, "build": 0},
        signing_keys=("vcek",),
        secrets=(Volume("data", "/dev/vdb", passphrase="very secret"),),
    )
    doc = reg.public()
    assert "very secret" not in str(doc)
    assert doc["secrets"] == [
        {"type": "volume", "name": "data", "device": "/dev/vdb", "generate": False}
    ]
    again = SnpRegistration.from_public(doc)
    assert again.public() == {**doc, "secrets": []}  # secrets are not in the public view
    policy = again.reference_policy([bytes.fromhex(DIGEST)])
    assert policy.max_vmpl == 0 and policy.host_data == bytes.fromhex("11" * 32)


def test_the_service_refuses_an_invalid_registration(services: Services) -> None:
    owner = services.principals.authenticate_owner(services.principals.create_owner("alice"))
    with pytest.raises(InvalidRegistration) as caught:
        services.vms.register(
            owner,
            "6f1c2b7e-3c1a-4d8e-9a51-0c2b9d1f7e11",
            SnpRegistration(policy=0x30000, secrets=(LuksPassphrase("grub"),)),
        )
    assert set(caught.value.reasons) == {"no_launch_inputs", "secret_type_not_for_snp"}


@pytest.mark.parametrize(
    ("vcpus", "vcpu_type", "kernel", "features"),
    [(1, "EPYC-v4", False, 0x1), (4, "EPYC-Milan", False, 0x1), (2, "EPYC-Genoa", True, 0x21)],
)
def test_service_digests_equal_sev_snp_measure(
    ovmf_path: Path, tmp_path: Path, vcpus: int, vcpu_type: str, kernel: bool, features: int
) -> None:
    extra: list[str] = []
    hashes: dict[str, str] = {}
    if kernel:
        files = {"kernel": b"MZ fake kernel\0" * 999, "initrd": b"070701 fake initrd" * 333}
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            extra += [f"--{name}", str(tmp_path / name)]
            hashes[f"{name}_hash"] = hashlib.sha256(data).hexdigest()
        cmdline = "console=ttyS0 root=/dev/vda1"
        extra += ["--append", cmdline]
        hashes["cmdline_hash"] = hashlib.sha256(cmdline.encode() + b"\0").hexdigest()
    reg = SnpRegistration(
        policy=0x30000,
        firmware_hashes=("00" * 32,),
        cpu_count=vcpus,
        vcpu_types=(vcpu_type,),
        guest_features=features,
        **hashes,  # type: ignore[arg-type]
    )
    (inputs,) = snp_inputs(reg)
    ours = launch_digests(ovmf_path.read_bytes(), [inputs])[inputs]
    theirs = subprocess.run(
        [
            str(SEV_SNP_MEASURE),
            "--mode",
            "snp",
            "--ovmf",
            str(ovmf_path),
            "--vcpus",
            str(vcpus),
            "--vcpu-type",
            vcpu_type,
            "--guest-features",
            hex(features),
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert ours.hex() == theirs


@pytest.fixture(scope="module")
def ovmf_path(testdata: Path) -> Path:
    return testdata / "ovmf" / "OVMF.amdsev.fd"
