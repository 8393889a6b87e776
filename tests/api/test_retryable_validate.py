"""Issue 10: a validate that fails because of the storage (disk full on SQLite, the
PostgreSQL server stopped) is a 503 with a stable code, does not burn the launch, and
the host's retry after recovery gets the secret (once)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from tests import pgserver
from tests.api.procrace import holding_lock, wait_until
from tests.api.simhost import VM, Boot, launch_body, measure, sev, validate_body
from tests.servicefix import make_owner


def _settings(data_dir: Path, anchors_dir: Path, **changes: Any) -> Settings:
    """A service trusting the simulator, without host tokens or a host rate."""
    return Settings(
        data_dir=data_dir,
        kds_offline=True,
        trust_anchors_dir=anchors_dir,
        require_host_token=False,
        host_launch_rate=0,
    ).replace(**changes)


def _ready(client: FlaskClient, app: Flask, platform: SimulatedPlatform, ovmf: bytes) -> Any:
    owner = make_owner(app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    grant = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert grant.status_code == 200, grant.json
    _handle, measurement = measure(platform, grant.json, Boot(firmware=ovmf))
    return validate_body(platform, grant.json, measurement, Boot(firmware=ovmf))


def _outage_then_retry(
    client: FlaskClient, body: Any, break_storage: Callable[[], None], mend: Callable[[], None]
) -> None:
    break_storage()
    try:
        failed = client.post(f"/v1/vm/{VM}/validate", json=body)
        assert failed.status_code == 503, failed.json
        assert failed.json["errors"]["reason"] == "storage_unavailable"
        assert "secret-table" not in failed.json
    finally:
        mend()
    retry = client.post(f"/v1/vm/{VM}/validate", json=body)
    assert retry.status_code == 200, retry.json  # the launch was not burnt
    assert client.post(f"/v1/vm/{VM}/validate", json=body).status_code == 409  # once


def test_disk_full_during_validate_is_retryable(
    small_fs: Path, anchors_dir: Path, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    app = create_app(_settings(small_fs / "data", anchors_dir))
    filler = small_fs / "filler"

    def fill() -> None:
        with filler.open("wb") as handle, pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()

    try:
        client = app.test_client()
        body = _ready(client, app, platform, ovmf)
        _outage_then_retry(client, body, fill, filler.unlink)
    finally:
        app.extensions["attestd"].store.dispose()


@pytest.fixture
def own_pg() -> Iterator[pgserver.PgServer]:
    """A PostgreSQL server of this test alone (it is stopped and started again)."""
    if not pgserver.available() or os.environ.get("ATTESTD_TEST_PG_URL"):
        pytest.skip("needs a local PostgreSQL server this test may stop")
    server = pgserver.PgServer.start()
    yield server
    server.stop()


def test_postgresql_down_during_validate_is_retryable(
    own_pg: pgserver.PgServer,
    tmp_path: Path,
    anchors_dir: Path,
    platform: SimulatedPlatform,
    ovmf: bytes,
) -> None:
    url = own_pg.create_database()
    app = create_app(_settings(tmp_path / "data", anchors_dir, database_url=url))
    try:
        client = app.test_client()
        body = _ready(client, app, platform, ovmf)
        _outage_then_retry(client, body, own_pg.pause, own_pg.resume)
    finally:
        app.extensions["attestd"].store.dispose()


def test_connection_lost_after_the_claim_gives_the_launch_back(
    own_pg: pgserver.PgServer,
    tmp_path: Path,
    anchors_dir: Path,
    platform: SimulatedPlatform,
    ovmf: bytes,
) -> None:
    """The validate claimed the launch and waits for the VM row at its release; its
    database connection is then terminated (what a PostgreSQL restart or failover
    does): 503, and the launch is given back at once, not after the claim's lease."""
    url = own_pg.create_database()
    settings = _settings(tmp_path / "data", anchors_dir, database_url=url, validate_lease=3600)
    app = create_app(settings)
    try:
        client = app.test_client()
        body = _ready(client, app, platform, ovmf)
        answers: list[Any] = []

        def validate() -> None:
            answers.append(app.test_client().post(f"/v1/vm/{VM}/validate", json=body))

        engine = create_engine(url)
        try:
            with holding_lock(url) as waiting, engine.connect() as admin:
                caller = threading.Thread(target=validate)
                caller.start()
                assert wait_until(waiting, 20)
                admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                )
                caller.join(60)
        finally:
            engine.dispose()
        assert answers[0].status_code == 503, answers[0].json
        assert answers[0].json["errors"]["reason"] == "storage_unavailable"
        retry = client.post(f"/v1/vm/{VM}/validate", json=body)
        assert retry.status_code == 200, retry.json  # not 409 for an hour
        assert client.post(f"/v1/vm/{VM}/validate", json=body).status_code == 409
    finally:
        app.extensions["attestd"].store.dispose()
