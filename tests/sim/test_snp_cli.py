"""``attestd-sim snp`` through its console script, verified by ``attestd snp verify``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from attestd.guest.snpreport import SimulatorSource
from attestd.sev.snp.report import AttestationReport
from tests.conftest import TESTDATA

BIN = Path(sys.executable).parent
OVMF = TESTDATA / "ovmf" / "OVMF.amdsev.fd"


def sh(
    tool: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTD_")}
    environ.update(env or {})
    result = subprocess.run(
        [str(BIN / tool), *argv],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def report_args(directory: Path) -> list[str]:
    """``snp report`` with a zero REPORT_DATA and a fixed measurement."""
    data = ["--report-data", "00" * 64, "--measurement", "11" * 48]
    return ["snp", "report", "--dir", str(directory), *data]


@pytest.fixture(scope="module")
def snp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("snp") / "platform"
    result = sh(
        "attestd-sim", "snp", "init", "--dir", str(directory), "--vlek", "--generation", "genoa"
    )
    assert result.returncode == 0, result.stderr
    return directory


def test_report_verifies_with_the_exported_anchor(snp_dir: Path, tmp_path: Path) -> None:
    anchors = tmp_path / "anchors"
    assert (
        sh(
            "attestd-sim", "snp", "export-anchor", "--dir", str(snp_dir), "--out", str(anchors)
        ).returncode
        == 0
    )
    report, table, vcek = tmp_path / "report.bin", tmp_path / "table.bin", tmp_path / "vcek.der"
    data = "ab" * 64
    result = sh(
        "attestd-sim",
        "snp",
        "report",
        "--dir",
        str(snp_dir),
        "--report-data",
        data,
        "--firmware",
        str(OVMF),
        "--vcpus",
        "4",
        "--host-data",
        "cd" * 32,
        "--out",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    assert (
        sh(
            "attestd-sim", "snp", "cert-table", "--dir", str(snp_dir), "--out", str(table)
        ).returncode
        == 0
    )
    assert (
        sh("attestd-sim", "snp", "vcek", "--dir", str(snp_dir), "--out", str(vcek)).returncode == 0
    )
    digest = sh("attestd", "digest", "--mode", "snp", "--firmware", str(OVMF), "--vcpus", "4")
    expected = digest.stdout.strip().splitlines()[-1]
    env = {"ATTESTD_TRUST_ANCHORS_DIR": str(anchors)}
    for leaf in (["--cert-table", str(table)], ["--vcek", str(vcek)]):
        result = sh("attestd", "snp", "verify", "--report", str(report), *leaf, env=env)
        out = json.loads(result.stdout)
        assert result.returncode == 0 and out["verified"] is True, out
        assert out["anchor"] == "sim-snp" and out["generation"] == "genoa"
        assert out["report-data"] == data and out["host-data"] == "cd" * 32
        assert out["measurement"] == expected
    result = sh(
        "attestd",
        "snp",
        "verify",
        "--report",
        str(report),
        "--vcek",
        str(vcek),
        "--trust-anchors",
        str(anchors),
        "--measurement",
        expected,
        "--host-data",
        "cd" * 32,
    )
    assert result.returncode == 0
    untrusted = sh("attestd", "snp", "verify", "--report", str(report), "--vcek", str(vcek))
    assert untrusted.returncode == 1
    assert json.loads(untrusted.stdout)["failure"]["code"] == "chain_untrusted"


def test_vlek_report_and_status(snp_dir: Path, tmp_path: Path) -> None:
    anchors = tmp_path / "anchors"
    sh("attestd-sim", "snp", "export-anchor", "--dir", str(snp_dir), "--out", str(anchors))
    report, table = tmp_path / "vlek.bin", tmp_path / "table.bin"
    result = sh(
        "attestd-sim",
        *report_args(snp_dir),
        "--signing-key",
        "vlek",
        "--vmpl",
        "1",
        "--out",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    sh(
        "attestd-sim",
        "snp",
        "cert-table",
        "--dir",
        str(snp_dir),
        "--signing-key",
        "vlek",
        "--out",
        str(table),
    )
    result = sh(
        "attestd",
        "snp",
        "verify",
        "--report",
        str(report),
        "--cert-table",
        str(table),
        "--trust-anchors",
        str(anchors),
        "--max-vmpl",
        "0",
    )
    out = json.loads(result.stdout)
    assert result.returncode == 1 and out["signing-key"] == "vlek"
    assert [r["code"] for r in out["reasons"]] == ["vmpl_too_high"]
    status = sh("attestd-sim", "snp", "status", "--dir", str(snp_dir))
    assert "genoa" in status.stdout and "vcek, vlek" in status.stdout
    for name in ("snp.json", "snp-vcek.key", "snp-vlek.key"):
        assert stat.S_IMODE((snp_dir / name).stat().st_mode) == 0o600


def test_errors_are_one_line(snp_dir: Path, tmp_path: Path) -> None:
    cases = [
        (
            [
                "snp",
                "report",
                "--dir",
                str(snp_dir),
                "--report-data",
                "zz",
                "--measurement",
                "11" * 48,
                "--out",
                str(tmp_path / "r"),
            ],
            "hex digits",
        ),
        (
            [
                "snp",
                "report",
                "--dir",
                str(snp_dir),
                "--report-data",
                "00" * 64,
                "--out",
                str(tmp_path / "r"),
            ],
            "--firmware",
        ),
        (
            [
                *report_args(snp_dir),
                "--policy",
                "0x10000",
                "--out",
                str(tmp_path / "r"),
            ],
            "INVALID_PARAM",
        ),
        (["snp", "status", "--dir", str(tmp_path / "none")], "no simulated SNP platform"),
        (["snp", "init", "--dir", str(snp_dir)], "already holds"),
        (["snp", "init", "--dir", str(tmp_path / "x"), "--tcb", "1,2"], "--tcb"),
    ]
    for argv, message in cases:
        result = sh("attestd-sim", *argv)
        assert result.returncode == 1, argv
        assert message in result.stderr, (argv, result.stderr)


def test_serve_answers_until_sigterm_then_cleans_up(snp_dir: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="serve-", dir="/tmp"))  # unix socket path length
    sock, pid_file = short / "psp", short / "pid"
    proc = subprocess.Popen(
        [str(BIN / "attestd-sim"), "snp", "serve", "--dir", str(snp_dir), "--socket", str(sock),
         "--pid-file", str(pid_file), "--measurement", "22" * 48, "--host-data", "33" * 32],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        assert int(pid_file.read_text()) == proc.pid
        for byte in (b"\x01", b"\x02"):
            report = AttestationReport.unpack(SimulatorSource(sock).get(byte * 64).report)
            assert report.report_data == byte * 64
            assert report.measurement == b"\x22" * 48 and report.host_data == b"\x33" * 32
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, err
    assert "measurement " + "22" * 48 in out and "stopped (2 requests)" in out
    assert not sock.exists() and not pid_file.exists()


def test_serve_refuses_a_socket_path_that_is_a_file(snp_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = sh(
        "attestd-sim", "snp", "serve", "--dir", str(snp_dir), "--socket", str(tmp_path / "f"),
        "--measurement", "22" * 48,
    )  # fmt: skip
    assert result.returncode != 0
    assert "exists and is not a socket" in result.stderr
    assert (tmp_path / "f").read_text() == "x"


def test_crl_is_signed_by_the_platforms_ark_and_revokes_on_request(
    snp_dir: Path, tmp_path: Path
) -> None:
    from attestd.sev.snp.certs import SnpCrl
    from attestd.sim.snp import ARK_KEY_FILE, SnpPlatform

    assert stat.S_IMODE((snp_dir / ARK_KEY_FILE).stat().st_mode) == 0o600
    anchor = SnpPlatform.load(snp_dir).anchor()
    out = tmp_path / "plain.crl"
    assert sh("attestd-sim", "snp", "crl", "--dir", str(snp_dir), "--out", str(out)).returncode == 0
    crl = SnpCrl.from_der(out.read_bytes())
    assert crl.signed_by(anchor.ark) and not crl.revoked
    revoked = tmp_path / "revoked.crl"
    args = ["--revoke", "ask", "--revoke", "asvk", "--out", str(revoked)]
    assert sh("attestd-sim", "snp", "crl", "--dir", str(snp_dir), *args).returncode == 0
    crl = SnpCrl.from_der(revoked.read_bytes())
    assert anchor.asvk is not None and crl.revokes(anchor.ask) and crl.revokes(anchor.asvk)
    bad = sh("attestd-sim", "snp", "crl", "--dir", str(snp_dir), "--revoke", "ark", "--out", "x")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
