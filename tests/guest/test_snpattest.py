"""The SNP guest flow against a stub of the two attest operations, with simulated reports."""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestd.guest import initdata
from attestd.guest.initdata import InitdataError
from attestd.guest.snpattest import (
    AttestationRefused,
    ServiceUnreachable,
    SnpAttester,
    binding,
    kernel_pin,
)
from attestd.guest.snpreport import TsmSource
from attestd.sev.snp.verify import SnpReferencePolicy, report_data_binding
from attestd.sim.snp import ReportRequest
from tests.guest.snpfake import FakeTsmKernel, StubServer, StubService
from tests.sev.snp.vectors import sim_platform
from tools.tlscert import self_signed

VM = "5d1e7bd2-9a64-4a4f-9f55-1f7d3c4d5e6f"
MEASUREMENT = b"M" * 48
PAYLOAD = json.dumps({"version": 1, "volumes": {}}).encode()


def make_tls(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A self-signed server certificate for 127.0.0.1: (cert, key, its PEM, its pin)."""
    cert, key, spki = self_signed(tmp_path)
    pin = initdata.format_pin(hashlib.sha256(spki).digest())
    return cert, key, cert.read_text(), pin


def document(
    url: str, *, pin: str | None = None, ca_pem: str | None = None, retry_seconds: int = 300
) -> bytes:
    doc = initdata.Initdata((url,), uuid.UUID(VM), ca_pem, pin, retry_seconds)
    return doc.encode()


def stub_service(**policy: object) -> StubService:
    return StubService(
        sim_platform(),
        VM,
        PAYLOAD,
        SnpReferencePolicy(measurements=[MEASUREMENT], **policy),  # type: ignore[arg-type]
    )


def attester(tmp_path: Path, doc: bytes, *, host_data: bytes | None = None) -> SnpAttester:
    launch = ReportRequest(
        report_data=bytes(64),
        measurement=MEASUREMENT,
        host_data=initdata.host_data(doc) if host_data is None else host_data,
    )
    fake = FakeTsmKernel(tmp_path / "tsm", sim_platform(), launch)
    return SnpAttester(TsmSource(fake.root, fs=fake), sleep=lambda s: None)


@pytest.fixture
def http_stub() -> Iterator[tuple[StubService, StubServer]]:
    service = stub_service()
    server = StubServer(service)
    yield service, server
    server.close()


def test_binding_is_the_services() -> None:
    jwk = {"kty": "EC", "crv": "P-384", "x": "a" * 64, "y": "b" * 64}
    assert binding("n0nce", jwk) == report_data_binding("n0nce", jwk)


def test_attest_over_http(tmp_path: Path, http_stub: tuple[StubService, StubServer]) -> None:
    service, server = http_stub
    doc = document(server.url)
    assert attester(tmp_path, doc).attest(doc) == PAYLOAD
    assert service.released == 1
    assert service.requests == [f"/v1/vm/{VM}/attest/challenge", f"/v1/vm/{VM}/attest"]


def test_tampered_initdata_is_refused_before_any_request(
    tmp_path: Path, http_stub: tuple[StubService, StubServer]
) -> None:
    service, server = http_stub
    launched = document(server.url)
    substituted = document(server.url, retry_seconds=5)
    with pytest.raises(InitdataError, match="does not match the HOST_DATA"):
        attester(tmp_path, launched).attest(substituted)
    assert service.requests == []


def test_refusal_names_the_reason_and_releases_nothing(tmp_path: Path) -> None:
    service = stub_service(host_data=b"\1" * 32)
    server = StubServer(service)
    try:
        doc = document(server.url)
        with pytest.raises(AttestationRefused, match=r"HTTP 403 .*HOST_DATA"):
            attester(tmp_path, doc).attest(doc)
    finally:
        server.close()
    assert service.released == 0
    assert len(service.requests) == 2  # a refusal is not retried


def test_retries_with_backoff_then_succeeds(
    tmp_path: Path, http_stub: tuple[StubService, StubServer]
) -> None:
    service, server = http_stub
    service.status_script = [503, 429, 503]
    doc = document(server.url)
    sleeps: list[float] = []
    base = attester(tmp_path, doc)
    flow = SnpAttester(base.source, sleep=sleeps.append)
    assert flow.attest(doc) == PAYLOAD
    assert sleeps == [1.0, 2.0, 4.0]


def test_unreachable_service_fails_clearly_after_the_budget(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    doc = document(f"http://127.0.0.1:{port}/v1", retry_seconds=3)
    now = [0.0]
    base = attester(tmp_path, doc)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    flow = SnpAttester(base.source, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(ServiceUnreachable, match="no service answered in 3 s"):
        flow.attest(doc)
    assert now[0] == 3.0  # slept 1 + 2, then gave up


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, str, str]:
    return make_tls(tmp_path)


def test_https_with_pin_and_kernel_pin_precedence(
    tmp_path: Path, tls: tuple[Path, Path, str, str]
) -> None:
    cert, key, _pem, pin = tls
    other = initdata.format_pin(bytes(32))
    service = stub_service()
    server = StubServer(service, (cert, key))
    try:
        doc = document(server.url, pin=pin)
        flow = attester(tmp_path, doc)
        assert flow.attest(doc) == PAYLOAD
        with pytest.raises(AttestationRefused, match="does not match the pin"):
            flow.attest(doc, cmdline_pin=other)  # the kernel's pin wins
        wrong = document(server.url, pin=other)
        assert attester(tmp_path, wrong).attest(wrong, cmdline_pin=pin) == PAYLOAD
        with pytest.raises(AttestationRefused, match="does not match the pin"):
            attester(tmp_path, wrong).attest(wrong)
    finally:
        server.close()
    assert service.released == 2
    assert service.requests.count(f"/v1/vm/{VM}/attest/challenge") == 2


def test_https_with_ca(tmp_path: Path, tls: tuple[Path, Path, str, str]) -> None:
    cert, key, pem, _pin = tls
    (tmp_path / "other").mkdir()
    _, _, other_pem, _ = make_tls(tmp_path / "other")
    service = stub_service()
    server = StubServer(service, (cert, key))
    try:
        doc = document(server.url, ca_pem=pem)
        assert attester(tmp_path, doc).attest(doc) == PAYLOAD
        bad = document(server.url, ca_pem=other_pem)
        with pytest.raises(AttestationRefused, match="certificate"):
            attester(tmp_path, bad).attest(bad)
        plain = document(server.url.replace("https", "http"), ca_pem=pem)
        with pytest.raises(AttestationRefused, match="plain http"):
            attester(tmp_path, plain).attest(plain)
    finally:
        server.close()
    assert service.released == 1


def test_kernel_pin_parsing() -> None:
    pin = initdata.format_pin(bytes(range(32)))
    assert kernel_pin(f"root=/dev/vda attestd.pin={pin} quiet") == pin
    assert kernel_pin("root=/dev/vda") is None
    with pytest.raises(InitdataError, match="sha256//"):
        kernel_pin("attestd.pin=md5//x")


def test_an_owners_base_url_is_used_as_given(
    tmp_path: Path, http_stub: tuple[StubService, StubServer]
) -> None:
    """The initdata's service URL may be an owner's base URL (VM UUIDs are per owner):
    the guest appends ``/vm/<uuid>/attest…`` to it and nothing else."""
    service, server = http_stub
    base = server.url.removesuffix("/v1") + "/owners/alice/v1"
    doc = document(base)
    with pytest.raises(AttestationRefused):
        attester(tmp_path, doc).attest(doc)  # the stub serves /v1 only: 404
    assert service.requests[0] == f"/owners/alice/v1/vm/{VM}/attest/challenge"
    assert service.released == 0
