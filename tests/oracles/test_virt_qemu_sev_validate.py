"""attestd against libvirt's independent ``virt-qemu-sev-validate`` (offline mode).

The tool computes the launch measurement and builds LAUNCH_SECRET packets with its
own code; attestd must agree with it in both directions.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

from attestd.sev.measurement import FirmwareVersion, LaunchMeasurement, compute_measure
from attestd.sev.secrets import (
    LUKS_KEY_GUID,
    LaunchSecret,
    SecretEntry,
    SecretHeader,
    build_launch_secret,
    build_secret_table,
    open_launch_secret,
    parse_secret_table,
)
from attestd.sev.session import TransportKeys

TOOL = Path("/usr/bin/virt-qemu-sev-validate")
SYSTEM_PYTHON = "/usr/bin/python3"
FIRMWARE = "sev/kat/sevctl/OVMF.amdsev.fd_trimmed_edk2-ovmf-20220126gitbb1bba3d77-4.el9"
VERSION = FirmwareVersion(1, 55, 21)


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


def _attestd_blob(keys: TransportKeys, policy: int, measured: bytes) -> bytes:
    mnonce = bytes(range(16))
    measure = compute_measure(keys.tik, VERSION, policy, hashlib.sha256(measured).digest(), mnonce)
    return LaunchMeasurement(measure, mnonce).pack()


def test_firmware_only_measurement_validates(testdata: Path, tmp_path: Path) -> None:
    keys = TransportKeys.generate()
    firmware = testdata / FIRMWARE
    blob = _attestd_blob(keys, 1, firmware.read_bytes())
    assert _validate(tmp_path, keys, blob, 1, "--firmware", str(firmware)) == 0
    assert _validate(tmp_path, keys, blob, 3, "--firmware", str(firmware)) == 1
    wrong_tik = TransportKeys(keys.tek, bytes(16))
    assert _validate(tmp_path, wrong_tik, blob, 1, "--firmware", str(firmware)) == 1


def test_secret_packet_agrees_byte_for_byte(testdata: Path, tmp_path: Path) -> None:
    keys = TransportKeys.generate()
    firmware = testdata / FIRMWARE
    blob = _attestd_blob(keys, 1, firmware.read_bytes())
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
    # Their packet opens (MAC verified) with attestd's firmware-side code ...
    table = open_launch_secret(keys, measure, theirs)
    assert parse_secret_table(table) == [SecretEntry(LUKS_KEY_GUID, secret)]
    ours_table = build_secret_table([SecretEntry(LUKS_KEY_GUID, secret)])
    assert table == ours_table
    # ... and with the same IV attestd's packet is the same bytes.
    iv = SecretHeader.unpack(theirs.header).iv
    ours = build_launch_secret(keys, measure, ours_table, iv=iv)
    assert ours == theirs
