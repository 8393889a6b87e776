"""Registration, listing, deletion, owner isolation, secret-area limit."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd.service.registration import Volume
from tests.servicefix import sev_registration

VM = "57f669c2-c427-4132-bc7a-26f56b6a718c"


def _secrets() -> list[dict[str, Any]]:
    return [
        {"type": "luks-passphrase", "passphrase": "grub-unlocks-root"},
        {
            "type": "volume",
            "name": "data",
            "device": "virtio:data-disk",
            "generate": True,
            "mount-point": "/data",
        },
        {"type": "volume", "name": "logs", "device": "/dev/vdc", "passphrase": "logs-pass-1"},
        {"type": "env", "name": "app.env", "values": {"APP_MODE": "production"}},
        {"type": "secret-file", "name": "credentials.env", "values": {"DB_PASSWORD": "s3cret-db"}},
        {"type": "raw", "guid": "0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10", "data": "cmF3LXNlY3JldA=="},
    ]


def test_register_get_list_delete(client: FlaskClient, alice: dict[str, str]) -> None:
    body = sev_registration(secrets=_secrets(), **{"user-id": "owner-42", "max-launches": 3})
    created = client.post(f"/v1/vm/{VM}", json=body, headers=alice)
    assert created.status_code == 201, created.json
    assert created.json["uuid"] == VM
    assert created.json["revision"] == 1

    shown = client.get(f"/v1/vm/{VM}", headers=alice)
    assert shown.status_code == 200
    text = json.dumps(shown.json)
    for secret in ("grub-unlocks-root", "logs-pass-1", "production", "s3cret-db", "cmF3LXNlY3JldA"):
        assert secret not in text
    reg = shown.json["registration"]
    assert reg["policy"] == 1 and reg["max-launches"] == 3 and reg["user-id"] == "owner-42"
    kinds = [s["type"] for s in reg["secrets"]]
    assert kinds == ["luks-passphrase", "volume", "volume", "env", "secret-file", "raw"]
    assert reg["secrets"][1] == {
        "type": "volume",
        "name": "data",
        "device": "virtio:data-disk",
        "mount-point": "/data",
        "generate": True,
    }
    assert reg["secrets"][3]["keys"] == ["APP_MODE"]

    listed = client.get("/v1/vm", headers=alice)
    assert [vm["uuid"] for vm in listed.json["vms"]] == [VM]

    assert client.delete(f"/v1/vm/{VM}", headers=alice).status_code == 204
    assert client.get(f"/v1/vm/{VM}", headers=alice).status_code == 404
    assert client.get("/v1/vm", headers=alice).json["vms"] == []
    kinds = [e["kind"] for e in client.get(f"/v1/vm/{VM}/events", headers=alice).json["events"]]
    assert kinds == ["registered", "deleted"]


def test_hex_policy_and_uppercase_uuid(client: FlaskClient, alice: dict[str, str]) -> None:
    resp = client.post(f"/v1/vm/{VM.upper()}", json=sev_registration(policy="0x3"), headers=alice)
    assert resp.status_code == 201
    assert resp.json["uuid"] == VM
    assert resp.json["registration"]["policy"] == 3


def test_duplicate_registration_conflicts(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    assert client.post(f"/v1/vm/{VM}", json=sev_registration(), headers=alice).status_code == 201
    again = client.post(f"/v1/vm/{VM}", json=sev_registration(), headers=alice)
    assert again.status_code == 409
    assert again.json["errors"]["reason"] == "conflict"
    # bob has his own UUID namespace: alice's registration neither blocks nor shows
    assert client.post(f"/v1/vm/{VM}", json=sev_registration(), headers=bob).status_code == 201


def test_owner_isolation(client: FlaskClient, alice: dict[str, str], bob: dict[str, str]) -> None:
    assert client.post(f"/v1/vm/{VM}", json=sev_registration(), headers=alice).status_code == 201
    assert client.get(f"/v1/vm/{VM}", headers=bob).status_code == 404
    assert (
        client.put(f"/v1/vm/{VM}", json=sev_registration(policy=3), headers=bob).status_code == 404
    )
    assert client.delete(f"/v1/vm/{VM}", headers=bob).status_code == 404
    assert client.get(f"/v1/vm/{VM}/events", headers=bob).status_code == 404
    assert client.get("/v1/vm", headers=bob).json["vms"] == []
    assert client.get(f"/v1/vm/{VM}", headers=alice).json["registration"]["policy"] == 1


def test_authentication_required(client: FlaskClient) -> None:
    for headers in ({}, {"Authorization": "Bearer ato_nope"}, {"Authorization": "Basic eDp5"}):
        resp = client.get("/v1/vm", headers=headers)
        assert resp.status_code == 401
        assert resp.json["errors"]["reason"] == "unauthenticated"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_put_replaces_and_keeps_generated(
    app: Flask, client: FlaskClient, alice: dict[str, str]
) -> None:
    body = sev_registration(secrets=_secrets())
    assert client.post(f"/v1/vm/{VM}", json=body, headers=alice).status_code == 201
    services = app.extensions["attestd"].services
    first = services.vms.stored_secrets(services.store.sole_vm(VM))
    body["policy"] = 3
    body["secrets"] = body["secrets"][1:2]
    replaced = client.put(f"/v1/vm/{VM}", json=body, headers=alice)
    assert replaced.status_code == 200 and replaced.json["revision"] == 2
    second = services.vms.stored_secrets(services.store.sole_vm(VM))
    assert len(second) == 1
    assert isinstance(first[1], Volume) and isinstance(second[0], Volume)
    assert second[0].passphrase == first[1].passphrase
    assert second[0].passphrase is not None and len(second[0].passphrase) >= 40
    assert client.put(f"/v1/vm/{VM.replace('5', '6')}", json=body, headers=alice).status_code == 404


def test_secret_area_limit(app: Flask, client: FlaskClient, alice: dict[str, str]) -> None:
    many = {f"K{i}": "v" * 200 for i in range(20)}
    body = sev_registration(secrets=[{"type": "secret-file", "name": "big", "values": many}])
    resp = client.post(f"/v1/vm/{VM}", json=body, headers=alice)
    assert resp.status_code == 413
    assert resp.json["errors"]["reason"] == "secret_too_large"
    assert client.get(f"/v1/vm/{VM}", headers=alice).status_code == 404
    small = sev_registration(secrets=[{"type": "secret-file", "name": "ok", "values": {"K": "v"}}])
    assert client.post(f"/v1/vm/{VM}", json=small, headers=alice).status_code == 201


def _vol(**entry: Any) -> dict[str, Any]:
    return {"type": "volume", "name": "d", "device": "virtio:x", "generate": True, **entry}


def _raw(guid: str, data: str = "AA==") -> dict[str, Any]:
    return {"type": "raw", "guid": guid, "data": data}


LUKS_GUID_TEXT = "736869e5-84f0-4973-92ec-06879ce3da0b"
RAW_GUID = "0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10"

#: (id, body, the path of the field error in ``errors.fields``, the machine code of a
#: registration rule in ``errors.reasons`` or None for a shape error of the schema)
INVALID: list[tuple[str, dict[str, Any], tuple[str, ...], str | None]] = [
    ("unknown scheme", sev_registration(scheme="intel-tdx"), ("scheme",), None),
    ("ES bit on plain SEV", sev_registration(policy=4), ("policy",), "es_bit_mismatch"),
    (
        "SEV-ES without the ES bit",
        {**sev_registration(scheme="amd-sev-es"), "policy": 1},
        ("policy",),
        "es_bit_mismatch",
    ),
    ("reserved policy bit", sev_registration(policy=0x40), ("policy",), None),
    ("policy not a number", sev_registration(policy="zz"), ("policy",), None),
    ("policy a boolean", sev_registration(policy=True), ("policy",), None),
    (
        "upper-case firmware hash",
        sev_registration(**{"firmware-hashes": ["AB" * 32]}),
        ("firmware-hashes", "0"),
        None,
    ),
    (
        "no firmware and no digest",
        sev_registration(**{"firmware-hashes": []}),
        ("firmware-hashes",),
        "no_launch_inputs",
    ),
    (
        "initrd without kernel",
        sev_registration(**{"initrd-hash": "00" * 32}),
        ("initrd-hash",),
        "needs_kernel_hash",
    ),
    ("zero vCPUs", sev_registration(**{"cpu-count": 0}), ("cpu-count",), None),
    ("cloud-cert too short", sev_registration(**{"cloud-cert": "AAAA"}), ("cloud-cert",), None),
    (
        "cloud-cert not a certificate",
        sev_registration(**{"cloud-cert": base64.b64encode(b"\x01" * 0x824).decode()}),
        ("cloud-cert",),
        "cloud_cert_malformed",
    ),
    ("unknown field", sev_registration(unknown=1), ("unknown",), None),
    (
        "volume without passphrase or generate",
        sev_registration(secrets=[{"type": "volume", "name": "data", "device": "virtio:x"}]),
        ("secrets", "0", "passphrase"),
        "passphrase_or_generate",
    ),
    (
        "upper-case volume name",
        sev_registration(secrets=[_vol(name="Data")]),
        ("secrets", "0", "name"),
        None,
    ),
    (
        "device outside /dev",
        sev_registration(secrets=[_vol(device="/etc/passwd")]),
        ("secrets", "0", "device"),
        None,
    ),
    (
        "dots in the mount point",
        sev_registration(secrets=[_vol(**{"mount-point": "/a/../b"})]),
        ("secrets", "0", "mount-point"),
        "mount_point_dots",
    ),
    (
        "env file name with a path",
        sev_registration(secrets=[{"type": "env", "name": "../x", "values": {}}]),
        ("secrets", "0", "name"),
        None,
    ),
    (
        "mount over a system directory",
        sev_registration(secrets=[_vol(name="home")]),
        ("secrets", "0", "mount-point"),
        "mount_point_reserved",
    ),
    (
        "dots in the device",
        sev_registration(secrets=[_vol(device="/dev/../etc/x")]),
        ("secrets", "0", "device"),
        "device_dots",
    ),
    (
        "two volumes on one device",
        sev_registration(secrets=[_vol(name="a"), _vol(name="b")]),
        ("secrets",),
        "duplicate_device",
    ),
    (
        "overlapping mount points",
        sev_registration(
            secrets=[
                _vol(name="a", **{"mount-point": "/data"}),
                _vol(name="b", device="virtio:y", **{"mount-point": "/data/b"}),
            ]
        ),
        ("secrets",),
        "mounts_overlap",
    ),
    (
        "env value with a newline",
        sev_registration(secrets=[{"type": "env", "name": "x", "values": {"A": "a\nb"}}]),
        ("secrets", "0", "values"),
        None,
    ),
    (
        "env key not an identifier",
        sev_registration(secrets=[{"type": "env", "name": "x", "values": {"1A": "a"}}]),
        ("secrets", "0", "values"),
        None,
    ),
    (
        "reserved raw GUID",
        sev_registration(secrets=[_raw(LUKS_GUID_TEXT)]),
        ("secrets", "0", "guid"),
        "guid_reserved",
    ),
    (
        "raw GUID not a GUID",
        sev_registration(secrets=[_raw("not-a-guid")]),
        ("secrets", "0", "guid"),
        None,
    ),
    (
        "raw data not base64",
        sev_registration(secrets=[_raw(RAW_GUID, "%%%")]),
        ("secrets", "0", "data"),
        None,
    ),
    (
        "unknown secret type",
        sev_registration(secrets=[{"type": "nope"}]),
        ("secrets", "0", "type"),
        None,
    ),
    ("secret not an object", sev_registration(secrets=["x"]), ("secrets", "0"), None),
    (
        "two LUKS passphrases",
        sev_registration(secrets=[{"type": "luks-passphrase", "passphrase": "a"}] * 2),
        ("secrets",),
        "luks_passphrase_twice",
    ),
]


@pytest.mark.parametrize(
    ("body", "path", "code"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_registration_names_its_field(
    client: FlaskClient,
    alice: dict[str, str],
    body: dict[str, Any],
    path: tuple[str, ...],
    code: str | None,
) -> None:
    resp = client.post(f"/v1/vm/{VM}", json=body, headers=alice)
    assert resp.status_code == 422, resp.json
    errors = resp.json["errors"]
    assert errors["reason"] == "invalid_request"
    node: Any = errors["fields"]
    for part in path:
        assert isinstance(node, dict) and part in node, (path, errors["fields"])
        node = node[part]
    assert node, errors["fields"]
    if code is not None:
        assert code in errors["reasons"], errors
    assert client.get(f"/v1/vm/{VM}", headers=alice).status_code == 404


def test_invalid_requests(client: FlaskClient, alice: dict[str, str]) -> None:
    assert (
        client.post("/v1/vm/not-a-uuid", json=sev_registration(), headers=alice).status_code == 422
    )
    for raw in (b"{", b"[]", b"null", b"\xff"):
        resp = client.post(f"/v1/vm/{VM}", data=raw, headers=alice, content_type="application/json")
        assert resp.status_code == 400, raw
        assert resp.json["errors"]["reason"] == "malformed_input"
    assert client.get("/v1/vm", headers=alice).json["vms"] == []


def test_firmware_upload_is_content_addressed(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    import hashlib

    image = b"\x90" * 4096
    first = client.post(
        "/v1/firmware", data=image, headers=alice, content_type="application/octet-stream"
    )
    assert first.status_code == 201
    assert first.json == {
        "sha256": hashlib.sha256(image).hexdigest(),
        "size": 4096,
        "created": True,
    }
    again = client.post(
        "/v1/firmware", data=image, headers=alice, content_type="application/octet-stream"
    )
    assert again.status_code == 200 and again.json["created"] is False
    assert (
        client.post(
            "/v1/firmware", data=image, headers=bob, content_type="application/octet-stream"
        ).status_code
        == 201
    )
    assert client.post("/v1/firmware", data=b"", headers=alice).status_code == 400
    assert client.post("/v1/firmware", data=image).status_code == 401


def test_examples_are_valid(tmp_path: Any) -> None:
    from attestd import config
    from attestd.api.schemas import RegistrationSchema
    from tests.conftest import PROJECT_ROOT

    examples = PROJECT_ROOT / "examples" / "service"
    for name in ("registration-sev.json", "registration-sev-es.json"):
        loaded = RegistrationSchema().load(json.loads((examples / name).read_text()))
        assert loaded.scheme in ("amd-sev", "amd-sev-es")
    settings = config.load(examples / "attestd.toml", environ={})
    assert settings.require_host_token is True and settings.secret_area_size == 3072


def test_reserved_mount_points_match_the_guest() -> None:
    from attestd.guest.payload import RESERVED_MOUNT_POINTS as GUEST
    from attestd.service.registration import RESERVED_MOUNT_POINTS

    assert RESERVED_MOUNT_POINTS == GUEST


def test_uploaded_firmware_secret_area_limits_the_table(
    app: Flask, client: FlaskClient, alice: dict[str, str], testdata: Any
) -> None:
    import hashlib

    ovmf = (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()  # 3072-byte secret area
    services = app.extensions["attestd"].services
    services.configure(services.settings.replace(secret_area_size=8192))
    values = {f"K{i}": "v" * 200 for i in range(20)}  # ~4.3 KB of payload
    body = sev_registration(
        **{"firmware-hashes": [hashlib.sha256(ovmf).hexdigest()]},
        secrets=[{"type": "secret-file", "name": "big", "values": values}],
    )
    assert client.post(f"/v1/vm/{VM}", json=body, headers=alice).status_code == 201
    assert client.delete(f"/v1/vm/{VM}", headers=alice).status_code == 204
    assert (
        client.post(
            "/v1/firmware", data=ovmf, headers=alice, content_type="application/octet-stream"
        ).status_code
        == 201
    )
    refused = client.post(f"/v1/vm/{VM}", json=body, headers=alice)
    assert refused.status_code == 413, refused.json
