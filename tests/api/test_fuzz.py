"""Fuzzing: schemathesis against the OpenAPI document, hypothesis on request bodies.

Bounded (a few dozen examples per operation) so the suite stays quick; the
property is that no input yields a 500 and every response matches the document.
The SNP run has a registered SNP VM and a trusted software SNP platform, and half
its ``/attest`` cases carry a valid signed report for a fresh nonce, so the guest
operations reach their successful path too; no response but the JWE carries a secret.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.snp import SnpPlatform
from tests.servicefix import make_owner
from tests.snpfix import (
    FUZZ_OWNER,
    SECRET_VALUES,
    SNP_VM,
    Guest,
    attest_body,
    challenge,
    snp_fuzz_app,
)

VM = "3a3b3c3d-4e4f-4a5b-8c6d-7e7f8a8b8c8d"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, dict[str, str]]]:
    data: Path = tmp_path_factory.mktemp("fuzz")
    # the development opt-outs: every generated request reaches the parsers
    app = create_app(
        Settings(
            data_dir=data,
            kds_offline=True,
            require_host_token=False,
            host_launch_rate=0,
            max_pending_launches=0,
        )
    )
    owner = make_owner(app, "fuzzer")
    body = {"scheme": "amd-sev", "policy": 1, "firmware-hashes": ["ab" * 32]}
    assert app.test_client().post(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 201
    yield app, owner
    app.extensions["attestd"].store.dispose()


def _operations(app: Flask) -> list[Any]:
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_openapi_fuzz(fuzz_app: tuple[Flask, dict[str, str]]) -> None:
    """schemathesis: every documented operation, generated requests, documented responses."""
    app, owner = fuzz_app
    operations = _operations(app)
    assert len(operations) >= 11
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            params = case.path_parameters or {}
            if "uuid" in params and len(str(case.body)) % 2 == 0:
                params["uuid"] = VM  # half the cases reach the registered VM
            case.call_and_validate(headers=owner, checks=CHECKS)

        run()


@pytest.fixture(scope="module")
def fuzz_snp_app(
    tmp_path_factory: pytest.TempPathFactory,
    snp_platform: SnpPlatform,
    snp_anchors_dir: Path,
    digest: bytes,
) -> Iterator[tuple[Flask, dict[str, str], bytes]]:
    app, owner = snp_fuzz_app(
        tmp_path_factory.mktemp("fuzz-snp"), snp_anchors_dir, digest, snp_platform
    )
    yield app, owner, digest
    app.extensions["attestd"].store.dispose()


def test_openapi_fuzz_snp(
    fuzz_snp_app: tuple[Flask, dict[str, str], bytes], snp_platform: SnpPlatform
) -> None:
    """schemathesis with a registered SNP VM: challenge and attest succeed too, no 500, no secret
    outside the JWE (which only the guest's key opens)."""
    app, owner, digest = fuzz_snp_app
    statuses: dict[str, set[int]] = {}
    turns = itertools.count()
    for operation in _operations(app):

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            # the first case of each operation and every other one after it
            valid = next(turns) % 2 == 0 or case.path not in statuses
            params = case.path_parameters or {}
            keeps_vm = case.method not in ("PUT", "DELETE")  # the VM stays registered
            if "uuid" in params and keeps_vm and (valid or case.path.endswith("/attest")):
                params["uuid"] = SNP_VM
            guest = None
            if case.path.endswith("/attest") and valid:
                guest = Guest()
                nonce = challenge(app.test_client())
                case.body = attest_body(snp_platform, guest, nonce, digest, owner=FUZZ_OWNER)
            response = case.call_and_validate(headers=owner, checks=CHECKS)
            statuses.setdefault(case.path, set()).add(response.status_code)
            for secret in SECRET_VALUES:
                assert secret not in response.text, (case.path, response.status_code)
            if case.path.endswith("/attest") and response.status_code == 200:
                assert guest is not None
                payload = guest.decrypt(response.json()["payload"])
                assert SECRET_VALUES[0] in str(payload)

        run()
    assert 200 in statuses["/v1/vm/{uuid}/attest/challenge"], statuses
    assert 200 in statuses["/v1/vm/{uuid}/attest"], statuses


# include lone surrogates: valid JSON escapes that are not valid UTF-8
chars = st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(chars, max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "scheme",
        "policy",
        "cpu-count",
        "firmware-hashes",
        "kernel-hash",
        "cmdline",
        "secrets",
        "launch-digests",
        "max-launches",
        "cloud-cert",
        "user-id",
        "vcpu-types",
        "pdh",
        "cert-chain",
        "cpu-id",
        "cek",
        "launch-id",
        "api-major",
        "api-minor",
        "build-id",
        "measurement",
        "firmware-hash",
        "type",
        "passphrase",
        "generate",
        "name",
        "device",
        "values",
        "guid",
        "data",
    ]
) | st.text(max_size=10)
secrets_entries = st.fixed_dictionaries(
    {"type": st.sampled_from(["luks-passphrase", "volume", "env", "secret-file", "raw", "x"])},
    optional={
        "passphrase": json_values,
        "name": json_values,
        "device": json_values,
        "generate": json_values,
        "values": json_values,
        "guid": json_values,
        "data": json_values,
        "mount-point": json_values,
    },
)
bodies = st.dictionaries(keys, json_values | st.lists(secrets_entries, max_size=3), max_size=10)


