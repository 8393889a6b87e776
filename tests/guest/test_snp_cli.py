"""``attestd-guest snp-bootstrap``: simulated PSP on a unix socket, stub service, real agent."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from attestd.guest import initdata
from attestd.guest.cli import EXIT_ATTESTATION, main
from attestd.sev.snp.verify import SnpReferencePolicy
from attestd.sim.snp import ReportRequest
from attestd.sim.snp_psp import UnixPsp
from tests.guest.snpfake import StubServer, StubService
from tests.sev.snp.vectors import sim_platform

VM = uuid.UUID("3f2a9c1e-8b7d-4e6f-a5b4-c3d2e1f0a9b8")
MEASUREMENT = b"m" * 48
PAYLOAD = {
    "version": 1,
    "user_id": "owner-1",
    "env": {"app": {"MODE": "prod"}},
    "secret": {"db": {"PASSWORD": "s3cret"}},
    "volumes": {},
}


def run(tmp_path: Path, document: bytes, launched: bytes, service: StubService) -> int:
    """One snp-bootstrap; the PSP was launched with ``launched``'s HOST_DATA."""
    (tmp_path / "initdata.b64").write_bytes(base64.b64encode(document) + b"\n")
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    launch = ReportRequest(bytes(64), MEASUREMENT, host_data=initdata.host_data(launched))
    with UnixPsp(tmp_path / "psp.sock", sim_platform(), launch):
        return main([
            "--run-dir", str(tmp_path / "run"), "snp-bootstrap",
            "--initdata-fwcfg", str(tmp_path / "initdata.b64"),
            "--report-source", "sim", "--sim-psp", str(tmp_path / "psp.sock"),
            "--cmdline", str(tmp_path / "cmdline"),
        ])  # fmt: skip


@pytest.fixture
def stub() -> tuple[StubService, StubServer]:
    service = StubService(
        sim_platform(),
        str(VM),
        json.dumps(PAYLOAD).encode(),
        SnpReferencePolicy(measurements=[MEASUREMENT]),
    )
    return service, StubServer(service)


def test_snp_bootstrap_writes_files_and_reruns_without_attesting(
    tmp_path: Path, stub: tuple[StubService, StubServer], capsys: pytest.CaptureFixture[str]
) -> None:
    service, server = stub
    try:
        document = initdata.Initdata((server.url,), VM).encode()
        assert run(tmp_path, document, document, service) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "ready"
        assert (tmp_path / "run" / "secret" / "db").read_text() == 'PASSWORD="s3cret"\n'
        assert (tmp_path / "run" / "env" / "app").read_text() == 'MODE="prod"\n'
        assert run(tmp_path, document, document, service) == 0  # idempotent re-run
        assert service.released == 1
    finally:
        server.close()


def test_snp_bootstrap_refuses_substituted_initdata(
    tmp_path: Path, stub: tuple[StubService, StubServer], capsys: pytest.CaptureFixture[str]
) -> None:
    service, server = stub
    try:
        launched = initdata.Initdata((server.url,), VM).encode()
        other = initdata.Initdata((server.url,), VM, retry_seconds=1).encode()
        assert run(tmp_path, other, launched, service) == EXIT_ATTESTATION
    finally:
        server.close()
    out = json.loads(capsys.readouterr().out)
    assert out["code"] == "invalid_initdata" and "HOST_DATA" in out["error"]
    assert service.requests == [] and not (tmp_path / "run" / "secret").exists()


def test_snp_bootstrap_bad_fwcfg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "initdata.b64").write_text("not base64 at all!")
    code = main([
        "--run-dir", str(tmp_path / "run"), "snp-bootstrap",
        "--initdata-fwcfg", str(tmp_path / "initdata.b64"), "--report-source", "sim",
        "--sim-psp", str(tmp_path / "none"),
    ])  # fmt: skip
    assert code == EXIT_ATTESTATION
    assert "is not base64" in json.loads(capsys.readouterr().out)["error"]
