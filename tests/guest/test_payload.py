"""Strict payload validation: malformed input is refused before anything touches a disk."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from attestd.guest.errors import PayloadError
from attestd.guest.payload import (
    MAX_PAYLOAD_BYTES,
    parse_json,
    parse_payload,
    validate,
    validate_rotation,
)
from tests.guest.helpers import payload_bytes, payload_doc

VOL = {"device": "virtio:data-disk", "passphrase": "pw-data", "mount_point": "/data"}


def _doc() -> dict[str, Any]:
    return payload_doc(data=dict(VOL), logs={"device": "/dev/vdc", "passphrase": "pw-logs"})


def test_valid_payload() -> None:
    payload = parse_payload(payload_bytes(_doc()))
    assert payload.user_id == "owner-42"
    assert payload.env["app.env"]["APP_MODE"] == "production"
    assert payload.volumes["data"].passphrase == b"pw-data"
    assert payload.volumes["logs"].mount_point == "/logs"  # default /<name>
    assert payload.volumes["logs"].device == "/dev/vdc"


def test_fingerprint_ignores_secrets_only() -> None:
    a = parse_payload(payload_bytes(_doc()))
    other = _doc()
    other["volumes"]["data"]["passphrase"] = "changed"
    other["secret"]["credentials.env"]["DB_PASSWORD"] = "changed"
    b = parse_payload(payload_bytes(other))
    assert a.public_fingerprint() == b.public_fingerprint()
    assert a.full_digest(b"k" * 32) != b.full_digest(b"k" * 32)
    other["volumes"]["data"]["mount_point"] = "/srv/data"
    assert parse_payload(payload_bytes(other)).public_fingerprint() != a.public_fingerprint()
    assert "pw-data" not in json.dumps(a.volumes["data"].public())


def _mutated(path: list[str], value: object) -> dict[str, Any]:
    doc = copy.deepcopy(_doc())
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["version"], 2, "unsupported payload version"),
        (["version"], "1", "unsupported payload version"),
        (["version"], True, "unsupported payload version"),
        (["version"], KeyError, "missing field"),
        (["user_id"], KeyError, "missing field"),
        (["volumes"], KeyError, "missing field"),
        (["user_id"], "", "user_id"),
        (["user_id"], "a\nb", "user_id"),
        (["extra"], 1, "unknown field"),
        (["volumes", "data", "device"], KeyError, "missing field"),
        (["volumes", "data", "passphrase"], KeyError, "missing field"),
        (["volumes", "data", "passphrase"], "", "passphrase"),
        (["volumes", "data", "passphrase"], "x" * 513, "passphrase"),
        (["volumes", "data", "volume_id"], "vol-1", "unknown field"),
        (["volumes", "data", "device"], "/etc/passwd", "invalid device"),
        (["volumes", "data", "device"], "/dev/../etc/shadow", "invalid device"),
        (["volumes", "data", "device"], "virtio:" + "x" * 21, "invalid device"),
        (["volumes", "Bad"], dict(VOL, mount_point="/x"), "invalid volume name"),
        (["volumes", "../x"], dict(VOL, mount_point="/x"), "invalid volume name"),
        (["env", "../../etc/passwd"], {"A": "b"}, "invalid file name"),
        (["env", ".hidden"], {"A": "b"}, "invalid file name"),
        (["secret", "a/b"], {"A": "b"}, "invalid file name"),
        (["env", "app.env", "1BAD"], "x", "invalid variable name"),
        (["env", "app.env", "A"], "line\nbreak", "NUL/CR/LF"),
        (["env", "app.env", "A"], 5, "must be a string"),
        (["env"], [], "must be an object"),
        (["volumes", "data", "mount_point"], "/", "absolute path"),
        (["volumes", "data", "mount_point"], "data", "absolute path"),
        (["volumes", "data", "mount_point"], "/data/../etc", "'.' or '..'"),
        (["volumes", "data", "mount_point"], "/data/./x", "'.' or '..'"),
        (["volumes", "data", "mount_point"], "/data/", "absolute path"),
        (["volumes", "data", "mount_point"], "//data", "absolute path"),
        (["volumes", "data", "mount_point"], "/etc", "system directory"),
        (["volumes", "data", "mount_point"], "/usr", "system directory"),
        (["volumes", "data", "mount_point"], "/logs/sub", "overlap"),
        (["volumes", "data", "mount_point"], "/logs", "overlap"),
        (["volumes", "data", "device"], "/dev/vdc", "share a device"),
    ],
)
def test_malformed_payloads(path: list[str], value: object, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_payload(payload_bytes(_mutated(path, value)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"version":1,"version":1}', "duplicate key"),
        (b'{"version":NaN}', "non-standard"),
        (b"[1,2]", "must be an object"),
        (b"[" * 20000, "nested too deeply|not JSON"),
    ],
)
def test_bad_json(raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_payload(raw)


def test_oversized_payload() -> None:
    doc = _doc()
    doc["env"]["big.env"] = {f"K{i}": "v" * 4000 for i in range(6)}
    raw = payload_bytes(doc)
    assert len(raw) > MAX_PAYLOAD_BYTES
    with pytest.raises(PayloadError, match="more than"):
        parse_payload(raw)


def test_limits() -> None:
    doc = _doc()
    doc["volumes"] = {f"v{i}": {"device": f"/dev/vd{i}", "passphrase": "p"} for i in range(17)}
    with pytest.raises(PayloadError, match="more than 16 volumes"):
        validate(doc)
    doc = _doc()
    doc["env"] = {f"f{i}": {} for i in range(33)}
    with pytest.raises(PayloadError, match="more than 32 files"):
        validate(doc)


def test_api_request_maps_volume_id() -> None:
    """cvm-control's request: no version, volume_id mapped to the virtio serial."""
    doc = {
        "user_id": "user-abc",
        "volumes": {
            "data": {"volume_id": "vol-abc123", "passphrase": "secret", "mount_point": "/data"},
            "logs": {"device": "/dev/vdc", "passphrase": "secret2"},
        },
    }
    payload = validate(doc, api=True)
    assert payload.volumes["data"].device == "virtio:vol-abc123"
    assert payload.volumes["logs"].device == "/dev/vdc"
    with pytest.raises(PayloadError, match="missing field"):
        validate(doc)  # the payload form needs a version and device
    doc["volumes"]["data"]["device"] = "/dev/vdb"
    with pytest.raises(PayloadError, match="either device or volume_id"):
        validate(doc, api=True)


def test_rotation_request() -> None:
    specs = validate_rotation(
        parse_json(b'{"volumes":{"data":{"old_passphrase":"a","new_passphrase":"b"}}}')
    )
    assert (specs["data"].old, specs["data"].new) == (b"a", b"b")
    for bad in (
        b'{"volumes":{}}',
        b'{"volumes":{"data":{"old_passphrase":"a"}}}',
        b'{"volumes":{"data":{"old_passphrase":"a","new_passphrase":""}}}',
        b'{"volumes":{"DATA":{"old_passphrase":"a","new_passphrase":"b"}}}',
        b'{"volumes":{"data":{"old_passphrase":"a","new_passphrase":"b"}},"x":1}',
    ):
        with pytest.raises(PayloadError):
            validate_rotation(parse_json(bad))
