"""A gunicorn service killed with SIGKILL mid-launch loses nothing and leaves no half state."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from attestd.sim.platform import SimulatedPlatform
from tests.api.servers import Server, cli_token, serve_env
from tests.api.simhost import VM, Boot, launch_body, measure, sev, validate_body

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path, anchors_dir: Path, database_url: str) -> dict[str, str]:
    return serve_env(tmp_path / "data", anchors_dir, database_url)


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[Server]:
    srv = Server(env)
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.kill()
    srv.log.close()


def test_sigkill_mid_launches(
    server: Server, env: dict[str, str], platform: SimulatedPlatform, ovmf: bytes
) -> None:
    owner = cli_token(env, "owner", "create", "alice")
    host_auth = cli_token(env, "host", "create", "node-1", "--owner", "alice")
    server.start()
    resp = requests.post(f"{server.url}/v1/vm/{VM}", json=sev(ovmf), headers=owner, timeout=30)
    assert resp.status_code == 201
    sim_lock = threading.Lock()
    stop = threading.Event()
    pending: list[dict[str, Any]] = []  # validate requests whose answer never arrived
    done: list[int] = []
    lock = threading.Lock()

    def host() -> None:
        session = requests.Session()
        session.headers.update(host_auth)
        while not stop.is_set():
            try:
                grant = session.post(
                    f"{server.url}/v1/vm/{VM}/launch", json=launch_body(platform), timeout=30
                )
            except requests.RequestException:
                return
            if grant.status_code != 200:
                with lock:
                    done.append(grant.status_code)
                continue
            with sim_lock:
                _handle, measurement = measure(platform, grant.json(), Boot(firmware=ovmf))
            body = validate_body(platform, grant.json(), measurement, Boot(firmware=ovmf))
            try:
                answer = session.post(f"{server.url}/v1/vm/{VM}/validate", json=body, timeout=30)
            except requests.RequestException:
                with lock:
                    pending.append(body)
                return
            with lock:
                done.append(answer.status_code)

    threads = [threading.Thread(target=host) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(done) < 12:
        time.sleep(0.05)
    server.kill()
    stop.set()
    for t in threads:
        t.join(60)
    assert done and set(done) == {200}, done

    server.start()
    shown = requests.get(f"{server.url}/v1/vm/{VM}", headers=owner, timeout=30)
    assert shown.status_code == 200 and shown.json()["revision"] == 1
    for body in pending:
        retry = requests.post(
            f"{server.url}/v1/vm/{VM}/validate", json=body, headers=host_auth, timeout=30
        )
        assert retry.status_code in (200, 409), retry.text
        if retry.status_code == 200:
            assert base64.b64decode(retry.json()["secret-table"])
    # the service keeps working after the crash
    again = requests.post(
        f"{server.url}/v1/vm/{VM}/launch", json=launch_body(platform), headers=host_auth, timeout=30
    )
    assert again.status_code == 200
    events = requests.get(
        f"{server.url}/v1/vm/{VM}/events?limit=1000", headers=owner, timeout=30
    ).json()["events"]
    assert events[0]["kind"] == "registered"
    metrics = requests.get(f"{server.url}/metrics", timeout=30)
    assert "attestd_launches{state=" in metrics.text
