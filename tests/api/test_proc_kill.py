"""Issue 10, crash-consistent launches: a gunicorn worker SIGKILLed while its
``/validate`` waits inside the database (blocked by a lock another connection holds,
no mocks) leaves no launch stuck ``validating``: the host's retry gets the secret
exactly once, and the VM's audit log says so."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from attestd.sim.platform import SimulatedPlatform
from tests.api.procrace import holding_lock, wait_until
from tests.api.servers import Server, cli_token, serve_env
from tests.api.simhost import VM, Boot, launch_body, measure, sev, validate_body

pytestmark = pytest.mark.slow

LEASE = 8


@pytest.fixture
def env(tmp_path: Path, anchors_dir: Path, database_url: str) -> dict[str, str]:
    return serve_env(
        tmp_path / "data",
        anchors_dir,
        database_url,
        ATTESTD_HOST_LAUNCH_RATE="0",
        ATTESTD_VALIDATE_LEASE=str(LEASE),
    )


def _workers(master: int) -> list[int]:
    """The gunicorn workers: the children of the master process."""
    path = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in path.read_text().split()]


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_sigkill_mid_validate_leaves_no_stuck_launch(
    env: dict[str, str], database_url: str, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    owner = cli_token(env, "owner", "create", "alice")
    host = cli_token(env, "host", "create", "node-1", "--owner", "alice")
    server = Server(env, workers=2)
    try:
        server.start()
        assert server.proc is not None
        made = requests.post(f"{server.url}/v1/vm/{VM}", json=sev(ovmf), headers=owner, timeout=30)
        assert made.status_code == 201, made.text
        grant = requests.post(
            f"{server.url}/v1/vm/{VM}/launch",
            json=launch_body(platform),
            headers=host,
            timeout=30,
        ).json()
        handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
        body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
        first: list[Any] = []

        def validate() -> None:
            try:
                first.append(
                    requests.post(
                        f"{server.url}/v1/vm/{VM}/validate", json=body, headers=host, timeout=60
                    )
                )
            except requests.RequestException as exc:
                first.append(exc)

        killed = []
        with holding_lock(database_url) as waiting:
            caller = threading.Thread(target=validate)
            caller.start()
            assert wait_until(waiting, 20), "the validate never waited for the lock"
            time.sleep(0.5)  # SQLite has no view of who waits: give it time to get there
            assert caller.is_alive() and not first  # blocked inside the database
            if not database_url.startswith("sqlite"):
                # the claim committed before the kill: the worker dies inside the release
                engine = create_engine(database_url)
                with engine.connect() as conn:
                    state = conn.execute(
                        text("SELECT state FROM launches WHERE id = :id"),
                        {"id": grant["launch-id"]},
                    ).scalar_one()
                engine.dispose()
                assert state == "validating"
            killed = _workers(server.proc.pid)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        caller.join(60)
        assert len(first) == 1 and isinstance(first[0], requests.RequestException), first
        # gunicorn's master starts new workers
        assert wait_until(lambda: _healthy(server.url) and bool(_workers(server.proc.pid)), 60)
        assert not set(killed) & set(_workers(server.proc.pid))

        answers = []
        deadline = time.monotonic() + LEASE + 30
        while time.monotonic() < deadline:
            retry = requests.post(
                f"{server.url}/v1/vm/{VM}/validate", json=body, headers=host, timeout=30
            )
            answers.append(retry.status_code)
            if retry.status_code == 200:
                released = retry.json()
                break
            # the dead worker's claim: busy until its lease lapses
            assert retry.status_code == 409, retry.text
            assert retry.json()["errors"]["reasons"] == ["launch_used"]
            assert 1 <= int(retry.headers["Retry-After"]) <= LEASE + 1
            time.sleep(0.5)
        assert answers[-1] == 200, answers
        platform.launch_secret(
            handle,
            base64.b64decode(released["secret-header"]),
            base64.b64decode(released["secret-table"]),
        )
        assert platform.secret_table(handle)
        # released once: the next retry is refused for good
        again = requests.post(
            f"{server.url}/v1/vm/{VM}/validate", json=body, headers=host, timeout=30
        )
        assert again.status_code == 409 and again.headers.get("Retry-After") is None
        shown = requests.get(f"{server.url}/v1/vm/{VM}", headers=owner, timeout=30).json()
        assert shown["launches-used"] == 1
        events = requests.get(
            f"{server.url}/v1/vm/{VM}/events?limit=1000", headers=owner, timeout=30
        ).json()["events"]
        mine = [e for e in events if e["launch-id"] == grant["launch-id"]]
        outcomes = [(e["kind"], e["outcome"]) for e in mine]
        assert outcomes.count(("validate", "released")) == 1, outcomes
        refused = [e for e in mine if e["outcome"] == "refused"]
        # every 409 the host got is in the log (retries during the lease, the last one)
        assert len(refused) == len(answers), (refused, answers)
        assert all(e["detail"]["tried"] == ["launch_used"] for e in refused), refused
    finally:
        server.stop()
