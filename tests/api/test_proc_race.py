"""Issue 10, crash-consistent launches, with real processes: a PUT or DELETE that
commits while a ``/validate`` runs on a gunicorn worker wins (the old revision's
secrets are never released after the change committed), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from attestd.sim.platform import SimulatedPlatform
from tests.api.procrace import Racer
from tests.api.servers import Server, cli_token, serve_env
from tests.api.simhost import VM, launch_body, sev

pytestmark = pytest.mark.slow

ROUNDS = 24  # bench/race_put_validate.py runs the 250


@pytest.fixture
def env(tmp_path: Path, anchors_dir: Path, database_url: str) -> dict[str, str]:
    return serve_env(tmp_path / "data", anchors_dir, database_url, ATTESTD_HOST_LAUNCH_RATE="0")


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


def test_host_launch_rate_is_per_worker_process(
    env: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    """What docs/operator.md says: ``host_launch_rate`` is a token bucket in each
    gunicorn worker, so one host gets at most ``workers`` x (burst + rate x elapsed)
    launches, never fewer than one worker's burst before its first 429."""
    env = {**env, "ATTESTD_HOST_LAUNCH_RATE": "1", "ATTESTD_MAX_PENDING_LAUNCHES": "0"}
    owner = cli_token(env, "owner", "create", "alice")
    host = cli_token(env, "host", "create", "node-1", "--owner", "alice")
    srv = Server(env, workers=2)
    try:
        srv.start()
        made = requests.post(f"{srv.url}/v1/vm/{VM}", json=sev(ovmf), headers=owner, timeout=30)
        assert made.status_code == 201, made.text
        body = launch_body(platform)
        started = time.monotonic()
        statuses = []
        for _ in range(30):  # a new connection each time: gunicorn spreads them
            resp = requests.post(
                f"{srv.url}/v1/vm/{VM}/launch",
                json=body,
                headers={**host, "Connection": "close"},
                timeout=30,
            )
            statuses.append(resp.status_code)
        elapsed = time.monotonic() - started
    finally:
        srv.stop()
    assert set(statuses) <= {200, 429}, statuses
    granted = statuses.count(200)
    burst, rate, workers = 2, 1.0, 2
    assert statuses[:burst] == [200] * burst  # one worker's burst at least
    assert 429 in statuses
    assert granted <= workers * (burst + rate * elapsed), (granted, elapsed)
