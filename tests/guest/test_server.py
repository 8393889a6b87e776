"""The cvm-control-compatible API: routes, payloads, 202/409/401 and one active operation."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from attestd.guest.server import Controller, make_server
from tests.guest.conftest import Guest

REQUEST = {
    "user_id": "user-abc",
    "env": {"app.env": {"APP_MODE": "production"}},
    "secret": {"credentials.env": {"DB_PASSWORD": "s3cret"}},
    "volumes": {
        "data": {"volume_id": "vol-abc123", "passphrase": "secret", "mount_point": "/data"},
        "logs": {"volume_id": "vol-def456", "passphrase": "secret2", "mount_point": "/var/log/app"},
    },
}


class Deferred:
    """Holds started operations until the test runs them."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, work: Callable[[], None]) -> None:
        self.pending.append(work)

    def run_all(self) -> None:
        while self.pending:
            self.pending.pop(0)()


def _call(c: Controller, method: str, path: str, body: object = None) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    return c.handle(method, path, raw)


def test_bootstrap_rotation_shutdown_flow(guest: Guest) -> None:
    guest.disk("vol-abc123")
    guest.disk("vol-def456")
    later = Deferred()
    c = Controller(guest.agent(), start=later)
    assert _call(c, "GET", "/api/v1/status") == (200, {"status": "bootstrap"})
    assert _call(c, "GET", "/api/v1/bootstrap") == (200, {"status": "idle"})
    assert _call(c, "GET", "/api/v1/passphrase") == (200, {"status": "idle"})
    assert _call(c, "PUT", "/api/v1/passphrase", {"volumes": {}})[0] == 400
    rot = {"volumes": {"data": {"old_passphrase": "secret", "new_passphrase": "next"}}}
    assert _call(c, "PUT", "/api/v1/passphrase", rot)[0] == 409  # not ready

    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST) == (202, {"status": "in_progress"})
    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST) == (202, {"status": "in_progress"})
    other = json.loads(json.dumps(REQUEST))
    other["volumes"]["data"]["passphrase"] = "different"
    assert _call(c, "POST", "/api/v1/bootstrap", other)[0] == 409
    assert _call(c, "GET", "/api/v1/bootstrap") == (200, {"status": "in_progress"})
    assert _call(c, "POST", "/api/v1/shutdown", {})[0] == 409  # operation in progress
    later.run_all()
    assert _call(c, "GET", "/api/v1/bootstrap") == (200, {"status": "completed"})
    assert _call(c, "GET", "/api/v1/status") == (200, {"status": "ready"})
    assert guest.config.mount_path("/var/log/app").is_dir()
    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST) == (200, {"status": "ready"})
    assert _call(c, "POST", "/api/v1/bootstrap", other)[0] == 409

    bad = {"volumes": {"data": {"old_passphrase": "wrong", "new_passphrase": "next"}}}
    status, body = _call(c, "PUT", "/api/v1/passphrase", bad)
    assert status == 401 and "data" in body["error"]
    assert _call(c, "GET", "/api/v1/passphrase") == (200, {"status": "idle"})
    assert _call(c, "PUT", "/api/v1/passphrase", rot) == (202, {"status": "in_progress"})
    assert _call(c, "PUT", "/api/v1/passphrase", rot) == (202, {"status": "in_progress"})
    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST)[0] == 409
    later.run_all()
    assert _call(c, "GET", "/api/v1/passphrase") == (
        200,
        {"status": "completed", "volumes": {"data": {"status": "ok"}}},
    )
    unknown = {"volumes": {"nope": {"old_passphrase": "a", "new_passphrase": "b"}}}
    assert _call(c, "PUT", "/api/v1/passphrase", unknown)[0] == 400

    assert _call(c, "POST", "/api/v1/shutdown", {"reboot": False})[0] == 401
    assert _call(c, "POST", "/api/v1/shutdown", {"user_id": "user-x"})[0] == 401
    status, body = _call(c, "POST", "/api/v1/shutdown", {"user_id": "user-abc", "reboot": True})
    assert status == 500 and body["error"] == "false failed with exit code 1"
    assert _call(c, "POST", "/api/v1/shutdown", {"user_id": "user-abc"}) == (200, {"status": "ok"})
    assert _call(c, "GET", "/api/v1/status") == (200, {"status": "shutdown"})
    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST)[0] == 409
    assert _call(c, "PUT", "/api/v1/passphrase", rot)[0] == 409


def test_failed_bootstrap_reports_volumes_and_can_retry(guest: Guest) -> None:
    guest.disk("vol-abc123")
    later = Deferred()
    c = Controller(guest.agent(), start=later)
    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST)[0] == 202
    later.run_all()
    status, body = _call(c, "GET", "/api/v1/bootstrap")
    assert status == 200 and body["status"] == "failed"
    assert body["error"] == "one or more volumes failed"
    assert body["volumes"]["data"] == {"status": "ok"}
    assert body["volumes"]["logs"]["error"] == "device not found"
    assert _call(c, "GET", "/api/v1/status") == (200, {"status": "bootstrap"})
    guest.disk("vol-def456")
    assert _call(c, "POST", "/api/v1/bootstrap", REQUEST)[0] == 202
    later.run_all()
    assert _call(c, "GET", "/api/v1/bootstrap") == (200, {"status": "completed"})
    # a restarted agent recovers to ready and recognises the same configuration
    agent = guest.agent()
    assert agent.recover()
    c2 = Controller(agent, start=later)
    assert _call(c2, "GET", "/api/v1/status") == (200, {"status": "ready"})
    assert _call(c2, "POST", "/api/v1/bootstrap", REQUEST) == (200, {"status": "ready"})


def test_errors_and_routes(guest: Guest) -> None:
    c = Controller(guest.agent(), start=Deferred())
    assert c.handle("GET", "/api/v1/nothing", b"")[0] == 404
    assert c.handle("DELETE", "/api/v1/status", b"")[0] == 405
    assert c.handle("POST", "/api/v1/bootstrap", b"{")[0] == 400
    bad = json.loads(json.dumps(REQUEST))
    bad["env"] = {"../x": {"A": "b"}}
    status, body = _call(c, "POST", "/api/v1/bootstrap", bad)
    assert status == 400 and "invalid file name" in body["error"]
    assert c.handle("POST", "/api/v1/shutdown", b"") == (200, {"status": "ok"})  # no auth yet


def test_https_roundtrip(guest: Guest) -> None:
    httpd = make_server(guest.agent(), "127.0.0.1", 0, "attestd-test")
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{port}/api/v1/status"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            assert json.load(resp) == {"status": "bootstrap"}
        req = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/v1/bootstrap", data=b"{", method="POST"
        )
        try:
            urllib.request.urlopen(req, context=ctx, timeout=10)
            raise AssertionError("expected HTTP 400")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400 and "not JSON" in json.load(exc)["error"]
    finally:
        httpd.shutdown()
        httpd.server_close()
