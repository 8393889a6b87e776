"""Racing attests with one nonce against real gunicorn workers: one release, at most.

``attestd serve`` (2 worker processes, threads in each) on SQLite and on PostgreSQL;
the requests come from threads of this process over HTTP, all released at one barrier.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from attestd.config import Settings
from attestd.sim.snp import SnpPlatform
from tests.api.servers import Server
from tests.snpfix import (
    GUEST_PIN,
    PUBLIC_URLS,
    SECRET_VALUES,
    SNP_VM,
    Guest,
    attest_body,
    import_crl,
    snp_registration,
)

pytestmark = pytest.mark.slow
RACERS = 12


@pytest.fixture
def server(
    tmp_path: Path, snp_anchors_dir: Path, snp_platform: SnpPlatform, database_url: str
) -> Iterator[Server]:
    env = dict(os.environ)
    env.update(
        {
            "ATTESTD_DATA_DIR": str(tmp_path / "data"),
            "ATTESTD_DATABASE_URL": database_url,
            "ATTESTD_TRUST_ANCHORS_DIR": str(snp_anchors_dir),
            "ATTESTD_KDS_OFFLINE": "1",
            "ATTESTD_CONFIG": "",
            "ATTESTD_PUBLIC_URLS": ",".join(PUBLIC_URLS),
            "ATTESTD_GUEST_PIN": GUEST_PIN,
            "ATTESTD_ATTEST_VM_RATE": "0",  # the race is on the nonce, not the rate
        }
    )
    (tmp_path / "data").mkdir(exist_ok=True)
    import_crl(Settings(data_dir=tmp_path / "data"), snp_platform)
    srv = Server(env)
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.kill()
    srv.log.close()


def _owner(server: Server) -> dict[str, str]:
    created = subprocess.run(
        [sys.executable, "-m", "attestd.cli", "owner", "create", "alice"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {"Authorization": "Bearer " + created.stdout.strip().splitlines()[-1]}


def _race(url: str, body: dict[str, Any]) -> list[tuple[int, Any]]:
    """``RACERS`` concurrent POSTs of one attest body, released together."""
    barrier = threading.Barrier(RACERS)
    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def attest() -> None:
        session = requests.Session()
        barrier.wait()
        resp = session.post(f"{url}/attest", json=body, timeout=60)
        with lock:
            answers.append((resp.status_code, resp.json()))

    threads = [threading.Thread(target=attest) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def test_racing_attests_with_one_nonce_release_once(
    server: Server, snp_platform: SnpPlatform, digest: bytes
) -> None:
    owner = _owner(server)
    server.start()
    url = f"{server.url}/v1/vm/{SNP_VM}"
    assert requests.post(url, json=snp_registration(digest), headers=owner, timeout=30).ok
    for _round in range(2):
        nonce = requests.post(f"{url}/attest/challenge", timeout=30).json()["nonce"]
        guest = Guest()
        body = attest_body(snp_platform, guest, nonce, digest)
        answers = _race(url, body)
        codes = sorted(code for code, _ in answers)
        assert len(codes) == RACERS and codes.count(200) == 1, codes
        assert all(400 <= code < 500 for code in codes if code != 200), codes
        (released,) = [doc for code, doc in answers if code == 200]
        assert guest.decrypt(released["payload"])["secret"] == {"api": {"TOKEN": "s3cr3t-token"}}
        for code, doc in answers:
            if code != 200:
                assert doc["errors"]["reason"] == "nonce_rejected", doc
                assert not any(value in str(doc) for value in SECRET_VALUES)
    events = requests.get(f"{url}/events?limit=100", headers=owner, timeout=30).json()["events"]
    attests = [e for e in events if e["kind"] == "attest"]
    assert [e["outcome"] for e in attests].count("released") == 2  # one per nonce
    assert len(attests) == 2 * RACERS
    shown = requests.get(url, headers=owner, timeout=30).json()
    assert shown["launches-used"] == 2
