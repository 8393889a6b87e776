"""Launch digests against the known-answer vectors in testdata."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from attestd.errors import ParseError, Unsupported
from attestd.sev.measure import (
    KernelHashes,
    LaunchInputs,
    Ovmf,
    SevMode,
    VmsaFlavour,
    launch_digest,
    launch_digests,
)
from attestd.sev.measure.digest import MAX_VCPUS, parse_mode
from attestd.sev.session import FirmwareVersion, compute_measure

DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")


def _vectors(testdata: Path, group: str) -> list[dict[str, Any]]:
    data = json.loads((testdata / "sev" / "kat" / "vectors.json").read_text())
    return list(data[group])


def _read(testdata: Path, rel: str) -> bytes:
    return (testdata / "sev" / rel).read_bytes()


def _kat_hashes(vector: dict[str, Any]) -> KernelHashes:
    # "empty (/dev/null)" in the vector means an empty file; null means not given.
    initrd = None if vector["initrd"] is None else b""
    return KernelHashes.from_content(b"", initrd, vector["cmdline"])


def test_sev_launch_digest_vectors(testdata: Path) -> None:
    vectors = [v for v in _vectors(testdata, "sev_launch_digest") if "expected_ld_hex" in v]
    assert len(vectors) == 3
    for vector in vectors:
        firmware = _read(testdata, vector["firmware_file"])
        hashes = _kat_hashes(vector) if "kernel" in vector else None
        assert launch_digest("sev", firmware, hashes=hashes).hex() == vector["expected_ld_hex"]


@pytest.mark.parametrize("vcpus", [1, 4])
def test_seves_launch_digest_vector(testdata: Path, vcpus: int) -> None:
    """virtee/sev's SEV-ES vectors use the current (host >= 6.10) VMSA flavour."""
    (vector,) = [
        v for v in _vectors(testdata, "sev_launch_digest") if v["name"].startswith("SEV-ES")
    ]
    firmware = _read(testdata, vector["firmware_file"])
    hashes = KernelHashes.from_content(b"", b"", None)
    expected = vector[f"expected_ld_hex_{vcpus}_vcpu" + ("s" if vcpus > 1 else "")]
    got = launch_digest(
        "seves", firmware, hashes=hashes, vcpus=vcpus, vcpu_type=vector["vcpu_type"]
    )
    assert got.hex() == expected
    legacy = launch_digest(
        "seves",
        firmware,
        hashes=hashes,
        vcpus=vcpus,
        vcpu_type=vector["vcpu_type"],
        flavour=VmsaFlavour.LEGACY,
    )
    assert legacy.hex() != expected


def test_sevctl_measurement_vectors(testdata: Path) -> None:
    """sevctl's measurement vectors whose launch digest has to be computed from files."""
    checked = 0
    for vector in _vectors(testdata, "measurement"):
        if "firmware_file" not in vector:
            continue
        tik = _read(testdata, vector["tik_file"])
        firmware = _read(testdata, vector["firmware_file"])
        if "vmsa_cpu0_file" in vector:
            blob = base64.b64decode(vector["launch_measure_blob_b64"])
            expected = blob
            # sevctl's ready-made pages are EPYC-Milan pages from a pre-6.10 host.
            ld = launch_digest(
                "seves",
                firmware,
                vcpus=vector["num_cpus"],
                vcpu_type="EPYC-Milan",
                flavour=VmsaFlavour.LEGACY,
            )
        else:
            expected = base64.b64decode(vector["expected_measure_plus_mnonce_b64"])
            hashes = None
            if "kernel_file" in vector:
                hashes = KernelHashes.from_content(
                    _read(testdata, vector["kernel_file"]),
                    _read(testdata, vector["initrd_file"]),
                    vector["cmdline"],
                )
                assert len(hashes.table()) == vector["expected_hashes_table_len"]
            ld = launch_digest("sev", firmware, hashes=hashes)
        mnonce = expected[32:]
        version = FirmwareVersion(vector["api_major"], vector["api_minor"], vector["build_id"])
        measure = compute_measure(tik, version, vector["policy_u32"], ld, mnonce)
        assert measure + mnonce == expected, vector["name"]
        checked += 1
    assert checked == 3


