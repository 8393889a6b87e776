"""The cvm-control-compatible HTTPS API (``attestd-guest serve``), stdlib only.

Routes, payloads and status codes follow cvm-control's README: one long-running
operation at a time (409 otherwise, 202 for an identical retry), 401 for a wrong
old passphrase or shutdown user id, a self-signed certificate made at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from attestd.guest.agent import STATUS_READY, STATUS_SHUTDOWN, Agent, OperationResult
from attestd.guest.errors import AuthenticationFailed, GuestError, PayloadError
from attestd.guest.payload import Payload, RotateSpec, parse_json, validate, validate_rotation
from attestd.guest.runner import CommandRunner

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Response = tuple[int, dict[str, Any]]


@dataclass(slots=True)
class Operation:
    """One tracked long-running operation (bootstrap or passphrase)."""

    state: str = "idle"
    digest: bytes = b""
    result: OperationResult | None = None
    error: str = ""


def _error(status: int, message: str, detail: str = "") -> Response:
    body = {"error": message}
    if detail:
        body["detail"] = detail
    return status, body


class Controller:
    """Request handling without sockets: ``handle(method, path, body)``."""

    def __init__(self, agent: Agent, *, start: Callable[[Callable[[], None]], None] | None = None):
        self.agent = agent
        self.bootstrap_op = Operation()
        self.passphrase_op = Operation()
        self._bootstrapped: bytes | None = None
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        self._start = start or _start_thread
        if agent.status == STATUS_READY:
            self.bootstrap_op.state = "completed"

    def handle(self, method: str, path: str, body: bytes) -> Response:
        """Dispatch one request."""
        routes: dict[str, dict[str, Callable[[bytes], Response]]] = {
            "/api/v1/status": {"GET": lambda _b: (200, {"status": self.agent.status})},
            "/api/v1/bootstrap": {"GET": self.get_bootstrap, "POST": self.post_bootstrap},
            "/api/v1/passphrase": {"GET": self.get_passphrase, "PUT": self.put_passphrase},
            "/api/v1/shutdown": {"POST": self.post_shutdown},
        }
        route = routes.get(path.split("?", 1)[0])
        if route is None:
            return _error(404, "not found")
        handler = route.get(method)
        if handler is None:
            return _error(405, "method not allowed")
        try:
            return handler(body)
        except PayloadError as exc:
            return _error(400, exc.message)
        except AuthenticationFailed as exc:
            return _error(401, exc.message)
        except GuestError as exc:
            return _error(500, exc.message, exc.detail)

    # -- bootstrap ---------------------------------------------------------------------

    @staticmethod
    def _op_doc(op: Operation, *, volumes_on_success: bool) -> dict[str, Any]:
        if op.state in ("idle", "in_progress") or op.result is None:
            if op.state == "failed":
                return {"status": "failed", "error": op.error}
            return {"status": op.state}
        doc = op.result.api()
        if op.result.ok and not volumes_on_success:
            doc.pop("volumes", None)
        return doc

    def get_bootstrap(self, _body: bytes) -> Response:
        """``GET /api/v1/bootstrap``."""
        with self._lock:
            return 200, self._op_doc(self.bootstrap_op, volumes_on_success=False)

    def post_bootstrap(self, body: bytes) -> Response:
        """``POST /api/v1/bootstrap``: 202 started/retry, 200 ready, 409 conflict."""
        payload = validate(parse_json(body), api=True)
        digest = payload.full_digest(self._key)
        with self._lock:
            if self.agent.status == STATUS_SHUTDOWN:
                return _error(409, "server is shutting down")
            if self.bootstrap_op.state == "in_progress":
                if hmac.compare_digest(digest, self.bootstrap_op.digest):
                    return 202, {"status": "in_progress"}
                return _error(409, "a different bootstrap is in progress")
            if self.passphrase_op.state == "in_progress":
                return _error(409, "a passphrase change is in progress")
            if self.agent.status == STATUS_READY:
                if self._same_as_bootstrapped(payload, digest):
                    return 200, {"status": "ready"}
                return _error(409, "already bootstrapped with a different configuration")
            self.bootstrap_op = Operation("in_progress", digest)
            op = self.bootstrap_op
        self._start(lambda: self._run_bootstrap(op, payload))
        return 202, {"status": "in_progress"}

    def _same_as_bootstrapped(self, payload: Payload, digest: bytes) -> bool:
        if self._bootstrapped is not None:
            return hmac.compare_digest(digest, self._bootstrapped)
        return self.agent.same_input(self.agent.record or {}, payload)

    def _run_bootstrap(self, op: Operation, payload: Payload) -> None:
        try:
            result = self.agent.bootstrap(payload)
        except GuestError as exc:
            with self._lock:
                op.state, op.error = "failed", exc.message
            return
        with self._lock:
            op.result = result
            op.state = "completed" if result.ok else "failed"
            if result.ok:
                self._bootstrapped = op.digest

    # -- passphrase --------------------------------------------------------------------

    def get_passphrase(self, _body: bytes) -> Response:
        """``GET /api/v1/passphrase``."""
        with self._lock:
            return 200, self._op_doc(self.passphrase_op, volumes_on_success=True)

    def _rotation_digest(self, specs: dict[str, RotateSpec]) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for name in sorted(specs):
            spec = specs[name]
            for part in (name.encode(), spec.old, spec.new):
                mac.update(len(part).to_bytes(4, "big") + part)
        return mac.digest()

    def put_passphrase(self, body: bytes) -> Response:
        """``PUT /api/v1/passphrase``: 202 started/retry, 401 bad old passphrase, 409."""
        specs = validate_rotation(parse_json(body))
        digest = self._rotation_digest(specs)
        with self._lock:
            if self.passphrase_op.state == "in_progress":
                if hmac.compare_digest(digest, self.passphrase_op.digest):
                    return 202, {"status": "in_progress"}
                return _error(409, "a different passphrase change is in progress")
            if self.agent.status != STATUS_READY:
                return _error(409, f"server is not ready (status {self.agent.status})")
            if self.bootstrap_op.state == "in_progress":
                return _error(409, "a bootstrap is in progress")
            previous = self.passphrase_op
            op = self.passphrase_op = Operation("in_progress", digest)
        try:
            self.agent.authenticate_rotation(specs)
        except GuestError:
            with self._lock:
                self.passphrase_op = previous
            raise
        self._start(lambda: self._run_rotation(op, specs))
        return 202, {"status": "in_progress"}

    def _run_rotation(self, op: Operation, specs: dict[str, RotateSpec]) -> None:
        try:
            result = self.agent.rotate(specs)
        except GuestError as exc:
            with self._lock:
                op.state, op.error = "failed", exc.message
            return
        with self._lock:
            op.result, op.state = result, "completed" if result.ok else "failed"

    # -- shutdown ----------------------------------------------------------------------

    def post_shutdown(self, body: bytes) -> Response:
        """``POST /api/v1/shutdown``: power off or reboot (user id checked once ready)."""
        doc = parse_json(body) if body.strip() else {}
        if not isinstance(doc, dict):
            raise PayloadError("request must be an object")
        reboot = doc.get("reboot", False)
        if not isinstance(reboot, bool):
            raise PayloadError("reboot must be a boolean")
        with self._lock:
            if "in_progress" in (self.bootstrap_op.state, self.passphrase_op.state):
                return _error(409, "an operation is in progress")
            if self.agent.status == STATUS_READY:
                user_id = doc.get("user_id")
                expected = str((self.agent.record or {}).get("user_id", ""))
                if not isinstance(user_id, str) or not hmac.compare_digest(
                    user_id.encode(), expected.encode()
                ):
                    return _error(401, "user_id is missing or does not match")
            cfg = self.agent.config
            argv = cfg.reboot_argv if reboot else cfg.poweroff_argv
            result = self.agent.runner.run(list(argv))
            if not result.ok:
                return _error(
                    500,
                    f"{' '.join(argv)} failed with exit code {result.returncode}",
                    result.stderr_text(),
                )
            self.agent.status = STATUS_SHUTDOWN
        return 200, {"status": "ok"}


def _start_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="operation", daemon=True).start()


def make_handler(controller: Controller) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``controller``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "attestd-guest"
        sys_version = ""

        def _respond(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                status, doc = _error(400, "bad Content-Length")
                self.close_connection = True
            elif length > MAX_BODY:
                status, doc = _error(413, "request body too large")
                self.close_connection = True
            else:
                body = self.rfile.read(length) if length else b""
                status, doc = controller.handle(self.command, self.path, body)
            raw = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_DELETE = _respond

        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), format % args)

    return Handler


def self_signed_context(runner: CommandRunner, common_name: str) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed P-256 certificate (``openssl req``)."""
    with tempfile.TemporaryDirectory(prefix="attestd-guest-tls-") as tmp:
        key, cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        result = runner.run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "825", "-subj", f"/CN={common_name}",
            "-addext", f"subjectAltName=DNS:{common_name}",
            "-keyout", str(key), "-out", str(cert),
        ])  # fmt: skip
        if not result.ok:
            raise GuestError("cannot create the TLS certificate", result.stderr_text())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
    return ctx


def make_server(agent: Agent, address: str, port: int, common_name: str) -> ThreadingHTTPServer:
    """A bound HTTPS server (not yet serving)."""
    controller = Controller(agent)
    httpd = ThreadingHTTPServer((address, port), make_handler(controller))
    httpd.daemon_threads = True
    ctx = self_signed_context(agent.runner, common_name)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    return httpd


def serve(agent: Agent, address: str, port: int, common_name: str) -> None:
    """Serve until interrupted."""
    httpd = make_server(agent, address, port, common_name)
    logger.info("listening on https://%s:%d (status %s)", address, port, agent.status)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
