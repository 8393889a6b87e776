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
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from attestd import errors as e

logger = logging.getLogger(__name__)

#: Exception class -> HTTP status. Looked up along the MRO; a test checks that
#: every service class in ``attestd.errors`` is listed (host-side errors are not)
#: and that every row is reachable through a real request.
STATUS: dict[type[e.AttestdError], int] = {
    e.AttestdError: 500,
    e.ParseError: 400,
    e.InvalidRegistration: 422,
    e.Unsupported: 422,
    e.AttestationFailed: 403,
    e.ChainInvalid: 403,
    e.MeasurementMismatch: 403,
    e.PolicyViolation: 403,
    e.NotAccepted: 403,
    e.SecretTooLarge: 413,
    e.CekRequired: 422,
    e.CekUnavailable: 503,
    e.AuthenticationError: 401,
    e.TooManyRequests: 429,
    e.NotFound: 404,
    e.Conflict: 409,
    e.RegistrationChanged: 409,
    e.OwnerRequired: 409,
    e.WrongOwner: 403,
    e.NonceRejected: 409,
    e.InitdataUnavailable: 409,
    e.ChallengeLimit: 429,
    e.StorageUnavailable: 503,
    e.StorageKeyError: 503,
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


def problem_fields(problems: list[e.Problem]) -> dict[str, Any]:
    """The 422 field map of registration problems (nested like marshmallow's)."""
    out: dict[str, Any] = {}
    for problem in problems:
        path = [problem.field] if isinstance(problem.field, str) else list(problem.field)
        node = out
        for part in path[:-1]:
            child = node.setdefault(str(part), {})
            if isinstance(child, list):  # messages of the container itself
                child = node[str(part)] = {"_schema": child}
            node = child
        leaf = node.setdefault(str(path[-1]), [])
        if isinstance(leaf, dict):
            leaf = leaf.setdefault("_schema", [])
        leaf.append(problem.message)
    return out


def _attestd_error(exc: e.AttestdError) -> Response:
    if isinstance(exc, e.InvalidRegistration):
        return _fields_error(problem_fields(exc.problems), [p.code for p in exc.problems])
    status = status_for(exc)
    if status >= 500:
        logger.error("%s: %s", exc.code, exc.message)
    errors: dict[str, Any] = {"reason": exc.code}
    if exc.reasons:
        errors["reasons"] = list(exc.reasons)
    response = envelope(status, exc.message, errors)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    return response


def _fields_error(messages: dict[str, Any], codes: list[str] | None = None) -> Response:
    errors: dict[str, Any] = {"reason": "invalid_request", "fields": messages}
    if codes:
        errors["reasons"] = codes
    return envelope(422, "the request does not match the schema", errors)


def _validation_error(exc: ValidationError) -> Response:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return _fields_error(messages)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    reason = {
        404: "not_found",
        405: "method_not_allowed",
        413: "too_large",
        415: "unsupported_media_type",
    }.get(status, "http_error")
    response = envelope(status, exc.description or HTTPStatus(status).phrase, {"reason": reason})
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    return response


def _unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return envelope(500, "internal error", {"reason": "internal_error"})


def init_app(app: Flask) -> None:
    """Install the handlers."""
    app.register_error_handler(e.AttestdError, _attestd_error)
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
