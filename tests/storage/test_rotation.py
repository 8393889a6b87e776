"""``attestd keys rotate`` under a running service (it must keep working)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from flask import Flask

from attestd import cli
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import Boot, run_launch
from tests.servicefix import make_owner

VM = "5e2a7c10-3b4d-4f6e-8a9b-0c1d2e3f4a5b"


def _body(ovmf: bytes, password: str) -> dict[str, Any]:
    return {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": [hashlib.sha256(ovmf).hexdigest()],
        "secrets": [
            {"type": "volume", "name": "data", "device": "virtio:data", "generate": True},
            {"type": "secret-file", "name": "db.env", "values": {"PW": password}},
        ],
    }


def test_running_service_survives_key_rotation(
    host_app: Flask,
    host_settings: Settings,
    platform: SimulatedPlatform,
    ovmf: bytes,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=_body(ovmf, "one"), headers=owner).status_code == 201
    first = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert first.released
    monkeypatch.setenv("ATTESTD_DATA_DIR", str(host_settings.data_dir))
    monkeypatch.setenv("ATTESTD_DATABASE_URL", host_settings.effective_database_url)
    monkeypatch.setenv("ATTESTD_CONFIG", "")
    key_file = host_settings.effective_storage_key_file

    assert cli.main(["keys", "rotate"]) == 0  # old key kept, every value re-encrypted
    assert len(key_file.read_text().split()) == 2
    second = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert second.released, second.validate.json
    assert second.table[0].data == first.table[0].data  # same generated passphrase

    assert cli.main(["keys", "rotate", "--retire"]) == 0
    assert len(key_file.read_text().split()) == 1
    put = client.put(f"/v1/vm/{VM}", json=_body(ovmf, "two"), headers=owner)
    assert put.status_code == 200, put.json
    third = run_launch(client, platform, VM, Boot(firmware=ovmf))
    assert third.released, third.validate.json
    assert b'"PW":"two"' in third.table[0].data
    capsys.readouterr()

    # what the running service wrote after the rotation is under the current key
    from attestd.storage.keys import KeyRing

    db = host_app.extensions["attestd"].store
    assert cli.main(["keys", "rotate", "--retire"]) == 0
    assert b'"PW": "two"' in KeyRing.from_file(key_file).decrypt(db.sole_vm(VM).secrets_enc)
