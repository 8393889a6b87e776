"""Body size limits hold for streamed (chunked) requests too."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from attestd.api import create_app
from attestd.config import Settings
from tests.servicefix import make_owner, sev_registration

VM = "0b5c1c3e-8a55-4c8e-9d7c-1a2b3c4d5e6f"
LIMIT = 4096


@pytest.fixture
def small_app(settings: Settings) -> Iterator[Flask]:
    """An app with small limits (firmware LIMIT bytes, JSON bodies LIMIT // 2)."""
    application = create_app(settings.replace(max_firmware_size=LIMIT, max_request_size=LIMIT // 2))
    yield application
    application.extensions["attestd"].store.dispose()


@dataclass
class _Reply:
    status_code: int
    json: Any


def _streamed(app: Flask, path: str, body: bytes, headers: dict[str, str]) -> _Reply:
    """POST ``body`` without Content-Length, as gunicorn hands a chunked request to the app."""
    environ = EnvironBuilder(
        path=path, method="POST", input_stream=io.BytesIO(body), headers=list(headers.items())
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    assert "CONTENT_LENGTH" not in environ
    chunks, status, _headers = run_wsgi_app(app, environ, buffered=True)
    return _Reply(int(status.split()[0]), json.loads(b"".join(chunks)))


@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT + 4096])
def test_streamed_firmware_over_the_limit_is_413_and_not_stored(
    small_app: Flask, size: int
) -> None:
    owner = make_owner(small_app, "alice")
    headers = {**owner, "Content-Type": "application/octet-stream"}
    resp = _streamed(small_app, "/v1/firmware", b"\x01" * size, headers)
    assert resp.status_code == 413, resp.json
    assert resp.json["errors"]["reason"] == "too_large"
    db = small_app.extensions["attestd"].store
    owner_id = (
        small_app.extensions["attestd"]
        .services.principals.authenticate_owner(owner["Authorization"].split()[1])
        .id
    )
    assert db.list_firmware(owner_id) == []
    truncated = hashlib.sha256(b"\x01" * LIMIT).hexdigest()
    assert db.firmware(owner_id, truncated) is None


def test_streamed_firmware_at_the_limit_is_stored_whole(small_app: Flask) -> None:
    owner = make_owner(small_app, "alice")
    headers = {**owner, "Content-Type": "application/octet-stream"}
    image = bytes(range(256)) * (LIMIT // 256)
    resp = _streamed(small_app, "/v1/firmware", image, headers)
    assert resp.status_code == 201, resp.json
    assert resp.json == {
        "created": True,
        "sha256": hashlib.sha256(image).hexdigest(),
        "size": LIMIT,
    }


def test_streamed_json_over_the_limit_is_413(small_app: Flask) -> None:
    owner = make_owner(small_app, "alice")
    body = json.dumps(sev_registration(**{"user-id": "u" * 100, "pad": "x" * LIMIT})).encode()
    resp = _streamed(small_app, f"/v1/vm/{VM}", body, {**owner, "Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json["errors"]["reason"] == "too_large"
