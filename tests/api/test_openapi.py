"""The committed OpenAPI document matches the code and covers every route."""

from __future__ import annotations

import json
import re

from flask import Flask
from flask.testing import FlaskClient

from attestd.api.openapi import build_spec, render
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
        if method != "parameters"
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routed.add((path, method))
    assert routed == documented
    served = client.get("/v1/openapi.json")
    assert served.status_code == 200
    assert json.loads(served.data) == spec
