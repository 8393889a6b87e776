"""Shared SEV-SNP fixtures and helpers of the service suites (not a test module).

A software SNP platform (``attestd.sim.snp``) whose anchor is in the service's trust
anchors directory, a guest key (jwcrypto), and the requests a guest makes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jwcrypto import jwe, jwk

from attestd.api import create_app
from attestd.config import Settings
from attestd.guest import initdata
from attestd.service.clock import Clock
from attestd.sev.snp.report import SigningKey
from attestd.sev.snp.verify import report_data_binding
from attestd.sim.snp import ReportRequest, SnpPlatform
from attestd.trust.crl import CrlStore

SNP_VM = "6f1c2b7e-3c1a-4d8e-9a51-0c2b9d1f7e11"
OTHER_VM = "0a2d9c4b-8e6f-4b21-a3c7-5d9e1f0b2c33"
SNP_POLICY = 0x30000
SECRETS: list[dict[str, Any]] = [
    {"type": "volume", "name": "data", "device": "/dev/vdb", "passphrase": "pass-of-data"},
    {"type": "env", "name": "app", "values": {"MODE": "prod"}},
    {"type": "secret-file", "name": "api", "values": {"TOKEN": "s3cr3t-token"}},
]
SECRET_VALUES = ("pass-of-data", "s3cr3t-token")
#: The owner of the VM :func:`snp_fuzz_app` registers.
FUZZ_OWNER = "fuzzer"
#: The service as SNP guests reach it, and the key pin they trust it by (initdata).
PUBLIC_URLS = ("https://attestd.example/v1",)
GUEST_PIN = initdata.format_pin(hashlib.sha256(b"the test service's key").digest())


def owner_urls(owner: str = "alice") -> tuple[str, ...]:
    """The service URLs in owner ``owner``'s initdata: its base URLs on ``PUBLIC_URLS``."""
    return tuple(url.removesuffix("/v1") + f"/owners/{owner}/v1" for url in PUBLIC_URLS)


def expected_initdata(uuid: str = SNP_VM, owner: str = "alice") -> bytes:
    """The initdata the service makes for owner ``owner``'s ``uuid`` with the settings
    of ``snp_settings``, built here from the same inputs with the guest's own builder."""
    from uuid import UUID

    return initdata.build(owner_urls(owner), UUID(uuid), pin=GUEST_PIN)


def vm_host_data(uuid: str = SNP_VM, owner: str = "alice") -> bytes:
    """SHA-256 of :func:`expected_initdata`: the HOST_DATA the service expects."""
    return hashlib.sha256(expected_initdata(uuid, owner)).digest()


@pytest.fixture(scope="session")
def snp_platform() -> SnpPlatform:
    """The trusted simulated SNP platform (Milan, with a VLEK too)."""
    return SnpPlatform.create(name="sim-snp", vlek=True)


@pytest.fixture(scope="session")
def snp_anchors_dir(tmp_path_factory: pytest.TempPathFactory, snp_platform: SnpPlatform) -> Path:
    """ATTESTD_TRUST_ANCHORS_DIR holding the simulated SNP platform's anchor."""
    directory = tmp_path_factory.mktemp("snp-anchors")
    snp_platform.write_anchor(directory)
    return directory


def crl_store(settings: Settings) -> CrlStore:
    """The offline CRL store of ``settings``' cache (where the service looks)."""
    return CrlStore.from_settings(settings, offline=True)


def import_crl(settings: Settings, platform: SnpPlatform, crl: bytes | None = None) -> None:
    """Import ``crl`` (by default a current one of ``platform``'s ARK, revoking nothing)
    into the CRL cache of ``settings``, as ``attestd snp crl import`` does."""
    crl_store(settings).import_crl(platform.crl() if crl is None else crl, [platform.anchor()])


@pytest.fixture
def snp_settings(settings: Settings, snp_anchors_dir: Path, snp_platform: SnpPlatform) -> Settings:
    """Settings that trust the simulated SNP platform and make initdata for SNP VMs, with
    a current CRL of the platform's ARK imported (``snp_require_crl`` is on by default).
    No per-VM request rate: the suites make many requests per VM at once; the rate's own
    tests start from the default."""
    configured = settings.replace(
        trust_anchors_dir=snp_anchors_dir,
        public_urls=PUBLIC_URLS,
        guest_pin=GUEST_PIN,
        attest_vm_rate=0,
    )
    import_crl(configured, snp_platform)
    return configured


@pytest.fixture
def snp_app(snp_settings: Settings, clock: Clock) -> Iterator[Flask]:
    """An app that trusts the SNP simulator, with a settable clock."""
    application = create_app(snp_settings, clock=clock)
    yield application
    application.extensions["attestd"].store.dispose()


@pytest.fixture(scope="module")
def digest(ovmf: bytes) -> bytes:
    """The SNP launch digest of a guest started with the test OVMF alone."""
    return measurement(ovmf)


@pytest.fixture
def owner(snp_app: Flask) -> dict[str, str]:
    """Authorization header of owner alice of ``snp_app``."""
    from tests.servicefix import make_owner

    return make_owner(snp_app, "alice")


