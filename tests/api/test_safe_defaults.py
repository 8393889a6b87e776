"""Safe by default (issue 10): host tokens required and scoped, owner-only files,
/healthz says what is unsafe or unwritable, 405 carries ``Allow``, the digest cache
and a PUT racing a validate."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import (
    VM,
    Boot,
    b64,
    es_boot,
    launch_body,
    measure,
    run_launch,
    sev,
    sev_es,
    validate_body,
)
from tests.servicefix import make_owner

OTHER_VM = "0b1e8c52-7d4a-4f3e-9a61-2c5d8e7f9a10"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def strict_app(host_settings: Settings) -> Iterator[Flask]:
    """The service with the default ``require_host_token`` (the fixture's opt-out undone)."""
    app = create_app(host_settings.replace(require_host_token=Settings().require_host_token))
    yield app
    app.extensions["attestd"].store.dispose()


def _host(app: Flask, name: str, owner: str | None = None) -> dict[str, str]:
    token = app.extensions["attestd"].services.principals.create_host(name, owner=owner)
    return {"Authorization": f"Bearer {token}"}


# -- host tokens -------------------------------------------------------------------------


def test_host_token_required_by_default(
    strict_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = strict_app.test_client()
    owner = make_owner(strict_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    anonymous = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert anonymous.status_code == 401
    assert anonymous.json["errors"]["reason"] == "unauthenticated"
    assert client.get("/healthz").json == {"status": "ok", "host_tokens": "required"}
    host = _host(strict_app, "node-1")
    assert run_launch(client, platform, VM, Boot(firmware=ovmf), headers=host).released


def test_development_opt_out_is_visible(
    host_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="attestd.api"):
        app = create_app(host_settings.replace(require_host_token=False))
    try:
        assert any("require_host_token = false" in r.getMessage() for r in caplog.records)
        health = app.test_client().get("/healthz").json
        assert health == {"status": "ok", "host_tokens": "not required"}
    finally:
        app.extensions["attestd"].store.dispose()


def test_owner_scoped_host_token_launches_only_that_owners_vms(
    strict_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = strict_app.test_client()
    alice, bob = make_owner(strict_app, "alice"), make_owner(strict_app, "bob")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=alice).status_code == 201
    assert client.post(f"/v1/vm/{OTHER_VM}", json=sev(ovmf), headers=bob).status_code == 201
    alice_host = _host(strict_app, "alice-node", owner="alice")

    assert run_launch(client, platform, VM, Boot(firmware=ovmf), headers=alice_host).released
    foreign = client.post(
        f"/v1/vm/{OTHER_VM}/launch", json=launch_body(platform), headers=alice_host
    )
    unknown = client.post(
        "/v1/vm/11111111-2222-4333-8444-555555555555/launch",
        json=launch_body(platform),
        headers=alice_host,
    )
    # bob's VM looks exactly like one nobody registered
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json["errors"]["reason"] == unknown.json["errors"]["reason"]
    assert foreign.json["errors"]["reasons"] == unknown.json["errors"]["reasons"]

    # a launch bob's own host started cannot be validated with alice's host token
    bob_host = _host(strict_app, "bob-node", owner="bob")
    grant = client.post(f"/v1/vm/{OTHER_VM}/launch", json=launch_body(platform), headers=bob_host)
    assert grant.status_code == 200
    _handle, measurement = measure(platform, grant.json, Boot(firmware=ovmf))
    body = validate_body(platform, grant.json, measurement, Boot(firmware=ovmf))
    stolen = client.post(f"/v1/vm/{OTHER_VM}/validate", json=body, headers=alice_host)
    assert stolen.status_code == 404 and "secret-table" not in stolen.json
    mine = client.post(f"/v1/vm/{OTHER_VM}/validate", json=body, headers=bob_host)
    assert mine.status_code == 200


def test_host_create_owner_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from attestd import cli

    monkeypatch.setenv("ATTESTD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ATTESTD_DATABASE_URL", raising=False)
    monkeypatch.delenv("ATTESTD_CONFIG", raising=False)
    assert cli.main(["owner", "create", "alice"]) == 0
    capsys.readouterr()
    assert cli.main(["host", "create", "node-a", "--owner", "alice"]) == 0
    out = capsys.readouterr().out
    assert "for owner alice" in out
    token = out.strip().splitlines()[-1]
    assert cli.main(["host", "create", "node-x", "--owner", "nobody"]) == 1
    assert "no owner 'nobody'" in capsys.readouterr().err
    assert cli.main(["host", "create", "node-any"]) == 0
    assert "EVERY owner" in capsys.readouterr().out

    app = create_app(Settings(data_dir=tmp_path))
    try:
        principals = app.extensions["attestd"].services.principals
        host = principals.authenticate_host(token)
        assert host is not None and host.name == "node-a" and host.owner_id is not None
    finally:
        app.extensions["attestd"].store.dispose()


# -- owner-only files --------------------------------------------------------------------


def test_service_creates_data_dir_0700_and_database_0600(
    tmp_path: Path, platform: SimulatedPlatform, anchors_dir: Path, ovmf: bytes
) -> None:
    data = tmp_path / "fresh" / "data"
    old = os.umask(0o022)
    try:
        app = create_app(Settings(data_dir=data, kds_offline=True, trust_anchors_dir=anchors_dir))
    finally:
        os.umask(old)
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
        assert _mode(data) == 0o700
        files = sorted(p.name for p in data.iterdir() if p.is_file())
        assert "attestd.sqlite3" in files and "attestd.sqlite3-wal" in files, files
        for name in files:
            assert _mode(data / name) == 0o600, name
    finally:
        app.extensions["attestd"].store.dispose()


# -- /healthz ----------------------------------------------------------------------------


def test_healthz_unhealthy_on_read_only_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    app = create_app(Settings(data_dir=data, kds_offline=True))
    assert app.test_client().get("/healthz").status_code == 200
    app.extensions["attestd"].store.dispose()
    # a database the service can read but not write (mode=ro holds for root too)
    url = f"sqlite:///file:{data / 'attestd.sqlite3'}?mode=ro&uri=true"
    ro = create_app(Settings(data_dir=data, database_url=url, kds_offline=True, auto_migrate=False))
    try:
        with caplog.at_level(logging.ERROR):
            resp = ro.test_client().get("/healthz")
        assert resp.status_code == 503, resp.json
        assert resp.json["message"] == "the database is not writable: the database is read-only"
        assert any("read-only" in r.getMessage() for r in caplog.records)
    finally:
        ro.extensions["attestd"].store.dispose()


def test_healthz_unhealthy_on_full_disk(small_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = small_fs / "data"
    app = create_app(Settings(data_dir=data, kds_offline=True))
    try:
        filler = small_fs / "filler"
        with filler.open("wb") as handle, pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        with caplog.at_level(logging.ERROR):
            resp = app.test_client().get("/healthz")
        assert resp.status_code == 503, resp.json
        assert resp.json["message"] == "the database is not writable: the disk is full"
        assert any("disk is full" in r.getMessage() for r in caplog.records)
        filler.unlink()
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions["attestd"].store.dispose()


# -- contract ----------------------------------------------------------------------------


def test_405_carries_allow(client: FlaskClient) -> None:
    resp = client.patch(f"/v1/vm/{VM}")
    assert resp.status_code == 405
    assert resp.json["errors"]["reason"] == "method_not_allowed"
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert {"GET", "PUT", "DELETE", "POST"} <= allowed
    launch = client.get(f"/v1/vm/{VM}/launch")
    assert launch.status_code == 405 and "POST" in launch.headers["Allow"]


# -- the digest cache is per owner -------------------------------------------------------


def test_digest_cache_does_not_cross_owners(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    """Alice's upload and validate leave nothing bob's registration can use or probe."""
    client = host_app.test_client()
    alice, bob = make_owner(host_app, "alice"), make_owner(host_app, "bob")
    up = client.post(
        "/v1/firmware", data=ovmf, headers=alice, content_type="application/octet-stream"
    )
    assert up.status_code == 201
    assert client.post(f"/v1/vm/{VM}", json=sev_es(ovmf), headers=alice).status_code == 201
    assert run_launch(client, platform, VM, es_boot(ovmf)).released  # digest now cached

    assert client.post(f"/v1/vm/{OTHER_VM}", json=sev_es(ovmf), headers=bob).status_code == 201
    refused = run_launch(client, platform, OTHER_VM, es_boot(ovmf))
    assert refused.validate.status_code == 403, refused.validate.json
    assert any("not uploaded" in r for r in refused.validate.json["errors"]["reasons"])


# -- a PUT or DELETE that commits while a validate runs wins -----------------------------


class _RacingClock:
    """The service clock; on the ``at``-th call after :meth:`arm` it runs ``action``
    once, in the validating request, between two of its storage transactions."""

    def __init__(self) -> None:
        import time

        self._time = time.time
        self.calls = 0
        self.at = 0
        self.action: Any = None

    def arm(self, at: int, action: Any) -> None:
        self.calls, self.at, self.action = 0, at, action

    def __call__(self) -> float:
        self.calls += 1
        if self.action is not None and self.calls == self.at:
            action, self.action = self.action, None
            action()
        return self._time()


@pytest.mark.parametrize("change", ["put", "delete"])
def test_put_or_delete_during_validate_wins(
    host_settings: Settings, platform: SimulatedPlatform, ovmf: bytes, change: str
) -> None:
    clock = _RacingClock()
    app = create_app(host_settings, clock=clock)
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
        grant = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
        _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
        body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
        side = app.test_client()
        answers: list[int] = []

        def commit_change() -> None:
            if change == "put":
                resp = side.put(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner)
            else:
                resp = side.delete(f"/v1/vm/{VM}", headers=owner)
            answers.append(resp.status_code)

        # validate's clock calls: claim, start of checks, the final release: the change
        # commits after every check passed and before the release is written
        clock.arm(3, commit_change)
        resp = client.post(f"/v1/vm/{VM}/validate", json=body)
        assert answers and answers[0] in (200, 204), answers
        assert resp.status_code == 409, resp.json
        assert resp.json["errors"]["reason"] == "registration_changed"
        assert "secret-table" not in resp.json
    finally:
        app.extensions["attestd"].store.dispose()


# -- the PDH fingerprint covers signed bytes only ----------------------------------------


def test_pdh_fingerprint_ignores_bytes_no_signature_covers(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    from attestd.sev.certs import SevCertificate

    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    pdh = platform.export().pdh
    cert = SevCertificate.unpack(pdh)
    unused = next(i for i, slot in enumerate(cert.signatures) if slot.is_empty)
    offset = SevCertificate.BODY_SIZE + unused * 520 + 8 + 100  # inside the unused slot
    flipped = bytearray(pdh)
    flipped[offset] ^= 0xFF
    for body in (launch_body(platform), launch_body(platform, pdh=b64(bytes(flipped)))):
        assert client.post(f"/v1/vm/{VM}/launch", json=body).status_code == 200
    events = client.get(f"/v1/vm/{VM}/events", headers=owner).json["events"]
    prints = {e["detail"]["pdh_sha256"] for e in events if e["kind"] == "launch"}
    assert prints == {cert.fingerprint}


def test_openapi_states_the_base64_limits_the_server_enforces(
    client: FlaskClient, platform: SimulatedPlatform
) -> None:
    from attestd.api.openapi import build_spec

    pdh = build_spec()["components"]["schemas"]["LaunchRequest"]["properties"]["pdh"]
    assert pdh["minLength"] == 1 and "exactly 2084 bytes" in pdh["description"]
    assert len(launch_body(platform)["pdh"]) <= pdh["maxLength"]
    for text in ("", "AAAA", "A" * (pdh["maxLength"] + 1)):
        resp = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform, pdh=text))
        assert resp.status_code == 422, (len(text), resp.json)
        assert "pdh" in resp.json["errors"]["fields"]
    assert "429" in build_spec()["paths"]["/v1/vm/{uuid}/launch"]["post"]["responses"]


def test_validate_does_not_tell_registered_from_unregistered_vms(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    grant = {"launch-id": "x" * 32, "policy": 1}
    body = validate_body(platform, grant, b"\0" * 48, Boot(firmware=ovmf))
    registered = client.post(f"/v1/vm/{VM}/validate", json=body)
    unregistered = client.post(f"/v1/vm/{OTHER_VM}/validate", json=body)
    assert registered.status_code == unregistered.status_code == 404
    assert registered.json == unregistered.json
