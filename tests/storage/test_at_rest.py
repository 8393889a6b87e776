"""Encryption at rest, key rotation, migrations, and no secret in the logs."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd import cli
from attestd.config import Settings
from attestd.service.registration import Volume
from attestd.storage.keys import KeyRing, StorageKeyError
from attestd.storage.sql import Database
from tests import pgserver
from tests.servicefix import sev_registration

VM = "0b0d4f6e-6a0b-4c3e-8e43-6c8b1c9a0f11"
SECRETS = ["luks-secret-value-1", "volume-pass-value-2", "env-secret-value-3", "file-secret-4"]


def _register(client: FlaskClient, headers: dict[str, str]) -> None:
    body = sev_registration(
        secrets=[
            {"type": "luks-passphrase", "passphrase": SECRETS[0]},
            {"type": "volume", "name": "data", "device": "virtio:d", "passphrase": SECRETS[1]},
            {"type": "volume", "name": "gen", "device": "virtio:g", "generate": True},
            {"type": "env", "name": "a.env", "values": {"K": SECRETS[2]}},
            {"type": "secret-file", "name": "s.env", "values": {"K": SECRETS[3]}},
        ]
    )
    resp = client.post(f"/v1/vm/{VM}", json=body, headers=headers)
    assert resp.status_code == 201


def _dump(app: Flask, settings: Settings, request: pytest.FixtureRequest) -> bytes:
    db: Database = app.extensions["attestd"].store
    if db.dialect == "sqlite":
        path = Path(settings.effective_database_url.removeprefix("sqlite:///"))
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(FULL)")
            text = "\n".join(conn.iterdump()).encode()
        finally:
            conn.close()
        raw = path.read_bytes()
        wal = path.with_name(path.name + "-wal")
        return text + raw + (wal.read_bytes() if wal.exists() else b"")
    server: pgserver.PgServer = request.getfixturevalue("pg")
    return server.dump(settings.effective_database_url)


def test_dump_holds_no_plaintext_secret(
    app: Flask,
    client: FlaskClient,
    settings: Settings,
    alice: dict[str, str],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _register(client, alice)
    services = app.extensions["attestd"].services
    stored = services.vms.stored_secrets(services.store.sole_vm(VM))
    generated = next(s.passphrase for s in stored if isinstance(s, Volume) and s.generate)
    dump = _dump(app, settings, request)
    assert VM.encode() in dump  # the dump is real
    for secret in [*SECRETS, generated]:
        assert secret.encode() not in dump
        assert secret not in caplog.text
    token = alice["Authorization"].split()[1]
    assert token.encode() not in dump
    assert token not in caplog.text


def test_key_rotation(
    app: Flask,
    client: FlaskClient,
    settings: Settings,
    alice: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _register(client, alice)
    store = app.extensions["attestd"].store
    before = store.sole_vm(VM).secrets_enc
    key_file = settings.effective_storage_key_file
    old_keys = key_file.read_text()
    monkeypatch.setenv("ATTESTD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("ATTESTD_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("ATTESTD_CONFIG", "")
    assert cli.main(["keys", "rotate", "--retire"]) == 0
    assert "re-encrypted 1 stored values" in capsys.readouterr().out
    new_ring = KeyRing.from_file(key_file)
    assert len(key_file.read_text().split()) == 1 and key_file.read_text() != old_keys
    after = store.sole_vm(VM).secrets_enc
    assert after != before
    assert SECRETS[0] in new_ring.decrypt(after).decode()
    with pytest.raises(StorageKeyError):
        new_ring.decrypt(before)  # the retired key is gone
    old_ring = KeyRing([old_keys.split()[0].encode()])
    with pytest.raises(StorageKeyError):
        old_ring.decrypt(after)


def test_migrations_down_and_up(settings: Settings) -> None:
    db = Database(settings.effective_database_url)
    db.upgrade()
    db.downgrade("0002")  # 0003 (safe defaults) alone, then 0002 (indexes) and 0001
    db.downgrade("base")
    db.upgrade()
    db.create_owner("x", "0" * 64, 1.0)
    db.dispose()


def test_configured_key_file_must_exist(tmp_path: Path, settings: Settings) -> None:
    from attestd.api import create_app

    with pytest.raises(StorageKeyError):
        create_app(settings.replace(storage_key_file=tmp_path / "missing.key"))
    assert not (tmp_path / "missing.key").exists()
