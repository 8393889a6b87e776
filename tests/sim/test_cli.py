"""``attestd-sim``: one platform shared by separate processes, driven from the shell."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from attestd.sev.certs import AmdCaCertificate, SevCertificate
from attestd.sev.chain import PlatformChain, TrustAnchor, verify_chain
from attestd.sev.secrets import LUKS_KEY_GUID, SecretEntry, _seal_launch_secret, build_secret_table
from attestd.sev.session import FirmwareVersion, LaunchMeasurement, start_launch, verify_measurement
from attestd.sim.cli import main

SIM = [sys.executable, "-m", "attestd.sim.cli"]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIM, *argv], capture_output=True, text=True, check=False, timeout=120)


def test_launch_across_processes(sim_copy: Path, tmp_path: Path) -> None:
    d = str(sim_copy)
    exported = _run("export", "--dir", d, "--format", "json")
    assert exported.returncode == 0, exported.stderr
    info = json.loads(exported.stdout)
    anchors = tmp_path / "anchors"
    assert _run("trust-anchor", "--dir", d, "--out", str(anchors)).returncode == 0
    (anchor_dir,) = anchors.iterdir()
    anchor = TrustAnchor(
        anchor_dir.name,
        AmdCaCertificate.unpack((anchor_dir / "ark.cert").read_bytes()),
        AmdCaCertificate.unpack((anchor_dir / "ask.cert").read_bytes()),
    )
    chain = PlatformChain.from_export(
        base64.b64decode(info["pdh"]), base64.b64decode(info["cert-chain"])
    )
    signed = SevCertificate.unpack(base64.b64decode(info["signed-cek"]))
    pdh = verify_chain(chain, (anchor,), signed_cek=signed).pdh_key()

    start = start_launch(pdh, 1)
    (tmp_path / "godh.b64").write_text(base64.b64encode(start.godh_cert).decode())
    (tmp_path / "session.bin").write_bytes(start.session)
    started = _run(
        "launch-start", "--dir", d, "--godh-cert", str(tmp_path / "godh.b64"),
        "--session", str(tmp_path / "session.bin"), "--policy", "0x1",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    handle = started.stdout.strip()
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(bytes(range(256)) * 16)
    assert _run("launch-update-data", "--dir", d, "--handle", handle, str(firmware)).returncode == 0
    measured = _run("launch-measure", "--dir", d, "--handle", handle)
    assert measured.returncode == 0, measured.stderr
    blob = LaunchMeasurement.unpack(base64.b64decode(measured.stdout))
    version = FirmwareVersion(info["api-major"], info["api-minor"], info["build-id"])
    digest = hashlib.sha256(firmware.read_bytes()).digest()
    assert verify_measurement(start.keys.tik, blob, version, 1, [digest]) == digest

    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"disk key")])
    packet = _seal_launch_secret(start.keys, blob.measure, table)
    (tmp_path / "hdr").write_text(base64.b64encode(packet.header).decode())
    (tmp_path / "payload").write_bytes(packet.ciphertext)
    injected = _run(
        "launch-secret", "--dir", d, "--handle", handle,
        "--header", str(tmp_path / "hdr"), "--secret", str(tmp_path / "payload"),
    )  # fmt: skip
    assert injected.returncode == 0, injected.stderr
    out = tmp_path / "table.bin"
    assert main(["secret-table", "--dir", d, "--handle", handle, "--out", str(out)]) == 0
    assert out.read_bytes() == table
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the guest's secrets: owner-only
    assert main(["launch-finish", "--dir", d, "--handle", handle]) == 0

    again = _run(
        "launch-secret", "--dir", d, "--handle", handle,
        "--header", str(tmp_path / "hdr"), "--secret", str(tmp_path / "payload"),
    )  # fmt: skip
    assert again.returncode == 1 and "INVALID_GUEST_STATE" in again.stderr
    assert "disk key" not in again.stderr


def test_refusals_are_reported_with_firmware_status(
    sim_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(sim_copy)
    (tmp_path / "godh").write_bytes(b"\x00" * 10)
    (tmp_path / "session").write_bytes(b"\x00" * 0x80)
    argv = ["launch-start", "--dir", d, "--godh-cert", str(tmp_path / "godh")]
    assert main([*argv, "--session", str(tmp_path / "session"), "--policy", "1"]) == 1
    assert "INVALID_LENGTH" in capsys.readouterr().err
    assert main(["launch-measure", "--dir", d, "--handle", "7"]) == 1
    assert "INVALID_GUEST" in capsys.readouterr().err
    assert main(["status", "--dir", str(tmp_path / "none")]) == 1
    assert "attestd-sim init" in capsys.readouterr().err


def test_init_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "p")
    argv = ["init", "--dir", d, "--name", "lab", "--rsa-bits", "2048", "--api-minor", "49"]
    assert main(argv) == 0
    assert main(argv) == 1  # refuses to overwrite
    capsys.readouterr()
    assert main(["status", "--dir", d]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status == {"name": "lab", "firmware": "1.49 build 21", "guests": {}}
    assert main(["export", "--dir", d, "--out", str(tmp_path / "x")]) == 0
    assert "cert-chain" in capsys.readouterr().out
    assert len((tmp_path / "x" / "cert_chain.cert").read_bytes()) == 3 * 0x824
