"""End to end with ``attestd.sim`` as the platform, and every way a launch must fail."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd.service.registration import Volume
from attestd.sev.certs import SevCertificate
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VmsaFlavour
from attestd.sev.secrets import ATTESTD_PAYLOAD_GUID, LUKS_KEY_GUID
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import (
    CMDLINE,
    INITRD,
    KERNEL,
    RAW_GUID,
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
from tests.servicefix import Clock, make_owner


@pytest.fixture
def owner(host_app: Flask) -> dict[str, str]:
    return make_owner(host_app, "alice")


@pytest.fixture
def hclient(host_app: Flask) -> FlaskClient:
    return host_app.test_client()


def _register(client: FlaskClient, owner: dict[str, str], body: dict[str, Any]) -> None:
    resp = client.post(f"/v1/vm/{VM}", json=body, headers=owner)
    assert resp.status_code == 201, resp.json


def _payload(table: list[Any]) -> dict[str, Any]:
    entry = next(e for e in table if e.guid == ATTESTD_PAYLOAD_GUID)
    value = json.loads(entry.data)
    assert isinstance(value, dict)
    return value


def test_sev_end_to_end(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(hclient, owner, sev(ovmf))
    first = run_launch(hclient, platform, VM, Boot(firmware=ovmf))
    assert first.launch.status_code == 200, first.launch.json
    assert first.released, first.validate.json
    guids = [str(e.guid) for e in first.table]
    assert guids == [str(ATTESTD_PAYLOAD_GUID), str(LUKS_KEY_GUID), RAW_GUID]
    payload = _payload(first.table)
    passphrase = payload["volumes"]["data"].pop("passphrase")
    assert len(passphrase) >= 40
    assert payload == {
        "version": 1,
        "user_id": "owner-42",
        "env": {"app.env": {"APP_MODE": "production"}},
        "secret": {"credentials.env": {"DB_PASSWORD": "s3cret"}},
        "volumes": {"data": {"device": "virtio:data-disk", "mount_point": "/data"}},
    }
    assert first.table[1].data == b"grub-root-pass\x00"
    from attestd.guest.payload import parse_payload

    parsed = parse_payload(first.table[0].data)  # the guest agent accepts it
    assert parsed.user_id == "owner-42" and parsed.volumes["data"].mount_point == "/data"
    assert first.table[2].data == b"raw-secret"

    second = run_launch(hclient, platform, VM, Boot(firmware=ovmf))
    assert second.released
    assert _payload(second.table)["volumes"]["data"]["passphrase"] == passphrase

    events = hclient.get(f"/v1/vm/{VM}/events", headers=owner).json["events"]
    assert [(e["kind"], e["outcome"]) for e in events] == [
        ("registered", None),
        ("launch", "started"),
        ("validate", "released"),
        ("launch", "started"),
        ("validate", "released"),
    ]
    launch_event = events[1]["detail"]
    assert launch_event["chip_id"] == platform.export().chip_id.hex()
    assert launch_event["pdh_sha256"] == SevCertificate.unpack(platform.export().pdh).fingerprint
    text = json.dumps(events)
    for secret in (passphrase, "grub-root-pass", "s3cret", "production"):
        assert secret not in text
    shown = json.dumps(hclient.get(f"/v1/vm/{VM}", headers=owner).json)
    assert passphrase not in shown


def test_sev_es_kernel_hashes_end_to_end(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    up = hclient.post(
        "/v1/firmware", data=ovmf, headers=owner, content_type="application/octet-stream"
    )
    assert up.status_code == 201
    _register(hclient, owner, sev_es(ovmf))
    outcome = run_launch(hclient, platform, VM, es_boot(ovmf))
    assert outcome.released, outcome.validate.json
    assert _payload(outcome.table)["user_id"] == "owner-42"
    # the host need not name the vCPU type: every accepted one is tried
    again = run_launch(
        hclient, platform, VM, es_boot(ovmf, vcpu_type="EPYC-v4"), report={"vcpu-type": None}
    )
    assert again.released


def _tamper(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


# case -> (registration, boot, launch override, validate override, status, reason)
NEGATIVE: dict[str, tuple[Any, Any, Any, Any, int, str]] = {
    "wrong firmware": (
        sev,
        lambda o: Boot(firmware=_tamper(o, 0x1000)),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "unaccepted firmware hash": (
        sev,
        lambda o: Boot(firmware=o),
        None,
        {"firmware-hash": "00" * 32},
        403,
        "measurement_mismatch",
    ),
    "wrong kernel": (
        sev_es,
        lambda o: es_boot(o, hashes=KernelHashes.from_content(b"evil", INITRD, CMDLINE)),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "wrong initrd": (
        sev_es,
        lambda o: es_boot(o, hashes=KernelHashes.from_content(KERNEL, b"evil", CMDLINE)),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "wrong cmdline": (
        sev_es,
        lambda o: es_boot(o, hashes=KernelHashes.from_content(KERNEL, INITRD, "init=/bin/sh")),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "wrong vcpu count": (
        sev_es,
        lambda o: es_boot(o, vcpus=3),
        None,
        {"cpu-count": 2},
        403,
        "measurement_mismatch",
    ),
    "reported vcpu count": (
        sev_es,
        lambda o: es_boot(o, vcpus=3),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "wrong vcpu type": (
        sev_es,
        lambda o: es_boot(o, vcpu_type="EPYC-Rome"),
        None,
        {"vcpu-type": "EPYC-v4"},
        403,
        "measurement_mismatch",
    ),
    "unaccepted vcpu type": (
        sev_es,
        lambda o: es_boot(o, vcpu_type="EPYC-Rome"),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "wrong vmsa flavour": (
        sev_es,
        lambda o: es_boot(o, flavour=VmsaFlavour.LEGACY),
        None,
        None,
        403,
        "measurement_mismatch",
    ),
    "policy changed": (
        sev,
        lambda o: Boot(firmware=o),
        None,
        {"policy": 3},
        403,
        "policy_violation",
    ),
    "debug policy bit": (
        sev,
        lambda o: Boot(firmware=o),
        None,
        {"policy": 0},
        403,
        "policy_violation",
    ),
    "old firmware api": (
        lambda o: sev(o, **{"min-api-major": 1, "min-api-minor": 56}),
        lambda o: Boot(firmware=o),
        None,
        None,
        403,
        "policy_violation",
    ),
    "old firmware build": (
        lambda o: sev(o, **{"min-build-id": 22}),
        lambda o: Boot(firmware=o),
        None,
        None,
        403,
        "policy_violation",
    ),
    "lying about firmware version": (
        sev,
        lambda o: Boot(firmware=o),
        None,
        {"api-minor": 56},
        403,
        "measurement_mismatch",
    ),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_validate_refusals_release_nothing(
    case: str, hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    register, boot, launch, report, status, reason = NEGATIVE[case]
    hclient.post("/v1/firmware", data=ovmf, headers=owner, content_type="application/octet-stream")
    _register(hclient, owner, register(ovmf))
    outcome = run_launch(hclient, platform, VM, boot(ovmf), launch=launch, report=report)
    assert outcome.launch.status_code == 200, outcome.launch.json
    assert outcome.validate.status_code == status, outcome.validate.json
    body = outcome.validate.json
    assert body["errors"]["reason"] == reason
    assert "secret-table" not in body and "secret-header" not in body
    events = hclient.get(f"/v1/vm/{VM}/events", headers=owner).json["events"]
    assert (events[-1]["kind"], events[-1]["outcome"]) == ("validate", "refused")
    assert events[-1]["detail"]["tried"], "the reason says what was tried"
    text = json.dumps(events) + json.dumps(body)
    assert "grub-root-pass" not in text and "s3cret" not in text


def test_launch_refusals(
    hclient: FlaskClient,
    owner: dict[str, str],
    platform: SimulatedPlatform,
    rogue_platform: SimulatedPlatform,
    ovmf: bytes,
) -> None:
    exp = platform.export()
    _register(hclient, owner, sev(ovmf))
    cases = {
        "tampered chain": launch_body(
            platform, **{"cert-chain": b64(_tamper(exp.cert_chain, 0x500))}
        ),
        "tampered pdh": launch_body(platform, pdh=b64(_tamper(exp.pdh, 0x500))),
        "untrusted root": launch_body(rogue_platform),
        "chain of another platform's CEK": launch_body(
            platform, cek=b64(rogue_platform.export().signed_cek)
        ),
    }
    for name, body in cases.items():
        resp = hclient.post(f"/v1/vm/{VM}/launch", json=body)
        assert resp.status_code == 403, (name, resp.json)
        assert resp.json["errors"]["reason"] == "chain_invalid", name
        assert "session" not in resp.json
    garbage = launch_body(platform, pdh=b64(b"\x00" * 0x824))
    assert hclient.post(f"/v1/vm/{VM}/launch", json=garbage).status_code in (400, 403)
    no_cek = launch_body(platform, cek=None)
    resp = hclient.post(f"/v1/vm/{VM}/launch", json=no_cek)
    assert resp.status_code == 422 and resp.json["errors"]["reason"] == "cek_required"
    events = hclient.get(f"/v1/vm/{VM}/events", headers=owner).json["events"]
    assert [e["outcome"] for e in events[1:]] == ["refused"] * 6


def test_pinned_oca(
    hclient: FlaskClient,
    owner: dict[str, str],
    platform: SimulatedPlatform,
    rogue_platform: SimulatedPlatform,
    ovmf: bytes,
) -> None:
    other_oca = rogue_platform.export().cert_chain[0x824:0x1048]
    _register(hclient, owner, sev(ovmf, **{"cloud-cert": b64(other_oca)}))
    resp = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert resp.status_code == 403 and resp.json["errors"]["reason"] == "chain_invalid"
    right_oca = platform.export().cert_chain[0x824:0x1048]
    body = sev(ovmf, **{"cloud-cert": b64(right_oca)})
    assert hclient.put(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 200
    assert run_launch(hclient, platform, VM, Boot(firmware=ovmf)).released


def test_replay_expiry_budget(
    hclient: FlaskClient,
    owner: dict[str, str],
    clock: Clock,
    platform: SimulatedPlatform,
    ovmf: bytes,
) -> None:
    _register(hclient, owner, sev(ovmf, **{"max-launches": 3}))
    grant = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
    assert hclient.post(f"/v1/vm/{VM}/validate", json=body).status_code == 200
    replay = hclient.post(f"/v1/vm/{VM}/validate", json=body)
    assert replay.status_code == 409 and "secret-table" not in replay.json

    grant = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
    clock.now += 601
    expired = hclient.post(f"/v1/vm/{VM}/validate", json=body)
    assert expired.status_code == 409 and "expired" in expired.json["message"]
    assert hclient.post(f"/v1/vm/{VM}/validate", json=body).status_code == 409

    unknown = dict(body, **{"launch-id": "A" * 32})
    assert hclient.post(f"/v1/vm/{VM}/validate", json=unknown).status_code == 404

    assert hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).status_code == 200
    exhausted = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert exhausted.status_code == 409
    assert exhausted.json["errors"]["reason"] == "conflict"


def test_launch_of_other_vm_id_is_unknown(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(hclient, owner, sev(ovmf))
    other = "11111111-2222-4333-8444-555555555555"
    assert hclient.post(f"/v1/vm/{other}", json=sev(ovmf), headers=owner).status_code == 201
    grant = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
    assert hclient.post(f"/v1/vm/{other}/validate", json=body).status_code == 404
    assert hclient.post(f"/v1/vm/{VM}/validate", json=body).status_code == 200


def test_registration_change_invalidates_pending_launch(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(hclient, owner, sev(ovmf))
    grant = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    assert hclient.put(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 200
    body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
    resp = hclient.post(f"/v1/vm/{VM}/validate", json=body)
    assert resp.status_code == 409 and resp.json["errors"]["reason"] == "registration_changed"


def test_host_tokens(host_settings: Any, platform: SimulatedPlatform, ovmf: bytes) -> None:
    from attestd.api import create_app

    app = create_app(host_settings.replace(require_host_token=True))
    client = app.test_client()
    owner = make_owner(app, "alice")
    host = app.extensions["attestd"].services.principals.create_host("node-1")
    _register(client, owner, sev(ovmf))
    assert client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).status_code == 401
    assert (
        client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform), headers=owner).status_code
        == 401
    )
    outcome = run_launch(
        client, platform, VM, Boot(firmware=ovmf), headers={"Authorization": f"Bearer {host}"}
    )
    assert outcome.released
    app.extensions["attestd"].store.dispose()


def test_es_without_uploaded_firmware_says_so(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(hclient, owner, sev_es(ovmf))
    outcome = run_launch(hclient, platform, VM, es_boot(ovmf))
    assert outcome.validate.status_code == 403
    assert any("not uploaded" in r for r in outcome.validate.json["errors"]["reasons"])


def test_secret_matches_registration_table_exactly(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    body = sev(ovmf, secrets=[], **{"user-id": "u"})
    _register(hclient, owner, body)
    outcome = run_launch(hclient, platform, VM, Boot(firmware=ovmf))
    assert outcome.released
    assert [e.guid for e in outcome.table] == [ATTESTD_PAYLOAD_GUID]
    assert outcome.table[0].data == b'{"version":1,"user_id":"u","volumes":{}}'
    header = base64.b64decode(outcome.validate.json["secret-header"])
    assert len(header) == 52


def test_nothing_secret_in_logs_and_keys_deleted(
    host_app: Flask,
    hclient: FlaskClient,
    owner: dict[str, str],
    platform: SimulatedPlatform,
    ovmf: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from attestd.sev.session import TransportKeys

    caplog.set_level(logging.DEBUG)
    _register(hclient, owner, sev(ovmf))
    grant = hclient.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
    state = host_app.extensions["attestd"]
    record = state.store.launch(grant["launch-id"])
    keys = TransportKeys.from_bytes(state.services.keyring.decrypt(record.keys_enc))
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
    released = hclient.post(f"/v1/vm/{VM}/validate", json=body)
    assert released.status_code == 200
    assert state.store.launch(grant["launch-id"]).keys_enc is None
    stored = state.services.vms.stored_secrets(state.store.sole_vm(VM))
    generated = next(s.passphrase for s in stored if isinstance(s, Volume) and s.generate)
    assert "secret released" in caplog.text  # the log is really captured
    for value in (
        keys.tek.hex(),
        keys.tik.hex(),
        repr(keys.tek),
        repr(keys.tik),
        generated,
        "grub-root-pass",
        "s3cret",
        owner["Authorization"].split()[1],
        released.json["secret-table"],
    ):
        assert value not in caplog.text


def test_signed_cek_from_the_cek_store(
    host_app: Flask,
    hclient: FlaskClient,
    owner: dict[str, str],
    platform: SimulatedPlatform,
    ovmf: bytes,
) -> None:
    from attestd.trust.kds import CekStore

    _register(hclient, owner, sev(ovmf))
    exp = platform.export()
    settings = host_app.extensions["attestd"].settings
    body = launch_body(platform, cek=None)
    assert hclient.post(f"/v1/vm/{VM}/launch", json=body).status_code == 422
    CekStore(settings.effective_cek_cache_dir, offline=True).put(exp.chip_id, exp.signed_cek)
    outcome = run_launch(hclient, platform, VM, Boot(firmware=ovmf), launch=body)
    assert outcome.released, outcome.launch.json


def test_precomputed_digest_and_legacy_flavour(
    hclient: FlaskClient, owner: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    from attestd.sev.measure.digest import launch_digest

    boot = es_boot(ovmf, flavour=VmsaFlavour.LEGACY)
    digest = launch_digest(
        "seves",
        ovmf,
        hashes=boot.hashes,
        vcpus=2,
        vcpu_type="EPYC-Milan",
        flavour=VmsaFlavour.LEGACY,
    )
    body = sev_es(ovmf, **{"firmware-hashes": [], "launch-digests": [digest.hex()]})
    _register(hclient, owner, body)  # no firmware upload needed
    outcome = run_launch(hclient, platform, VM, boot, report={"firmware-hash": None})
    assert outcome.released, outcome.validate.json
    # the same boot against computed candidates needs the legacy flavour accepted
    body = sev_es(ovmf, **{"vmsa-flavours": ["current", "legacy"]})
    assert hclient.put(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 200
    hclient.post("/v1/firmware", data=ovmf, headers=owner, content_type="application/octet-stream")
    assert run_launch(hclient, platform, VM, boot).released
