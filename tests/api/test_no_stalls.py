"""No stalls (issue 10): a black-holed AMD KDS never holds the threads of a real
``attestd serve``, and a launch flood is answered 429 with ``Retry-After``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from attestd.sim.platform import SimulatedPlatform
from tests.api.servers import Server
from tests.api.simhost import VM, b64, launch_body, sev

pytestmark = pytest.mark.slow


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A KDS on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "attestd.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def kds_server(tmp_path: Path, anchors_dir: Path, black_hole: str) -> Iterator[Server]:
    env = dict(os.environ)
    env.update(
        {
            "ATTESTD_DATA_DIR": str(tmp_path / "data"),
            "ATTESTD_TRUST_ANCHORS_DIR": str(anchors_dir),
            "ATTESTD_KDS_OFFLINE": "0",
            "ATTESTD_KDS_URL": black_hole,
            "ATTESTD_CONFIG": "",
            # one worker of two threads: the two launches below can hold every thread,
            # so /healthz answers in time only if the KDS gate lets them go (two workers
            # of four threads left /healthz a free thread even without the gate)
            "ATTESTD_THREADS": "2",
        }
    )
    env.pop("ATTESTD_DATABASE_URL", None)
    (tmp_path / "data").mkdir()
    srv = Server(env, workers=1)
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.kill()
    srv.log.close()


def test_black_holed_kds_does_not_stall_healthz(
    kds_server: Server, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    env = kds_server.env
    owner = {"Authorization": "Bearer " + _cli(env, "owner", "create", "alice")}
    host = {"Authorization": "Bearer " + _cli(env, "host", "create", "n1", "--owner", "alice")}
    kds_server.start()
    url = kds_server.url
    assert requests.post(f"{url}/v1/vm/{VM}", json=sev(ovmf), headers=owner, timeout=30).ok

    answers: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def launch() -> None:
        body = launch_body(platform, cek=None, **{"cpu-id": b64(os.urandom(64))})
        started = time.monotonic()
        try:
            resp = requests.post(f"{url}/v1/vm/{VM}/launch", json=body, headers=host, timeout=20)
        except requests.RequestException:
            with lock:
                answers.append((0, time.monotonic() - started, None))
            return
        with lock:
            answers.append(
                (resp.status_code, time.monotonic() - started, resp.headers.get("Retry-After"))
            )

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both threads are now inside a KDS lookup
    started = time.monotonic()
    try:
        health = requests.get(f"{url}/healthz", timeout=5).status_code
    except requests.RequestException:
        health = 0
    waited = time.monotonic() - started
    for t in threads:
        t.join(30)
    assert health == 200, f"/healthz gave no answer in {waited:.1f} s behind a black-holed KDS"
    assert waited < 5.0, f"/healthz waited {waited:.1f} s behind a black-holed KDS"
    assert len(answers) == 2
    for status, took, retry_after in answers:
        assert status == 503 and took < 5.0 and retry_after is not None, answers

    # a flood of fresh chip ids is cut off by the rate limit without waiting on KDS
    flood = [
        requests.post(
            f"{url}/v1/vm/{VM}/launch",
            json=launch_body(platform, cek=None, **{"cpu-id": b64(os.urandom(64))}),
            headers=host,
            timeout=20,
        )
        for _ in range(12)
    ]
    assert all(r.status_code == 503 for r in flood)
    assert any("too many AMD KDS lookups" in r.json()["message"] for r in flood)
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
