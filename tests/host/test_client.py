"""The service client: retries, timeouts, TLS, token, error envelope (outbound HTTP mocked)."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import responses

from attestd.errors import LaunchError
from attestd.host.client import LaunchReport, ServiceClient
from attestd.host.config import HostSettings, parse_settings
from attestd.host.platform import PlatformData
from tools.tlscert import self_signed

VM = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
BASE = "https://attest.example/v1"
PLATFORM = PlatformData(pdh=b"P" * 0x824, cert_chain=b"C" * (3 * 0x824), chip_id=b"I" * 64)
REPORT = LaunchReport(measurement=b"M" * 48, api_major=1, api_minor=55, build_id=21, policy=1)


def client(**kw: object) -> ServiceClient:
    return ServiceClient(BASE, HostSettings(retries=2, timeout=3.0, **kw))  # type: ignore[arg-type]


@responses.activate
def test_launch_and_validate_round_trip() -> None:
    responses.post(
        f"{BASE}/vm/{VM}/launch",
        json={"launch-id": "L9", "owner-cert": base64.b64encode(b"g").decode(),
              "session": base64.b64encode(b"s").decode(), "policy": "0x1"},
    )  # fmt: skip
    responses.post(
        f"{BASE}/vm/{VM}/validate",
        json={"secret-header": base64.b64encode(b"h" * 52).decode(),
              "secret-table": base64.b64encode(b"t" * 64).decode()},
    )  # fmt: skip
    c = client()
    session = c.launch(VM, PLATFORM)
    assert (session.launch_id, session.godh_cert, session.session, session.policy) == (
        "L9", b"g", b"s", 1,
    )  # fmt: skip
    packet = c.validate(VM, "L9", REPORT)
    assert packet.header == b"h" * 52 and packet.secret == b"t" * 64
    assert "t" * 10 not in repr(packet)  # never printed
    sent = responses.calls[1].request.body
    assert sent is not None and b'"launch-id": "L9"' in sent and b'"api-minor": 55' in sent


@responses.activate
def test_transient_errors_are_retried_then_reported() -> None:
    url = f"{BASE}/vm/{VM}/validate"
    responses.post(url, status=503, json={"message": "db down"})
    responses.post(url, status=503, json={"message": "db down"})
    responses.post(
        url,
        json={"secret-header": base64.b64encode(b"h").decode(),
              "secret-table": base64.b64encode(b"t").decode()},
    )  # fmt: skip
    assert client().validate(VM, "L", REPORT).secret == b"t"
    assert len(responses.calls) == 3


@responses.activate
def test_attestation_failure_is_not_retried_and_carries_the_reason() -> None:
    responses.post(
        f"{BASE}/vm/{VM}/validate",
        status=403,
        json={"code": 403, "status": "Forbidden", "message": "launch measurement does not verify",
              "errors": {"reason": "measurement_mismatch",
                         "reasons": ["firmware sha256:ab.. x 1 vCPU: no match"]}},
    )  # fmt: skip
    with pytest.raises(LaunchError) as info:
        client().validate(VM, "L", REPORT)
    assert len(responses.calls) == 1
    assert info.value.message == (
        f"service refused /vm/{VM}/validate: HTTP 403 measurement_mismatch: launch measurement "
        "does not verify (firmware sha256:ab.. x 1 vCPU: no match)"
    )


def test_plain_http_needs_explicit_permission() -> None:
    with pytest.raises(LaunchError, match="allow_http"):
        ServiceClient("http://attest.example/v1", HostSettings())
    ServiceClient("http://attest.example/v1", HostSettings(allow_http=True))


def test_tls_verification_and_token_from_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    settings = parse_settings(
        f'ca_bundle = "{tmp_path / "ca.pem"}"\ntoken_file = "{tmp_path / "token"}"\n'
    )
    c = ServiceClient(BASE, settings)
    assert c.session.verify == str(tmp_path / "ca.pem")
    assert c.session.headers["Authorization"] == "Bearer tok"
    assert ServiceClient(BASE, HostSettings()).session.verify is True


@pytest.mark.parametrize(
    "text", ["timeout = 'x'\n", "nope = 1\n", "allow_http = 1\n", "state_dir = 3\n", "= broken"]
)
def test_bad_host_config_is_rejected(text: str) -> None:
    from attestd.errors import ParseError

    with pytest.raises(ParseError, match="host config"):
        parse_settings(text)


def _tls_server(tmp_path: Path) -> tuple[str, Path, Callable[[], None]]:
    """A real HTTPS server on 127.0.0.1 with a fresh self-signed certificate."""
    cert_file, key_file, _spki = self_signed(tmp_path)
    answer = {"launch-id": "L1", "owner-cert": "Zw==", "session": "cw==", "policy": 1}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"https://127.0.0.1:{server.server_port}/v1", cert_file, stop


def test_tls_is_verified_against_a_real_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert, stop = _tls_server(tmp_path)
    # an environment CA bundle (set on these machines anyway) must not replace ca_bundle
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    try:
        with pytest.raises(LaunchError, match=r"TLS verification failed; check .* ca_bundle"):
            ServiceClient(url, HostSettings(retries=0, timeout=5.0)).launch(VM, PLATFORM)
        trusted = ServiceClient(url, HostSettings(retries=0, timeout=5.0, ca_bundle=cert))
        assert trusted.launch(VM, PLATFORM).launch_id == "L1"
    finally:
        stop()


def test_a_silent_service_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        c = ServiceClient(url, HostSettings(allow_http=True, timeout=0.5, retries=2))
        start = time.monotonic()
        with pytest.raises(LaunchError, match=r"unreachable: .*: no answer within 0.5 s"):
            c.validate(VM, "L", REPORT)
        assert time.monotonic() - start < 3.0  # bounded: no read retries of a POST


def test_example_host_config_is_the_defaults_but_token_and_ca() -> None:
    from tests.conftest import PROJECT_ROOT

    text = (PROJECT_ROOT / "examples" / "libvirt" / "host.toml").read_text(encoding="utf-8")
    example = parse_settings(text)
    assert example.token_file is not None and example.ca_bundle is not None
    assert example == dataclasses.replace(
        HostSettings(), token_file=example.token_file, ca_bundle=example.ca_bundle
    )


@responses.activate
def test_an_owners_base_url_is_used_as_given() -> None:
    base = "https://attest.example/owners/alice/v1"
    responses.post(
        f"{base}/vm/{VM}/launch",
        json={"launch-id": "L1", "owner-cert": base64.b64encode(b"g").decode(),
              "session": base64.b64encode(b"s").decode(), "policy": "0x1"},
    )  # fmt: skip
    c = ServiceClient(base, HostSettings(retries=0, timeout=3.0))
    assert c.launch(VM, PLATFORM).launch_id == "L1"
    assert responses.calls[0].request.url == f"{base}/vm/{VM}/launch"


def test_unreachable_owner_base_url_names_the_service_root() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    c = ServiceClient(
        f"http://127.0.0.1:{port}/owners/alice/v1",
        HostSettings(allow_http=True, timeout=2.0, retries=0),
    )
    with pytest.raises(LaunchError) as caught:
        c.launch(VM, PLATFORM)
    assert f"curl http://127.0.0.1:{port}/healthz" in str(caught.value)


@responses.activate
def test_initdata_of_an_snp_vm_of_another_scheme_and_malformed_answers() -> None:
    vm = VM
    url = f"{BASE}/vm/{vm}/initdata"
    good = {
        "scheme": "amd-sev-snp",
        "policy": "0x0000000000030000",
        "initdata": 'version = "0.1.0"\n',
        "host-data": "ab" * 32,
    }
    responses.get(url, json=good)
    got = client().initdata(vm)
    assert got is not None and got.policy == 0x30000 and got.host_data == bytes([0xAB] * 32)
    assert got.initdata == b'version = "0.1.0"\n'
    wrong = {"code": 422, "errors": {"reason": "unsupported", "reasons": ["wrong_scheme"]}}
    responses.replace(responses.GET, url, json=wrong, status=422)
    assert client().initdata(vm) is None
    for broken in ({**good, "policy": 196608}, {**good, "host-data": "AB" * 32}, {"x": 1}):
        responses.replace(responses.GET, url, json=broken)
        with pytest.raises(LaunchError, match="malformed"):
            client().initdata(vm)
    responses.replace(
        responses.GET,
        url,
        json={"code": 409, "errors": {"reason": "initdata_unavailable"}, "message": "no"},
        status=409,
    )
    with pytest.raises(LaunchError, match="initdata_unavailable"):
        client().initdata(vm)
