"""Per-application state: the service objects, metrics and request helpers."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, g, request
from marshmallow import Schema

from attestd.config import Settings
from attestd.errors import ParseError, WrongOwner
from attestd.service.factory import Services
from attestd.storage.ports import Principal, Store

#: Methods counted by name in /metrics; any other method is counted as ``other``.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

#: The prefix of an owner's base URL: ``/owners/<name>/v1`` serves the v1 API about
#: that owner's VM UUID namespace only.
OWNER_BASE = "/owners/<owner_name>"


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


def base_owner() -> str | None:
    """The owner name of the base URL ``/owners/<name>/v1`` (None at ``/v1``)."""
    name = g.get("attestd_base_owner")
    return None if name is None else str(name)


def base_owner_id() -> int | None:
    """The owner id of the request's base URL (None at ``/v1``; a name that names
    nobody gives an id no owner has: every VM there is unknown)."""
    name = base_owner()
    return None if name is None else state().services.principals.namespace(name)


def current_owner() -> Principal:
    """The authenticated owner (401 otherwise); at an owner base URL only that owner
    (403 for any other name, whether or not such an owner exists)."""
    owner = state().services.principals.authenticate_owner(bearer_token())
    name = base_owner()
    if name is not None and name != owner.name:
        raise WrongOwner(
            "this owner token is not for the owner of this base URL", reasons=["wrong_owner"]
        )
    return owner


#: A JSON ``\\u`` escape of a UTF-16 surrogate (D800-DFFF): the only way a body that
#: decodes as strict UTF-8 can carry a lone surrogate after parsing.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def parse_json(raw: bytes) -> Any:
    """The JSON document ``raw`` (UTF-8, or UTF-16/32 as :func:`json.loads` detects it),
    refused with :class:`ParseError` if it does not parse or if any string in it holds
    a lone surrogate (those parse but cannot be stored or sent to a guest as UTF-8).

    A UTF-8 body is decoded strictly (surrogates encoded as bytes are refused there),
    and only a text with a surrogate escape is serialised again to look for a lone one:
    the common body is parsed once and never re-encoded.
    """
    try:
        encoding = json.detect_encoding(raw)
        if encoding in ("utf-8", "utf-8-sig"):
            text = raw.decode(encoding)
            body = json.loads(text)
            if _SURROGATE_ESCAPE.search(text) is None:
                return body
        else:
            body = json.loads(raw)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError):
        raise ParseError("the request body must be a UTF-8 JSON document") from None
    return body


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
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise ParseError("the request body must be a JSON object")
    return schema.load(body)


#: What :func:`flask.jsonify` writes outside debug mode (sorted keys, compact, ASCII),
#: built once instead of per response
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def json_response(data: Any) -> Response:
    """A 200 JSON response, byte for byte what :func:`flask.jsonify` gives for plain JSON
    values, without its per-call provider lookup and encoder construction."""
    return Response(_ENCODER.encode(data) + "\n", mimetype="application/json")


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def _unsupported_media_type() -> Exception:
    from werkzeug.exceptions import UnsupportedMediaType

    return UnsupportedMediaType("the request body must be sent as application/json")


def _too_large(limit: int) -> Exception:
    from werkzeug.exceptions import RequestEntityTooLarge

    return RequestEntityTooLarge(f"the request body exceeds {limit} bytes")
