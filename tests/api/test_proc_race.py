"""Issue 10, crash-consistent launches, with real processes: a PUT or DELETE that
commits while a ``/validate`` runs on a gunicorn worker wins (the old revision's
secrets are never released after the change committed), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestd.sim.platform import SimulatedPlatform
from tests.api.procrace import Racer, cli_token
from tests.api.servers import Server

pytestmark = pytest.mark.slow

ROUNDS = 24  # bench/race_put_validate.py runs the 250


@pytest.fixture
def env(tmp_path: Path, anchors_dir: Path, database_url: str) -> dict[str, str]:
    values = dict(os.environ)
    values.update(
        {
            "ATTESTD_DATA_DIR": str(tmp_path / "data"),
            "ATTESTD_DATABASE_URL": database_url,
            "ATTESTD_TRUST_ANCHORS_DIR": str(anchors_dir),
            "ATTESTD_KDS_OFFLINE": "1",
            "ATTESTD_CONFIG": "",
            "ATTESTD_HOST_LAUNCH_RATE": "0",
        }
    )
    (tmp_path / "data").mkdir(exist_ok=True)
    return values


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[Server]:
    srv = Server(env, workers=2)
    yield srv
    srv.stop()


def test_put_or_delete_racing_validate_wins_on_gunicorn(
    server: Server, env: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    owner = cli_token(env, "owner", "create", "alice")
    host = cli_token(env, "host", "create", "node-1", "--owner", "alice")
    server.start()
    racer = Racer(server.url, owner, host, platform, ovmf)
    for index in range(ROUNDS):
        racer.round(index, delete=index % 3 == 2)
    tally = racer.tally
    assert tally.wrong == [], (tally.wrong, tally.statuses)
    assert tally.rounds == ROUNDS