def register(
    client: FlaskClient, owner: dict[str, str], body: dict[str, Any], uuid: str = SNP_VM
) -> None:
    """Register ``body`` as VM ``uuid`` (201 expected)."""
    resp = client.post(f"/v1/vm/{uuid}", json=body, headers=owner)
    assert resp.status_code == 201, resp.json


def snp_fuzz_app(
    data_dir: Path, anchors_dir: Path, digest: bytes, platform: SnpPlatform
) -> tuple[Flask, dict[str, str]]:
    """An app for the fuzz suites (no challenge cap in practice, no rate limit,
    ``platform``'s CRL imported) with SNP VM ``SNP_VM`` registered by owner
    :data:`FUZZ_OWNER` accepting ``digest``; the owner's header."""
    from tests.servicefix import make_owner

    settings = Settings(
        data_dir=data_dir,
        kds_offline=True,
        trust_anchors_dir=anchors_dir,
        attest_max_challenges=10_000,
        attest_vm_rate=0,
        public_urls=PUBLIC_URLS,
        guest_pin=GUEST_PIN,
    )
    import_crl(settings, platform)
    app = create_app(settings)
    owner = make_owner(app, FUZZ_OWNER)
    resp = app.test_client().post(f"/v1/vm/{SNP_VM}", json=snp_registration(digest), headers=owner)
    assert resp.status_code == 201, resp.json
    return app, owner


def measurement(ovmf: bytes, **inputs: Any) -> bytes:
    """The SNP launch digest of a guest started with OVMF and ``inputs``."""
    return SnpPlatform.measure(ovmf, **inputs)


def snp_registration(digest: bytes, **extra: Any) -> dict[str, Any]:
    """A valid SNP registration accepting ``digest``."""
    body: dict[str, Any] = {
        "scheme": "amd-sev-snp",
        "policy": SNP_POLICY,
        "launch-digests": [digest.hex()],
        "secrets": SECRETS,
    }
    body.update(extra)
    return body


class Guest:
    """A guest's key pair (EC P-384) and what it sends."""

    def __init__(self) -> None:
        self.key = jwk.JWK.generate(kty="EC", crv="P-384")
        public = self.key.export_public(as_dict=True)
        self.public = {k: public[k] for k in ("kty", "crv", "x", "y")}

    def decrypt(self, token: str) -> dict[str, Any]:
        """The plaintext payload document of a JWE."""
        message = jwe.JWE()
        message.deserialize(token, key=self.key)
        header = message.jose_header
        assert header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256GCM"
        value = json.loads(message.payload)
        assert isinstance(value, dict)
        return value


def attest_body(
    platform: SnpPlatform,
    guest: Guest,
    nonce: str,
    digest: bytes,
    *,
    bind_nonce: str | None = None,
    bind_key: dict[str, str] | None = None,
    with_vcek: bool = True,
    vm: str = SNP_VM,
    owner: str = "alice",
    **request: Any,
) -> dict[str, Any]:
    """A guest's ``/attest`` body: a report signed by ``platform`` binding nonce and key,
    with the HOST_DATA of owner ``owner``'s ``vm``'s initdata unless ``host_data`` is
    given."""
    request.setdefault("host_data", vm_host_data(vm, owner))
    report_data = report_data_binding(bind_nonce or nonce, bind_key or guest.public)
    signing_key = request.get("signing_key", SigningKey.VCEK)
    report = platform.report(ReportRequest(report_data=report_data, measurement=digest, **request))
    body: dict[str, Any] = {
        "nonce": nonce,
        "tee-pubkey": guest.public,
        "report": base64.b64encode(report).decode(),
    }
    if with_vcek:
        body["vcek"] = base64.b64encode(platform.leaf(signing_key)).decode()
    return body


def challenge(client: FlaskClient, uuid: str = SNP_VM, base: str = "/v1") -> str:
    """A fresh nonce for ``uuid`` (at base URL ``base``)."""
    resp = client.post(f"{base}/vm/{uuid}/attest/challenge")
    assert resp.status_code == 200, resp.json
    nonce = resp.json["nonce"]
    assert isinstance(nonce, str)
    return nonce


def refused_by_registration(
    client: FlaskClient,
    owner: dict[str, str],
    resp: Any,
    code: str,
    uuid: str = SNP_VM,
) -> None:
    """``resp`` is a refusal by the registration as the guest (no token) sees it: 403
    ``not_accepted``, nothing of the registration, no payload; the VM's newest attest
    event, which only its owner reads, names ``code``."""
    assert resp.status_code == 403, resp.json
    assert resp.json["errors"] == {"reason": "policy_violation", "reasons": ["not_accepted"]}
    assert "payload" not in resp.json
    seen = client.get(f"/v1/vm/{uuid}/events", headers=owner).json["events"]
    failed = [e for e in seen if e["kind"] == "attest"][-1]["detail"]["failed"]
    assert any(r.startswith(code) for r in failed), failed


def other_chip(platform: SnpPlatform, **changes: Any) -> SnpPlatform:
    """The same platform with some fields changed (e.g. another chip id, another TCB)."""
    return replace(platform, **changes)


__all__ = ["digest", "owner", "snp_anchors_dir", "snp_app", "snp_platform", "snp_settings"]