@given(
    body=bodies,
    target=st.sampled_from(["", "/launch", "/validate"]),
    method=st.sampled_from(["post", "put"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_hypothesis_bodies_never_500(
    fuzz_app: tuple[Flask, dict[str, str]], body: dict[str, Any], target: str, method: str
) -> None:
    app, owner = fuzz_app
    client = app.test_client()
    if target and method == "put":
        method = "post"
    resp = getattr(client, method)(f"/v1/vm/{VM}{target}", json=body, headers=owner)
    assert resp.status_code < 500, resp.json
    assert set(resp.json) >= ({"code", "message", "errors"} if resp.status_code >= 400 else set())


@given(raw=st.binary(max_size=300))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_hypothesis_raw_bytes_never_500(fuzz_app: tuple[Flask, dict[str, str]], raw: bytes) -> None:
    app, owner = fuzz_app
    client = app.test_client()
    for path in (f"/v1/vm/{VM}", f"/v1/vm/{VM}/launch", f"/v1/vm/{VM}/validate"):
        resp = client.post(path, data=raw, headers=owner, content_type="application/json")
        assert resp.status_code < 500


@given(
    pdh=st.binary(min_size=0x824, max_size=0x824),
    chain=st.binary(min_size=3 * 0x824, max_size=3 * 0x824),
)
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_certificates_never_500(
    fuzz_app: tuple[Flask, dict[str, str]], pdh: bytes, chain: bytes
) -> None:
    app, _owner = fuzz_app
    body = {
        "pdh": base64.b64encode(pdh).decode(),
        "cert-chain": base64.b64encode(chain).decode(),
        "cek": base64.b64encode(pdh).decode(),
    }
    resp = app.test_client().post(f"/v1/vm/{VM}/launch", json=body)
    assert resp.status_code in (400, 403, 422, 503), resp.json


def test_pathological_json_is_a_client_error(fuzz_app: tuple[Flask, dict[str, str]]) -> None:
    app, owner = fuzz_app
    client = app.test_client()
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in the JSON parser
        b'{"scheme":"amd-sev","policy":1,"firmware-hashes":["'
        + b"ab" * 32
        + b'"],"secrets":[{"type":"env","name":"x","values":{"A":"\\ud800"}}]}',  # lone surrogate
        b'{"scheme":"amd-sev","policy":NaN}',
        b'{"scheme":"amd-sev","policy":1e400}',
    ]
    for body in bodies:
        for path in (f"/v1/vm/{VM}", f"/v1/vm/{VM}/validate"):
            resp = client.post(path, data=body, headers=owner, content_type="application/json")
            assert 400 <= resp.status_code < 500, (body[:60], resp.json)
