"""The one error table (exception -> HTTP status) and the JSON error envelope.

Every error response is ``{"code": <http status>, "status": <reason phrase>,
"message": ..., "errors": {"reason": <stable code>, ...}}``. Nothing else in
attestd knows HTTP status codes.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from attestd import errors as e
from attestd.storage.keys import StorageKeyError

logger = logging.getLogger(__name__)

#: Exception class -> HTTP status. Looked up along the MRO; a test checks that
#: every class in ``attestd.errors`` is listed.
STATUS: dict[type[e.AttestdError], int] = {
    e.AttestdError: 500,
    e.ParseError: 400,
    e.Unsupported: 422,
    e.AttestationFailed: 403,
    e.ChainInvalid: 403,
    e.MeasurementMismatch: 403,
    e.PolicyViolation: 403,
    e.SecretTooLarge: 413,
    e.CekUnavailable: 503,
    e.AuthenticationError: 401,
    e.PermissionDenied: 403,
    e.NotFound: 404,
    e.Conflict: 409,
    e.StorageUnavailable: 503,
    e.LaunchError: 502,
    e.GuestError: 500,
    StorageKeyError: 503,
}


def status_for(exc: e.AttestdError) -> int:
    """The HTTP status of an attestd error (nearest listed base class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def envelope(status: int, message: str, errors: dict[str, Any]) -> Response:
    """The JSON error response."""
    response = jsonify(
        {"code": status, "status": HTTPStatus(status).phrase, "message": message, "errors": errors}
    )
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="attestd"'
    return response


def _attestd_error(exc: e.AttestdError) -> Response:
    status = status_for(exc)
    if status >= 500:
        logger.error("%s: %s", exc.code, exc.message)
    errors: dict[str, Any] = {"reason": exc.code}
    if exc.reasons:
        errors["reasons"] = list(exc.reasons)
    return envelope(status, exc.message, errors)


def _validation_error(exc: ValidationError) -> Response:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return envelope(
        422,
        "the request does not match the schema",
        {
            "reason": "invalid_request",
            "fields": messages,
        },
    )


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    reason = {
        404: "not_found",
        405: "method_not_allowed",
        413: "too_large",
        415: "unsupported_media_type",
    }.get(status, "http_error")
    return envelope(status, exc.description or HTTPStatus(status).phrase, {"reason": reason})


def _unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return envelope(500, "internal error", {"reason": "internal_error"})


def init_app(app: Flask) -> None:
    """Install the handlers."""
    app.register_error_handler(e.AttestdError, _attestd_error)
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
