"""``attestd snp vcek import | fetch``: the service's VCEK cache from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import responses

from attestd.cli import main
from attestd.sev.snp.certs import SnpCertificate
from attestd.sim.snp import ReportRequest, SnpPlatform
from attestd.trust.vcek import VcekKey

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def chip() -> SnpPlatform:
    return SnpPlatform.create(name="cli-chip")


def test_import_then_the_service_cache_holds_it(tmp_path: Path, chip: SnpPlatform) -> None:
    vcek = tmp_path / "vcek.der"
    vcek.write_bytes(chip.vcek)
    env = {"ATTESTD_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(BIN / "attestd"), "snp", "vcek", "import", str(vcek)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = VcekKey.of_certificate(SnpCertificate.from_der(chip.vcek))
    cached = tmp_path / "data" / "cek" / "vcek" / key.filename
    assert done.stdout.strip() == str(cached)
    assert cached.read_bytes() == chip.vcek
    vcek.write_bytes(chip.ark)  # not a VCEK
    bad = subprocess.run(
        [str(BIN / "attestd"), "snp", "vcek", "import", str(vcek)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "VCEK" in bad.stderr or "hwID" in bad.stderr, bad.stderr


@responses.activate
def test_fetch_the_vcek_of_a_report(
    tmp_path: Path,
    chip: SnpPlatform,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ATTESTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATTESTD_KDS_URL", "https://kds.test")
    report = tmp_path / "report.bin"
    report.write_bytes(chip.report(ReportRequest(report_data=bytes(64), measurement=bytes(48))))
    key = VcekKey.of_certificate(SnpCertificate.from_der(chip.vcek))
    responses.get("https://kds.test" + key.query(), body=chip.vcek)
    assert main(["snp", "vcek", "fetch", "--report", str(report)]) == 0
    cached = tmp_path / "data" / "cek" / "vcek" / key.filename
    assert capsys.readouterr().out.strip() == str(cached)
    assert cached.read_bytes() == chip.vcek


@responses.activate
def test_crl_fetch_refuses_what_the_pinned_ark_did_not_sign(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``attestd snp crl fetch``: a KDS answer the pinned Milan ARK did not sign is not cached."""
    monkeypatch.setenv("ATTESTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATTESTD_KDS_URL", "https://kds.test")
    monkeypatch.delenv("ATTESTD_TRUST_ANCHORS_DIR", raising=False)
    monkeypatch.delenv("ATTESTD_CONFIG", raising=False)
    forged = SnpPlatform.create(name="milan", rsa_bits=2048).crl()  # AMD-like, wrong key
    responses.get("https://kds.test/vcek/v1/Milan/crl", body=forged)
    assert main(["snp", "crl", "fetch", "--generation", "milan"]) != 0
    assert "the milan ARK did not sign" in capsys.readouterr().err
    assert not (tmp_path / "data" / "cek" / "vcek" / "crl-milan.der").exists()
