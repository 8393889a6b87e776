"""SEV-SNP attestation and the certificate checks at the service's clock: validity dates,
and the ARK's CRL (imported into the VCEK store's directory) on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd.api import create_app
from attestd.config import Settings
from attestd.sev.snp.certs import SnpCertificate
from attestd.sim.snp import SnpPlatform
from tests.servicefix import Clock, make_owner
from tests.snpfix import (
    SECRET_VALUES,
    SNP_VM,
    Guest,
    attest_body,
    challenge,
    crl_store,
    import_crl,
    snp_registration,
)


@pytest.fixture
def make_app(snp_settings: Settings, clock: Clock) -> Iterator[Any]:
    apps: list[Flask] = []

    def build(**changes: Any) -> Flask:
        application = create_app(snp_settings.replace(**changes), clock=clock)
        apps.append(application)
        return application

    yield build
    for application in apps:
        application.extensions["attestd"].store.dispose()


def _attest(
    app: Flask, platform: SnpPlatform, digest: bytes
) -> tuple[FlaskClient, dict[str, str], Any]:
    client = app.test_client()
    owner = make_owner(app, "alice")
    resp = client.post(f"/v1/vm/{SNP_VM}", json=snp_registration(digest), headers=owner)
    assert resp.status_code == 201, resp.json
    guest = Guest()
    answer = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(platform, guest, challenge(client), digest)
    )
    return client, owner, answer


def _event(client: FlaskClient, owner: dict[str, str]) -> dict[str, Any]:
    events = client.get(f"/v1/vm/{SNP_VM}/events", headers=owner).json["events"]
    (event,) = [e for e in events if e["kind"] == "attest"]
    assert isinstance(event, dict)
    return event


def _forget_crl(settings: Settings, platform: SnpPlatform) -> None:
    """Remove the CRL ``snp_settings`` imported: no CRL is available."""
    crl_store(settings).path_for(platform.anchor()).unlink()


def test_without_a_crl_nothing_is_released_by_default(
    make_app: Any, snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    """``snp_require_crl`` is on by default: no current CRL of the ARK, no release."""
    _forget_crl(snp_settings, snp_platform)
    client, owner, resp = _attest(make_app(), snp_platform, digest)
    assert resp.status_code == 403, resp.json
    assert resp.json["errors"]["reasons"][0].startswith("crl_missing")
    for value in SECRET_VALUES:
        assert value not in resp.get_data(as_text=True)
    assert _event(client, owner)["outcome"] == "refused"


def test_without_a_crl_the_opt_out_releases_and_says_revocation_was_not_checked(
    make_app: Any,
    snp_settings: Settings,
    snp_platform: SnpPlatform,
    digest: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _forget_crl(snp_settings, snp_platform)
    with caplog.at_level(logging.WARNING, logger="attestd.api"):
        app = make_app(snp_require_crl=False)
    assert any("snp_require_crl = false" in r.getMessage() for r in caplog.records)
    client, owner, resp = _attest(app, snp_platform, digest)
    assert resp.status_code == 200, resp.json
    event = _event(client, owner)
    assert event["outcome"] == "released"
    assert event["detail"]["revocation"] == "no-crl"
    assert any("NOT checked" in link for link in event["detail"]["links"])
    assert "revocation not checked" in caplog.text


def test_a_fresh_crl_is_checked(
    make_app: Any, snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    import_crl(snp_settings, snp_platform)
    client, owner, resp = _attest(make_app(), snp_platform, digest)
    assert resp.status_code == 200, resp.json
    assert _event(client, owner)["detail"]["revocation"] == "checked"


def test_a_revoked_ask_releases_nothing(
    make_app: Any, snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    import_crl(snp_settings, snp_platform, snp_platform.crl(revoke=("ask",)))
    client, owner, resp = _attest(make_app(), snp_platform, digest)
    assert resp.status_code == 403, resp.json
    assert resp.json["errors"]["reasons"][0].startswith("certificate_revoked: the sim-snp ASK")
    for value in SECRET_VALUES:
        assert value not in resp.get_data(as_text=True)
    event = _event(client, owner)
    assert event["outcome"] == "refused" and "certificate_revoked" in str(event["detail"])


def test_a_stale_crl_is_no_current_crl(
    make_app: Any, snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    _forget_crl(snp_settings, snp_platform)
    client, _owner, resp = _attest(make_app(), snp_platform, digest)
    assert resp.status_code == 403 and "crl_missing" in resp.json["errors"]["reasons"][0]
    stale = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    import_crl(
        snp_settings, snp_platform, snp_platform.crl(this_update=stale - datetime.timedelta(30))
    )
    guest = Guest()
    again = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(snp_platform, guest, challenge(client), digest)
    )
    assert again.status_code == 403 and "not current" in again.json["errors"]["reasons"][0]


def test_certificates_are_checked_at_the_services_clock(
    make_app: Any, clock: Clock, snp_platform: SnpPlatform, digest: bytes
) -> None:
    """The service's clock past the simulated VCEK's notAfter: refused, nothing released."""
    vcek = SnpCertificate.from_der(snp_platform.vcek)
    clock.now = (vcek.not_after + datetime.timedelta(days=1)).timestamp()
    client, owner, resp = _attest(make_app(), snp_platform, digest)
    assert resp.status_code == 403, resp.json
    assert resp.json["errors"]["reasons"][0].startswith("certificate_expired")
    assert _event(client, owner)["outcome"] == "refused"
