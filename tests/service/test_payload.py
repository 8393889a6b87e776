"""Every in-guest payload the service builds matches the published
``schemas/guest-payload-v1.schema.json`` (validated by jsonschema_rs, not by attestd)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from attestd.api.schemas import RegistrationSchema
from attestd.service.payload import PAYLOAD_GUID, payload_entries, resolve_secrets
from tests.conftest import PROJECT_ROOT

VM = "3d1f0a9e-7c2b-4e8d-9f61-0a2b4c6d8e10"
VALIDATOR = jsonschema_rs.validator_for(
    json.loads((PROJECT_ROOT / "schemas" / "guest-payload-v1.schema.json").read_text())
)

names = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,12}\Z")
files = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
keys = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z")
values = st.text(
    st.characters(exclude_characters="\x00\r\n", exclude_categories=["Cs"]), max_size=40
)
volume = st.builds(
    lambda name, serial, gen, pw, mount: {
        "type": "volume",
        "name": name,
        "device": f"virtio:{serial}",
        **({"generate": True} if gen else {"passphrase": pw}),
        **({"mount-point": f"/mnt/{name}"} if mount else {}),
    },
    names,
    st.from_regex(r"\A[A-Za-z0-9_.-]{1,20}\Z"),
    st.booleans(),
    st.text(min_size=1, max_size=60).filter(lambda p: "\x00" not in p),
    st.booleans(),
)
envfile = st.builds(
    lambda kind, name, vals: {"type": kind, "name": name, "values": vals},
    st.sampled_from(["env", "secret-file"]),
    files,
    st.dictionaries(keys, values, max_size=4),
)
luks = st.builds(
    lambda pw: {"type": "luks-passphrase", "passphrase": pw},
    st.text(min_size=1, max_size=40).filter(lambda p: "\x00" not in p),
)


@given(
    secrets=st.lists(volume | envfile | luks, max_size=6),
    user_id=st.none() | st.from_regex(r"\A[A-Za-z0-9 ._@-]{1,40}\Z"),
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_built_payloads_match_the_published_schema(
    secrets: list[dict[str, Any]], user_id: str | None
) -> None:
    body: dict[str, Any] = {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": ["ab" * 32],
        "secrets": secrets,
    }
    if user_id is not None:
        body["user-id"] = user_id
    try:
        reg = RegistrationSchema().load(body)
    except ValidationError:
        return  # duplicates / overlaps the service refuses anyway
    stored = resolve_secrets(reg.secrets)
    entries = dict(payload_entries(reg.user_id or VM, stored))
    raw = entries[PAYLOAD_GUID]
    doc = json.loads(raw)
    errors = [e.message for e in VALIDATOR.iter_errors(doc)]
    assert not errors, (doc, errors)
    assert raw == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def test_the_schema_rejects_what_the_guest_must_not_get() -> None:
    """The validator really checks: a few documents outside the contract are refused."""
    good = {"version": 1, "user_id": "u", "volumes": {}}
    assert VALIDATOR.is_valid(good)
    for bad in (
        {**good, "version": 2},
        {**good, "extra": 1},
        {**good, "volumes": {"Data": {"device": "virtio:x", "passphrase": "p"}}},
        {**good, "volumes": {"d": {"device": "/etc/passwd", "passphrase": "p"}}},
        {**good, "env": {"../x": {}}},
    ):
        assert not VALIDATOR.is_valid(bad), bad
