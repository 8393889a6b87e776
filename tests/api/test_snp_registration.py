"""``POST``/``PUT``/``GET /v1/vm/<uuid>`` with ``"scheme": "amd-sev-snp"``."""

from __future__ import annotations

import json

from flask import Flask

from tests.conftest import PROJECT_ROOT
from tests.servicefix import make_owner
from tests.snpfix import SECRET_VALUES, SNP_VM, snp_registration

DIGEST = bytes(range(48))


def test_register_show_and_replace(app: Flask) -> None:
    client = app.test_client()
    owner = make_owner(app, "alice")
    body = snp_registration(
        DIGEST,
        policy="0x30000",
        **{
            "min-tcb": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
            "host-data": "ab" * 32,
            "signing-keys": ["vcek"],
            "min-firmware": {"major": 1, "minor": 55, "build": 0},
        },
    )
    resp = client.post(f"/v1/vm/{SNP_VM}", json=body, headers=owner)
    assert resp.status_code == 201, resp.json
    shown = client.get(f"/v1/vm/{SNP_VM}", headers=owner)
    reg = shown.json["registration"]
    assert reg["scheme"] == "amd-sev-snp" and reg["policy"] == 0x30000
    assert reg["launch-digests"] == [DIGEST.hex()] and reg["vmpl"] == 0
    assert reg["min-tcb"] == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    for value in SECRET_VALUES:
        assert value not in shown.get_data(as_text=True)
    listed = client.get("/v1/vm", headers=owner).json["vms"]
    assert listed[0]["scheme"] == "amd-sev-snp"
    resp = client.put(f"/v1/vm/{SNP_VM}", json=snp_registration(DIGEST, vmpl=2), headers=owner)
    assert resp.status_code == 200 and resp.json["registration"]["vmpl"] == 2


def test_invalid_snp_registrations_name_every_reason(app: Flask) -> None:
    client = app.test_client()
    owner = make_owner(app, "alice")
    body = snp_registration(
        DIGEST,
        policy=0x10000,
        secrets=[
            {"type": "luks-passphrase", "passphrase": "grub"},
            {"type": "raw", "guid": "9b9f4d1e-5d6a-4c5e-8a8b-1c2d3e4f5a6b", "data": "AA=="},
        ],
    )
    resp = client.post(f"/v1/vm/{SNP_VM}", json=body, headers=owner)
    assert resp.status_code == 422, resp.json
    assert sorted(resp.json["errors"]["reasons"]) == [
        "policy_bit17_clear",
        "secret_type_not_for_snp",
        "secret_type_not_for_snp",
    ]
    for bad in (
        {"launch-digests": ["ab" * 32]},  # a SEV-sized digest
        {"policy": 1 << 64},
        {"vmpl": 4},
        {"min-tcb": {"bootloader": 1}},
        {"signing-keys": ["ask"]},
        {"cloud-cert": "AA=="},  # SEV-only field
    ):
        resp = client.post(f"/v1/vm/{SNP_VM}", json=snp_registration(DIGEST, **bad), headers=owner)
        assert resp.status_code == 422, (bad, resp.json)
        assert resp.json["errors"]["reason"] == "invalid_request"


def test_the_example_registration_is_accepted(app: Flask) -> None:
    body = json.loads((PROJECT_ROOT / "examples" / "service" / "registration-snp.json").read_text())
    resp = app.test_client().post(f"/v1/vm/{SNP_VM}", json=body, headers=make_owner(app, "ex"))
    assert resp.status_code == 201, resp.json
    shown = resp.json["registration"]["secrets"]
    assert {"type": "secret-file", "name": "credentials.env", "keys": ["DB_PASSWORD"]} in shown
    assert all("values" not in entry and "passphrase" not in entry for entry in shown)