def _provenance_digests(testdata: Path) -> dict[str, str]:
    text = (testdata / "ovmf" / "PROVENANCE.md").read_text()
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \| `([0-9a-f]{64,96})`[^|]*\|$", text, re.MULTILINE)
    return {f"{mode}: {inputs.strip()}": digest for mode, inputs, digest in rows}


def test_amdsev_provenance_digests(testdata: Path) -> None:
    rows = _provenance_digests(testdata)
    firmware = (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()
    assert launch_digest("sev", firmware).hex() == rows["sev: firmware only"]
    seves = launch_digest("seves", firmware, vcpus=4, vcpu_type="EPYC-v4")
    assert seves.hex() == rows["seves: firmware only, 4 vCPUs EPYC-v4, host >= 6.10 VMSA"]


def test_sev_ignores_vcpus_and_flavour(testdata: Path) -> None:
    firmware = _read(testdata, "kat/sev-launch-digest/ovmf_AmdSev_suffix.bin")
    assert launch_digest("sev", firmware) == hashlib.sha256(firmware).digest()
    assert launch_digest("sev", firmware, vcpus=8, flavour=VmsaFlavour.LEGACY) == (
        hashlib.sha256(firmware).digest()
    )


@pytest.mark.parametrize("mode", ["sev", "seves"])
def test_debian_ovmf_refuses_kernel_hashes(mode: str) -> None:
    firmware = DEBIAN_OVMF.read_bytes()
    hashes = KernelHashes.from_content(b"kernel", None, None)
    with pytest.raises(Unsupported, match="measured direct boot"):
        launch_digest(mode, firmware, hashes=hashes)
    assert len(launch_digest(mode, firmware)) == 32


def test_seves_needs_a_reset_block() -> None:
    firmware = bytes(4096)  # no footer table at all
    assert launch_digest("sev", firmware) == hashlib.sha256(firmware).digest()
    with pytest.raises(Unsupported, match="reset block"):
        launch_digest("seves", firmware)


def test_modes_and_vcpu_bounds(testdata: Path) -> None:
    firmware = _read(testdata, "kat/sev-launch-digest/ovmf_AmdSev_suffix.bin")
    assert parse_mode("seves") is SevMode.SEV_ES
    assert len(launch_digest("snp", firmware)) == 48
    with pytest.raises(ParseError, match="unknown SEV mode"):
        launch_digest("tdx", firmware)
    for vcpus in (0, -1, MAX_VCPUS + 1):
        with pytest.raises(ParseError, match="vcpus"):
            launch_digest("seves", firmware, vcpus=vcpus)
    with pytest.raises(Unsupported, match="vCPU type"):
        launch_digest("seves", firmware, vcpu_type="qemu64")
    # An explicit CPUID signature is the same as the named model's.
    assert launch_digest("seves", firmware, vcpus=2, vcpu_sig=0x00A00F11) == launch_digest(
        "seves", firmware, vcpus=2, vcpu_type="EPYC-Milan"
    )


def test_launch_digests_batch_equals_single_calls(testdata: Path) -> None:
    firmware = _read(testdata, "kat/sev-launch-digest/ovmf_AmdSev_suffix.bin")
    hashes = KernelHashes.from_content(b"kernel", b"initrd", "quiet")
    candidates = [
        LaunchInputs(SevMode.SEV),
        LaunchInputs(SevMode.SEV, hashes),
        *(
            LaunchInputs(SevMode.SEV_ES, hashes, vcpus, "EPYC-Milan", flavour)
            for vcpus in (1, 2, 8)
            for flavour in VmsaFlavour
        ),
    ]
    batch = launch_digests(Ovmf.from_bytes(firmware), candidates)
    assert list(batch) == candidates
    for inputs, digest in batch.items():
        single = launch_digest(
            inputs.mode.value,
            firmware,
            hashes=inputs.hashes,
            vcpus=inputs.vcpus,
            vcpu_type=inputs.vcpu_type,
            flavour=inputs.flavour,
        )
        assert digest == single
    assert len(set(batch.values())) == len(candidates)
    assert launch_digests(firmware, candidates) == batch


def test_launch_digests_fails_closed() -> None:
    hashes = KernelHashes.from_content(b"kernel", None, None)
    with pytest.raises(Unsupported):
        launch_digests(
            DEBIAN_OVMF.read_bytes(), [LaunchInputs(SevMode.SEV), LaunchInputs(SevMode.SEV, hashes)]
        )
