"""JSON bodies must be declared as JSON, and integer fields must be JSON integers."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from tests.servicefix import sev_registration

VM = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_type_is_415(
    client: FlaskClient, alice: dict[str, str], content_type: str
) -> None:
    body = json.dumps(sev_registration())
    resp = client.post(f"/v1/vm/{VM}", data=body, headers=alice, content_type=content_type)
    assert resp.status_code == 415
    assert resp.json["errors"]["reason"] == "unsupported_media_type"
    assert client.get("/v1/vm", headers=alice).json["vms"] == []


def test_json_content_type_with_charset_is_accepted(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    body = json.dumps(sev_registration())
    resp = client.post(
        f"/v1/vm/{VM}", data=body, headers=alice, content_type="application/json; charset=utf-8"
    )
    assert resp.status_code == 201, resp.json


@pytest.mark.parametrize("value", [1.9, "4", True])
def test_integer_fields_take_only_json_integers(
    client: FlaskClient, alice: dict[str, str], value: object
) -> None:
    body = sev_registration()
    body["cpu-count"] = value
    resp = client.post(f"/v1/vm/{VM}", json=body, headers=alice)
    assert resp.status_code == 422, resp.json
    assert resp.json["errors"]["reason"] == "invalid_request"
