"""The committed OpenAPI document matches the code and covers every route."""

from __future__ import annotations

import json
import re

from flask import Flask
from flask.testing import FlaskClient

from attestd.api.openapi import OWNER_SCOPED, SERVERS, build_spec, render
from tests.conftest import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "schemas" / "openapi-v1.json"


def test_committed_document_is_current() -> None:
    assert COMMITTED.read_text() == render(), (
        "schemas/openapi-v1.json is stale: run `attestd openapi > schemas/openapi-v1.json`"
    )


def test_every_route_is_documented(app: Flask, client: FlaskClient) -> None:
    spec = build_spec()
    documented = {
        (path, method.upper())
        for path, ops in spec["paths"].items()
        for method in ops
        if method not in ("parameters", "servers")
    }
    routed = set()
    at_owner_base = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_0-9]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            if path.startswith("/owners/{owner_name}/v1/"):
                at_owner_base.add((path.removeprefix("/owners/{owner_name}"), method))
            else:
                routed.add((path, method))
    assert routed == documented
    # the owner's base URL (a server of the document) serves exactly the VM and firmware
    # paths, which are the paths without a server of their own
    assert at_owner_base == {(p, m) for p, m in documented if p.startswith(OWNER_SCOPED)}
    assert spec["servers"] == SERVERS
    assert all(("servers" in spec["paths"][p]) != p.startswith(OWNER_SCOPED) for p, _ in documented)
    served = client.get("/v1/openapi.json")
    assert served.status_code == 200
    assert json.loads(served.data) == spec


def test_error_table_is_exhaustive() -> None:
    import inspect

    from attestd import errors
    from attestd.api.errors import STATUS

    declared = {
        obj
        for _name, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.AttestdError)
    }
    host_side = set(errors.HOST_SIDE_ERRORS)
    assert declared - host_side == set(STATUS)
    assert not host_side & set(STATUS)  # the service never raises them
    assert STATUS[errors.RegistrationChanged] == 409
    assert STATUS[errors.CekRequired] == 422
    assert STATUS[errors.ParseError] == 400
    assert STATUS[errors.AuthenticationError] == 401
    assert STATUS[errors.MeasurementMismatch] == 403
    assert STATUS[errors.NotFound] == 404
    assert STATUS[errors.Conflict] == 409
    assert STATUS[errors.SecretTooLarge] == 413
    assert STATUS[errors.Unsupported] == 422
    assert STATUS[errors.StorageUnavailable] == 503


def test_health_metrics_and_unknown_routes(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok", "host_tokens": "not required"}
    client.get("/v1/vm")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    assert 'attestd_http_requests_total{endpoint="/v1/vm",method="GET",status="401"} 1' in (
        metrics.text
    )
    assert "attestd_vms 0" in metrics.text
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json["errors"]["reason"] == "not_found"
    wrong = client.patch("/v1/vm")
    assert wrong.status_code == 405 and wrong.json["code"] == 405


def test_database_down_is_503(app: Flask, client: FlaskClient) -> None:
    from attestd.storage.sql import Database

    state = app.extensions["attestd"]
    broken = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    real = state.services.store
    state.services.store = broken
    try:
        resp = client.get("/healthz")
        assert resp.status_code == 503 and resp.json["errors"]["reason"] == "storage_unavailable"
    finally:
        state.services.store = real
        broken.dispose()
