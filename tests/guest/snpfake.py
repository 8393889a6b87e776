"""Test doubles for the SNP guest: a configfs-tsm kernel and a stub attestation service.

The fake kernel follows ``Documentation/ABI/testing/configfs-tsm``: ``mkdir`` of an entry
creates its attributes, every write to ``inblob``/``privlevel`` bumps ``generation``,
``outblob``/``auxblob`` are generated from the current ``inblob`` by the software SNP
platform, ``provider`` reads ``sev_guest``. The stub service implements the two attest
operations of issue 12 with the real verification core (``check_report`` and
``accept``) and its JWE encryption, over HTTP or HTTPS.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from attestd.errors import ParseError, PolicyViolation
from attestd.sev.snp.verify import SnpReferencePolicy, accept, check_report
from attestd.sim.snp import ReportRequest, SnpPlatform


@dataclasses.dataclass
class FakeTsmKernel:
    """configfs-tsm as the kernel implements it, in memory (a :class:`TsmFs`)."""

    root: Path
    platform: SnpPlatform
    launch: ReportRequest
    provider: str = "sev_guest"
    entries: dict[Path, dict[str, Any]] = dataclasses.field(default_factory=dict)
    calls: list[str] = dataclasses.field(default_factory=list)
    on_read: Callable[[FakeTsmKernel, Path, str], None] | None = None

    def mkdir(self, path: Path) -> None:
        if path.parent != self.root or path in self.entries:
            raise FileExistsError(17, "File exists")
        self.calls.append("mkdir")
        self.entries[path] = {"generation": 0, "inblob": None, "privlevel": 0}

    def rmdir(self, path: Path) -> None:
        self.calls.append("rmdir")
        del self.entries[path]

    def read(self, path: Path) -> bytes | None:
        entry = self.entries[path.parent]
        name = path.name
        self.calls.append(f"read {name}")
        if self.on_read is not None:
            self.on_read(self, path.parent, name)
        if name == "provider":
            return f"{self.provider}\n".encode()
        if name == "generation":
            return f"{entry['generation']}\n".encode()
        if name in ("outblob", "auxblob"):
            if entry["inblob"] is None:
                raise OSError(22, "Invalid argument")
            if name == "auxblob":
                return self.platform.cert_table(self.launch.signing_key)
            request = dataclasses.replace(
                self.launch, report_data=entry["inblob"], vmpl=entry["privlevel"]
            )
            return self.platform.report(request)
        return None

    def write(self, path: Path, data: bytes) -> None:
        entry = self.entries[path.parent]
        self.calls.append(f"write {path.name}")
        if path.name == "inblob":
            if len(data) > 64:
                raise OSError(22, "Invalid argument")
            entry["inblob"] = data.ljust(64, b"\0")
        elif path.name == "privlevel":
            entry["privlevel"] = int(data)
        else:
            raise PermissionError(13, "Permission denied")
        entry["generation"] += 1


@dataclasses.dataclass
class StubService:
    """``POST /v1/vm/<uuid>/attest/challenge`` and ``/attest`` with the real SNP core."""

    platform: SnpPlatform
    vm_id: str
    payload: bytes
    policy: SnpReferencePolicy
    status_script: list[int] = dataclasses.field(default_factory=list)
    nonces: set[str] = dataclasses.field(default_factory=set)
    requests: list[str] = dataclasses.field(default_factory=list)
    released: int = 0

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append(path)
        if self.status_script:
            status = self.status_script.pop(0)
            return status, {"code": status, "message": "scripted", "errors": {}}
        prefix = f"/v1/vm/{self.vm_id}/attest"
        if path == f"{prefix}/challenge":
            nonce = base64.b64encode(secrets.token_bytes(32)).decode()
            self.nonces.add(nonce)
            return 200, {"nonce": nonce, "expires-at": 0}
        if path != prefix:
            return 404, {"code": 404, "message": "no such VM", "errors": {"reason": "not_found"}}
        nonce = str(body.get("nonce"))
        if nonce not in self.nonces:
            return 409, {"code": 409, "message": "bad nonce", "errors": {"reason": "nonce"}}
        self.nonces.discard(nonce)
        check = check_report(
            base64.b64decode(body["report"]),
            [self.platform.anchor()],
            cert_table=base64.b64decode(body.get("cert-table", "")) or None,
        )
        if check.verified is None:
            return 403, {"code": 403, "message": check.failure, "errors": {"reason": check.code}}
        try:
            attestation = accept(
                check.verified, self.policy, nonce=nonce, tee_key=body["tee-pubkey"]
            )
        except (PolicyViolation, ParseError) as exc:
            errors = {"reason": exc.code, "reasons": list(getattr(exc, "reasons", []))}
            return 403, {"code": 403, "message": exc.message, "errors": errors}
        self.released += 1
        return 200, {"payload": attestation.encrypt_payload(self.payload, body["tee-pubkey"])}


class StubServer:
    """Serve a :class:`StubService` on 127.0.0.1 (HTTPS with ``cert``/``key`` PEM files)."""

    def __init__(self, service: StubService, tls: tuple[Path, Path] | None = None) -> None:
        stub = service

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = stub.handle(self.path, body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
