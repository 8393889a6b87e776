"""Two clients that send their request headers slowly do not stall ``attestd serve``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.servers import Server

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, ATTESTD_DATA_DIR=str(data), ATTESTD_CONFIG="", ATTESTD_KDS_OFFLINE="1")
    env.pop("ATTESTD_DATABASE_URL", None)
    srv = Server(env)
    srv.start()
    yield srv
    srv.kill()
    srv.log.close()


def test_two_slow_header_connections_leave_healthz_answering(server: Server) -> None:
    slow = []
    try:
        for _ in range(2):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finish
            slow.append(conn)
        time.sleep(1)
        for conn in slow:
            conn.sendall(b"X-Slow: 1\r\n")
        started = time.monotonic()
        # generous bound: with sync workers this waited for the 30 s worker timeout
        answer = requests.get(server.url + "/healthz", timeout=15)
        assert answer.status_code == 200
        assert time.monotonic() - started < 15
    finally:
        for conn in slow:
            conn.close()
