"""The secret-area boundary, secret changes during a launch, firmware and
host-token isolation, and no secret value in any owner-visible response or log."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

import pytest
from flask import Flask

from attestd.api import create_app
from attestd.config import Settings
from attestd.sev.secrets import ATTESTD_PAYLOAD_GUID
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import Boot, b64, launch_body, measure, run_launch, validate_body
from tests.servicefix import make_owner

VM = "3d1f0a9e-7c2b-4e8d-9f61-0a2b4c6d8e10"
RAW_GUID = "0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10"
# header (16-byte GUID + u32 length) and one entry header each: 20 bytes
PAYLOAD_U = b'{"version":1,"user_id":"u","volumes":{}}'


def _raw_registration(ovmf: bytes, size: int) -> dict[str, Any]:
    return {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": [hashlib.sha256(ovmf).hexdigest()],
        "user-id": "u",
        "secrets": [{"type": "raw", "guid": RAW_GUID, "data": b64(b"\xa5" * size)}],
    }


def _table_size(raw: int) -> int:
    """Size of the table attestd must build: computed here from the EFI layout, padded to 16."""
    total = 20 + (20 + len(PAYLOAD_U)) + (20 + raw)
    return -(-total // 16) * 16


def test_secret_area_boundary_is_exactly_3072(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    fits = max(n for n in range(2800, 3100) if _table_size(n) <= 3072)
    assert _table_size(fits) == 3072 and _table_size(fits + 1) == 3088
    over = client.post(f"/v1/vm/{VM}", json=_raw_registration(ovmf, fits + 1), headers=owner)
    assert over.status_code == 413 and over.json["errors"]["reason"] == "secret_too_large"
    assert client.get(f"/v1/vm/{VM}", headers=owner).status_code == 404
    ok = client.post(f"/v1/vm/{VM}", json=_raw_registration(ovmf, fits), headers=owner)
    assert ok.status_code == 201, ok.json
    outcome = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert outcome.released, outcome.validate.json
    assert len(base64.b64decode(outcome.validate.json["secret-table"])) == 3072
    assert [str(e.guid) for e in outcome.table] == [str(ATTESTD_PAYLOAD_GUID), RAW_GUID]
    assert outcome.table[0].data == PAYLOAD_U
    assert outcome.table[1].data == b"\xa5" * fits


def test_secret_area_limit_is_configurable(settings: Settings, ovmf: bytes) -> None:
    app = create_app(settings.replace(secret_area_size=4096))
    client = app.test_client()
    owner = make_owner(app, "alice")
    body = _raw_registration(ovmf, 3500)
    assert client.post(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 201
    app.extensions["attestd"].store.dispose()
    small = create_app(settings.replace(secret_area_size=1024))
    client = small.test_client()
    owner = make_owner(small, "bob")
    other = VM.replace("3d1f", "4e20")
    resp = client.post(f"/v1/vm/{other}", json=_raw_registration(ovmf, 1000), headers=owner)
    assert resp.status_code == 413
    assert (
        client.post(f"/v1/vm/{other}", json=_raw_registration(ovmf, 900), headers=owner).status_code
        == 201
    )
    small.extensions["attestd"].store.dispose()


def _secrets(db_password: str) -> list[dict[str, Any]]:
    return [
        {"type": "luks-passphrase", "passphrase": "grub-pass-AUDIT"},
        {"type": "volume", "name": "data", "device": "virtio:data", "generate": True},
        {"type": "secret-file", "name": "db.env", "values": {"DB_PASSWORD": db_password}},
    ]


def _sev(ovmf: bytes, db_password: str) -> dict[str, Any]:
    return {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": [hashlib.sha256(ovmf).hexdigest()],
        "secrets": _secrets(db_password),
    }


def _db_password(outcome: Any) -> str:
    entry = next(e for e in outcome.table if e.guid == ATTESTD_PAYLOAD_GUID)
    value = json.loads(entry.data)["secret"]["db.env"]["DB_PASSWORD"]
    assert isinstance(value, str)
    return value


def test_put_changing_secrets_mid_launch_releases_neither_old_nor_new(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert (
        client.post(f"/v1/vm/{VM}", json=_sev(ovmf, "old-pw-AUDIT"), headers=owner).status_code
        == 201
    )
    grant = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    put = client.put(f"/v1/vm/{VM}", json=_sev(ovmf, "new-pw-AUDIT"), headers=owner)
    assert put.status_code == 200
    resp = client.post(
        f"/v1/vm/{VM}/validate",
        json=validate_body(platform, grant, measurement, Boot(firmware=ovmf)),
    )
    assert resp.status_code == 409 and "secret-table" not in resp.json
    assert resp.json["errors"]["reason"] == "registration_changed"
    db = host_app.extensions["attestd"].store
    assert db.launch(grant["launch-id"]).keys_enc is None
    nxt = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert nxt.released and _db_password(nxt) == "new-pw-AUDIT"


def test_firmware_of_another_owner_is_not_usable(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    """Bob's upload of the same image does not give alice's SEV-ES registration its digest."""
    from tests.api.simhost import es_boot, sev_es

    client = host_app.test_client()
    alice, bob = make_owner(host_app, "alice"), make_owner(host_app, "bob")
    up = client.post(
        "/v1/firmware", data=ovmf, headers=bob, content_type="application/octet-stream"
    )
    assert up.status_code == 201
    assert client.post(f"/v1/vm/{VM}", json=sev_es(ovmf), headers=alice).status_code == 201
    refused = run_launch(client, platform, VM, es_boot(ovmf))
    assert refused.validate.status_code == 403
    assert any("not uploaded" in r for r in refused.validate.json["errors"]["reasons"])
    mine = client.post(
        "/v1/firmware", data=ovmf, headers=alice, content_type="application/octet-stream"
    )
    assert mine.status_code == 201 and mine.json["created"] is True
    assert run_launch(client, platform, VM, es_boot(ovmf)).released


def test_host_token_required_on_validate_too(
    host_settings: Settings, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    app = create_app(host_settings.replace(require_host_token=True))
    client = app.test_client()
    owner = make_owner(app, "alice")
    principals = app.extensions["attestd"].services.principals
    host = {"Authorization": f"Bearer {principals.create_host('n1')}"}
    assert client.post(f"/v1/vm/{VM}", json=_sev(ovmf, "pw"), headers=owner).status_code == 201
    grant = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform), headers=host).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
    for headers in ({}, owner, {"Authorization": "Bearer ath_forged"}):
        resp = client.post(f"/v1/vm/{VM}/validate", json=body, headers=headers)
        assert resp.status_code == 401 and "secret-table" not in resp.json
    assert client.post(f"/v1/vm/{VM}/validate", json=body, headers=host).status_code == 200
    app.extensions["attestd"].store.dispose()


def test_no_secret_in_any_owner_response_or_log(
    host_app: Flask,
    platform: SimulatedPlatform,
    ovmf: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    texts: list[str] = []

    def keep(resp: Any) -> Any:
        texts.append(resp.get_data(as_text=True))
        return resp

    keep(client.post(f"/v1/vm/{VM}", json=_sev(ovmf, "pw-one-AUDIT"), headers=owner))
    ok = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert ok.released
    generated = json.loads(ok.table[0].data)["volumes"]["data"]["passphrase"]
    bad = run_launch(client, platform, VM, Boot(firmware=ovmf), report={"policy": 3})
    assert not bad.released
    keep(bad.validate)
    keep(client.put(f"/v1/vm/{VM}", json=_sev(ovmf, "pw-two-AUDIT"), headers=owner))
    again = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert json.loads(again.table[0].data)["volumes"]["data"]["passphrase"] == generated
    keep(client.get(f"/v1/vm/{VM}", headers=owner))
    keep(client.get("/v1/vm", headers=owner))
    keep(client.get(f"/v1/vm/{VM}/events", headers=owner))
    keep(client.get(f"/v1/vm/{VM}/events?limit=1&after=2", headers=owner))
    keep(client.get("/metrics"))
    keep(client.delete(f"/v1/vm/{VM}", headers=owner))
    keep(client.get(f"/v1/vm/{VM}/events", headers=owner))
    shown = "\n".join(texts)
    assert "released" in shown and "grub-pass-AUDIT" not in shown
    for secret in (generated, "pw-one-AUDIT", "pw-two-AUDIT", "grub-pass-AUDIT"):
        assert secret not in shown
        assert secret not in caplog.text
        assert base64.b64encode(secret.encode()).decode()[:16] not in shown


def test_put_committed_while_validate_runs_releases_no_old_secret(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT that commits after /validate read the VM but before it claimed the launch."""
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert (
        client.post(f"/v1/vm/{VM}", json=_sev(ovmf, "old-pw-AUDIT"), headers=owner).status_code
        == 201
    )
    grant = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    state = host_app.extensions["attestd"]
    db = state.store
    real_claim = db.claim_launch
    put_done: list[int] = []

    def claim_after_a_put(
        uuid: str, launch_id: str, now: float, lease: float = 60.0, **kw: Any
    ) -> Any:
        put = client.put(f"/v1/vm/{VM}", json=_sev(ovmf, "new-pw-AUDIT"), headers=owner)
        put_done.append(put.status_code)
        return real_claim(uuid, launch_id, now, lease, **kw)

    monkeypatch.setattr(db, "claim_launch", claim_after_a_put)
    resp = client.post(
        f"/v1/vm/{VM}/validate",
        json=validate_body(platform, grant, measurement, Boot(firmware=ovmf)),
    )
    assert put_done == [200]
    assert resp.status_code == 409, "the old registration's secret was released after the PUT"
    assert resp.json["errors"]["reason"] == "registration_changed"
    assert "secret-table" not in resp.json


def test_each_launch_gets_fresh_godh_tek_tik(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    from attestd.sev.session import TransportKeys

    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=_sev(ovmf, "pw"), headers=owner).status_code == 201
    grants = [client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json for _ in range(3)]
    state = host_app.extensions["attestd"]
    keys = [
        TransportKeys.from_bytes(
            state.services.keyring.decrypt(state.store.launch(g["launch-id"]).keys_enc)
        )
        for g in grants
    ]
    for field in ("launch-id", "owner-cert", "session"):
        assert len({g[field] for g in grants}) == 3, field
    assert len({k.tek for k in keys}) == 3 and len({k.tik for k in keys}) == 3
    assert all(g["policy"] == 1 for g in grants)
