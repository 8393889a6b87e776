"""Per-application state: the service objects, metrics and request helpers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, request
from marshmallow import Schema

from attestd.config import Settings
from attestd.errors import ParseError
from attestd.service.factory import Services
from attestd.storage.ports import Principal, Store

#: Methods counted by name in /metrics; any other method is counted as ``other``.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


@dataclass
class Metrics:
    """Process-local counters for /metrics (Prometheus text).

    Every label set is bounded: endpoints are the application's URL rules (or
    ``unmatched``), methods outside :data:`KNOWN_METHODS` count as ``other`` and
    statuses are the HTTP statuses the application answers with.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_count: Counter[str] = field(default_factory=Counter)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one request."""
        if method not in KNOWN_METHODS:
            method = "other"
        with self.lock:
            self.requests[(endpoint, method, status)] += 1
            self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds
            self.latency_count[endpoint] += 1

    def outcome(self, operation: str, result: str) -> None:
        """Count one launch / validation outcome."""
        with self.lock:
            self.outcomes[(operation, result)] += 1


@dataclass
class AppState:
    """Everything a view needs; stored in ``app.extensions["attestd"]``."""

    services: Services
    metrics: Metrics

    @property
    def settings(self) -> Settings:
        """The settings the services run with."""
        return self.services.settings

    @property
    def store(self) -> Store:
        """The database (as its repository Protocols)."""
        return self.services.store


def state() -> AppState:
    """The current application's state."""
    value = current_app.extensions["attestd"]
    if not isinstance(value, AppState):
        raise TypeError("the application was not built by attestd.api.create_app")
    return value


def bearer_token() -> str | None:
    """The bearer token of the request, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_owner() -> Principal:
    """The authenticated owner (401 otherwise)."""
    return state().services.principals.authenticate_owner(bearer_token())


def load_json(schema: Schema) -> Any:
    """Parse and validate the JSON body with ``schema``."""
    if not _is_json(request.mimetype):
        raise _unsupported_media_type()
    limit = state().settings.max_request_size
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise _too_large(limit)
    try:
        body = json.loads(raw)
        # lone surrogates parse but cannot be stored or sent to the guest as UTF-8
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError):
        raise ParseError("the request body must be a UTF-8 JSON document") from None
    if not isinstance(body, dict):
        raise ParseError("the request body must be a JSON object")
    return schema.load(body)


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def _unsupported_media_type() -> Exception:
    from werkzeug.exceptions import UnsupportedMediaType

    return UnsupportedMediaType("the request body must be sent as application/json")


def _too_large(limit: int) -> Exception:
    from werkzeug.exceptions import RequestEntityTooLarge

    return RequestEntityTooLarge(f"the request body exceeds {limit} bytes")
