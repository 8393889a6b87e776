"""Request bodies: parsed once, and a lone surrogate is still refused however it is written.

``parse_json`` serialises a body again only when its text holds a surrogate escape; these
tests pin what that fast path must keep: every way of writing a lone surrogate is a 400,
a proper surrogate pair and a literal backslash-u text are accepted.
"""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from attestd.api.state import parse_json
from attestd.errors import ParseError
from tests.servicefix import sev_registration

VM = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

#: JSON string literals (the bytes between the quotes) that hold a lone surrogate
LONE = [
    rb"\ud800",  # high surrogate alone
    rb"\uDFFF",  # low surrogate alone, upper-case hex
    rb"x\uDc00y",  # low surrogate alone, mixed case
    rb"\udc00\ud800",  # low then high: not a pair
    rb"\ud83d\u0041",  # high surrogate followed by a non-surrogate escape
    rb"\\\ud800",  # an escaped backslash, then a real surrogate escape
]


def _body(passphrase: bytes) -> bytes:
    text = json.dumps(sev_registration()).encode()
    return text.replace(b'"correct horse battery"', b'"' + passphrase + b'"')


def _register(client: FlaskClient, owner: dict[str, str], body: bytes) -> TestResponse:
    """POST a registration body as application/json."""
    return client.post(f"/v1/vm/{VM}", data=body, headers=owner, content_type="application/json")


@pytest.mark.parametrize("literal", LONE)
def test_lone_surrogate_escape_is_400(
    client: FlaskClient, alice: dict[str, str], literal: bytes
) -> None:
    resp = _register(client, alice, _body(literal))
    assert resp.status_code == 400, resp.json
    assert resp.json["errors"]["reason"] == "malformed_input"
    assert client.get("/v1/vm", headers=alice).json["vms"] == []


def test_surrogate_encoded_as_utf8_bytes_is_400(client: FlaskClient, alice: dict[str, str]) -> None:
    resp = _register(client, alice, _body(b"\xed\xa0\x80"))  # U+D800 as if a character
    assert resp.status_code == 400, resp.json
    assert resp.json["errors"]["reason"] == "malformed_input"


def test_lone_surrogate_in_a_utf16_body_is_400(client: FlaskClient, alice: dict[str, str]) -> None:
    resp = _register(client, alice, _body(rb"\ud800").decode().encode("utf-16-le"))
    assert resp.status_code == 400, resp.json


@pytest.mark.parametrize("path", ["/launch", "/validate"])
def test_lone_surrogate_in_host_requests_is_400(client: FlaskClient, path: str) -> None:
    body = b'{"launch-id": "\\ud800", "pdh": "\\udfff"}'
    resp = client.post(f"/v1/vm/{VM}{path}", data=body, content_type="application/json")
    assert resp.status_code == 400, resp.json
    assert resp.json["errors"]["reason"] == "malformed_input"


@pytest.mark.parametrize(
    "literal",
    [
        rb"\ud83d\ude00",  # a surrogate pair: U+1F600
        rb"\uD83D\uDE00",  # the same, upper-case hex
        rb"\\ud800",  # an escaped backslash and the text "ud800": no surrogate
        "\U0001f600".encode(),  # the character itself, as UTF-8
    ],
)
def test_pairs_and_literal_backslash_u_are_accepted(
    client: FlaskClient, alice: dict[str, str], literal: bytes
) -> None:
    resp = _register(client, alice, _body(literal))
    assert resp.status_code == 201, resp.json


def test_utf16_body_without_surrogates_is_accepted(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    resp = _register(client, alice, json.dumps(sev_registration()).encode("utf-16"))
    assert resp.status_code == 201, resp.json


def test_parse_json_values() -> None:
    assert parse_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert parse_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # UTF-8 BOM, as json.loads(bytes)
    for bad in [b"", b"{", b'{"a": "\\ud800"}', b'{"a": "\xed\xb0\x80"}', b"[" * 100_000]:
        with pytest.raises(ParseError):
            parse_json(bad)
