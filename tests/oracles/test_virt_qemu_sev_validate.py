"""attestd and its simulator against libvirt's independent ``virt-qemu-sev-validate``.

The tool (offline mode) computes the launch measurement and builds LAUNCH_SECRET
packets with its own code. Measurements produced by ``attestd.sim`` must validate
in it given the same TEK/TIK, its secret packets must decode in the simulator, and
attestd's packets must be the same bytes as its packets.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestd.sev.certs import SevCertificate
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.secrets import (
    LUKS_KEY_GUID,
    LaunchSecret,
    SecretEntry,
    SecretHeader,
    _seal_launch_secret,
    build_secret_table,
    open_launch_secret,
    parse_secret_table,
)
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    LaunchStart,
    TransportKeys,
    start_launch,
)
from attestd.sim.platform import SimulatedPlatform

TOOL = Path("/usr/bin/virt-qemu-sev-validate")
SYSTEM_PYTHON = "/usr/bin/python3"
FIRMWARE = "sev/kat/sevctl/OVMF.amdsev.fd_trimmed_edk2-ovmf-20220126gitbb1bba3d77-4.el9"
OVMF = "ovmf/OVMF.amdsev.fd"
CMDLINE = "console=ttyS0 root=/dev/vda1"
VERSION = FirmwareVersion(1, 55, 21)  # what the simulator runs


def _validate(tmp_path: Path, keys: TransportKeys, blob: bytes, policy: int, *extra: str) -> int:
    tk = tmp_path / "tk.bin"
    tk.write_bytes(keys.to_bytes())
    argv = [
        SYSTEM_PYTHON,
        str(TOOL),
        "--quiet",
        "--tk",
        str(tk),
        "--measurement",
        base64.b64encode(blob).decode(),
        "--api-major",
        str(VERSION.api_major),
        "--api-minor",
        str(VERSION.api_minor),
        "--build-id",
        str(VERSION.build_id),
        "--policy",
        str(policy),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, check=False, timeout=60).returncode


@pytest.fixture(scope="module")
def platform() -> SimulatedPlatform:
    sim = SimulatedPlatform.create(name="oracle", rsa_bits=2048)
    sim.api_major, sim.api_minor, sim.build_id = 1, 55, 21
    return sim


def _pdh(platform: SimulatedPlatform) -> ec.EllipticCurvePublicKey:
    return SevCertificate.unpack(platform.export().pdh).public_key()


def _sim_launch(
    platform: SimulatedPlatform, policy: int, data: list[bytes], vmsas: tuple[bytes, ...] = ()
) -> tuple[LaunchStart, int, bytes]:
    """Launch in the simulator; return the session, the handle and measure||mnonce."""
    start = start_launch(_pdh(platform), policy)
    handle = platform.launch_start(start.godh_cert, start.session, policy)
    for chunk in data:
        platform.launch_update_data(handle, chunk)
    for page in vmsas:
        platform.launch_update_vmsa(handle, page)
    return start, handle, platform.launch_measure(handle)


def test_simulator_measurement_validates_firmware_only(
    platform: SimulatedPlatform, testdata: Path, tmp_path: Path
) -> None:
    firmware = testdata / FIRMWARE
    start, _, blob = _sim_launch(platform, 1, [firmware.read_bytes()])
    fw = ("--firmware", str(firmware))
    assert _validate(tmp_path, start.keys, blob, 1, *fw) == 0
    assert _validate(tmp_path, start.keys, blob, 3, *fw) == 1
    wrong_tik = TransportKeys(start.keys.tek, bytes(16))
    assert _validate(tmp_path, wrong_tik, blob, 1, *fw) == 1
    assert _validate(tmp_path, start.keys, blob, 1, "--firmware", str(testdata / OVMF)) == 1


def test_simulator_measurement_validates_with_kernel_hashes(
    platform: SimulatedPlatform, testdata: Path, tmp_path: Path
) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"\x7fELF kernel" * 1000)
    initrd.write_bytes(b"initrd" * 1000)
    firmware = testdata / OVMF
    table = KernelHashes.from_content(kernel.read_bytes(), initrd.read_bytes(), CMDLINE).table()
    start, _, blob = _sim_launch(platform, 1, [firmware.read_bytes(), table])
    argv = ["--firmware", str(firmware), "--kernel", str(kernel), "--initrd", str(initrd)]
    assert _validate(tmp_path, start.keys, blob, 1, *argv, "--cmdline", CMDLINE) == 0
    assert _validate(tmp_path, start.keys, blob, 1, *argv, "--cmdline", CMDLINE + " ") == 1


def test_simulator_sev_es_measurement_validates(
    platform: SimulatedPlatform, testdata: Path, tmp_path: Path
) -> None:
    firmware = testdata / FIRMWARE
    vmsa0, vmsa1 = testdata / "sev/kat/sevctl/vmsa0.bin", testdata / "sev/kat/sevctl/vmsa1.bin"
    pages = (vmsa0.read_bytes(), *[vmsa1.read_bytes()] * 3)
    start, _, blob = _sim_launch(platform, 5, [firmware.read_bytes()], pages)
    argv = ["--firmware", str(firmware), "--vmsa-cpu0", str(vmsa0), "--vmsa-cpu1", str(vmsa1)]
    assert _validate(tmp_path, start.keys, blob, 5, *argv, "--num-cpus", "4") == 0
    assert _validate(tmp_path, start.keys, blob, 5, *argv, "--num-cpus", "3") == 1


def test_secret_packets_agree_and_decode_in_the_simulator(
    platform: SimulatedPlatform, testdata: Path, tmp_path: Path
) -> None:
    firmware = testdata / FIRMWARE
    start, handle, blob = _sim_launch(platform, 1, [firmware.read_bytes()])
    keys = start.keys
    secret = b"correct horse battery staple"  # 28 bytes: table 68, padded to 80 by both
    (tmp_path / "luks.key").write_bytes(secret)
    header_file, payload_file = tmp_path / "hdr.b64", tmp_path / "payload.b64"
    status = _validate(
        tmp_path,
        keys,
        blob,
        1,
        "--firmware",
        str(firmware),
        "--inject-secret",
        f"luks-key:{tmp_path / 'luks.key'}",
        "--secret-header",
        str(header_file),
        "--secret-payload",
        str(payload_file),
    )
    assert status == 0
    theirs = LaunchSecret(
        base64.b64decode(header_file.read_bytes()), base64.b64decode(payload_file.read_bytes())
    )
    measure = LaunchMeasurement.unpack(blob).measure
    ours_table = build_secret_table([SecretEntry(LUKS_KEY_GUID, secret)])
    # Their packet opens (MAC verified) with attestd's firmware-side code ...
    table = open_launch_secret(keys, measure, theirs)
    assert table == ours_table
    assert parse_secret_table(table) == [SecretEntry(LUKS_KEY_GUID, secret)]
    # ... with the same IV attestd's packet is the same bytes ...
    iv = SecretHeader.unpack(theirs.header).iv
    assert _seal_launch_secret(keys, measure, ours_table, iv=iv) == theirs
    # ... and the simulated firmware accepts it and exposes the same table.
    platform.launch_secret(handle, theirs.header, theirs.ciphertext)
    assert platform.secret_table(handle) == ours_table
