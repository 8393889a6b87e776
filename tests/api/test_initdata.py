"""SEV-SNP initdata through the API, on SQLite and PostgreSQL.

Every SNP VM gets its initdata at registration; ``GET /v1/vm/<uuid>/initdata`` serves it
(owner or host token) with the HOST_DATA the service then expects; ``POST`` is the
owner's explicit change, recorded in the events; attestation follows the stored
document (and refuses a VM with neither initdata nor pinned host-data).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient

from attestd.api import create_app
from attestd.config import Settings
from attestd.guest import initdata as doc
from attestd.sim.snp import SnpPlatform
from tests.servicefix import make_owner, sev_registration
from tests.snpfix import (
    GUEST_PIN,
    OTHER_VM,
    SECRET_VALUES,
    SNP_VM,
    Guest,
    attest_body,
    challenge,
    expected_initdata,
    owner_urls,
    refused_by_registration,
    register,
    snp_registration,
)


@pytest.fixture
def client(snp_app: Flask) -> FlaskClient:
    return snp_app.test_client()


def host_token(app: Flask, name: str, owner: str | None = None) -> dict[str, str]:
    token = app.extensions["attestd"].services.principals.create_host(name, owner=owner)
    return {"Authorization": f"Bearer {token}"}


def attest(client: FlaskClient, platform: SnpPlatform, digest: bytes, host_data: bytes) -> Any:
    body = attest_body(platform, Guest(), challenge(client), digest, host_data=host_data)
    return client.post(f"/v1/vm/{SNP_VM}/attest", json=body)


def test_registration_makes_initdata_served_with_its_host_data(
    client: FlaskClient, owner: dict[str, str], digest: bytes
) -> None:
    register(client, owner, snp_registration(digest, policy="0x30000"))
    resp = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert set(body) == {"scheme", "policy", "initdata", "host-data"}
    assert body["scheme"] == "amd-sev-snp" and body["policy"] == "0x0000000000030000"
    document = body["initdata"].encode("utf-8")
    assert document == expected_initdata(SNP_VM)
    parsed = doc.parse(document)
    assert parsed.services == owner_urls() and str(parsed.vm_id) == SNP_VM
    assert parsed.pin == GUEST_PIN and parsed.ca_pem is None
    assert body["host-data"] == hashlib.sha256(document).hexdigest()
    for value in SECRET_VALUES:
        assert value not in resp.get_data(as_text=True)


def test_initdata_is_stored_not_recomputed(
    snp_settings: Settings, snp_app: Flask, owner: dict[str, str], digest: bytes
) -> None:
    client = snp_app.test_client()
    register(client, owner, snp_registration(digest))
    first = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json
    changed = snp_registration(digest, **{"max-launches": 3})
    assert client.put(f"/v1/vm/{SNP_VM}", json=changed, headers=owner).status_code == 200
    assert client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json == first
    # another node (or a restart) with other settings serves the same stored bytes
    other = create_app(snp_settings.replace(public_urls=("https://moved.example/v1",)))
    try:
        again = other.test_client().get(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
        assert again.status_code == 200 and again.json == first
    finally:
        other.extensions["attestd"].services.store.dispose()


def test_host_tokens_read_initdata_as_host_endpoints_accept_them(
    snp_settings: Settings, digest: bytes
) -> None:
    app = create_app(snp_settings.replace(require_host_token=True))
    try:
        client = app.test_client()
        alice, bob = make_owner(app, "alice"), make_owner(app, "bob")
        register(client, alice, snp_registration(digest))
        url = f"/v1/vm/{SNP_VM}/initdata"
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer ath_wrong"}).status_code == 401
        assert client.get(url, headers=host_token(app, "any")).status_code == 200
        assert client.get(url, headers=host_token(app, "alices", "alice")).status_code == 200
        scoped = client.get(url, headers=host_token(app, "bobs", "bob"))
        assert scoped.status_code == 404 and scoped.json["errors"]["reasons"] == ["unknown_vm"]
        other_owner = client.get(url, headers=bob)
        assert other_owner.status_code == 404
        assert other_owner.json["errors"] == scoped.json["errors"]
        unknown = client.get(f"/v1/vm/{OTHER_VM}/initdata", headers=alice)
        assert unknown.status_code == 404 and unknown.json["errors"] == scoped.json["errors"]
        # the change is the owner's alone
        assert client.post(url, headers=host_token(app, "any2")).status_code == 401
        assert client.post(url, headers=bob).status_code == 404
    finally:
        app.extensions["attestd"].services.store.dispose()


def test_sev_vm_has_no_initdata_and_becomes_snp_with_one(
    client: FlaskClient, owner: dict[str, str], digest: bytes
) -> None:
    register(client, owner, sev_registration())
    resp = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
    assert resp.status_code == 422 and resp.json["errors"]["reasons"] == ["wrong_scheme"]
    assert client.post(f"/v1/vm/{SNP_VM}/initdata", headers=owner).status_code == 422
    put = client.put(f"/v1/vm/{SNP_VM}", json=snp_registration(digest), headers=owner)
    assert put.status_code == 200
    resp = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
    assert resp.status_code == 200
    assert resp.json["initdata"].encode() == expected_initdata(SNP_VM)


def test_without_public_urls_registration_works_and_attestation_fails_closed(
    snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    app = create_app(snp_settings.replace(public_urls=()))
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        register(client, owner, snp_registration(digest))
        resp = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
        assert resp.status_code == 409
        assert resp.json["errors"]["reason"] == "initdata_unavailable"
        assert "public_urls" in resp.json["message"]
        change = client.post(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
        assert change.status_code == 409 and "public_urls" in change.json["message"]
        refused = attest(client, snp_platform, digest, bytes(32))
        refused_by_registration(client, owner, refused, "host_data_unbound")
        # the owner may bind HOST_DATA by pinning it instead
        pinned = snp_registration(digest, **{"host-data": "ab" * 32})
        assert client.put(f"/v1/vm/{SNP_VM}", json=pinned, headers=owner).status_code == 200
        assert attest(client, snp_platform, digest, bytes.fromhex("ab" * 32)).status_code == 200
        # or give the service URL itself
        made = client.post(
            f"/v1/vm/{SNP_VM}/initdata",
            json={"services": ["https://mine.example/v1"], "pin": GUEST_PIN},
            headers=owner,
        )
        assert made.status_code == 200, made.json
        assert made.json["host-data"] == "ab" * 32  # the pin still wins
    finally:
        app.extensions["attestd"].services.store.dispose()


def test_attestation_expects_host_data_of_the_initdata(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest))
    served = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json
    expected = bytes.fromhex(served["host-data"])
    other = hashlib.sha256(served["initdata"].encode() + b"\n# tampered").digest()
    refused = attest(client, snp_platform, digest, other)
    refused_by_registration(client, owner, refused, "host_data_mismatch")
    assert attest(client, snp_platform, digest, expected).status_code == 200


def test_owner_changes_initdata_explicitly_and_attestation_follows(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest))
    old = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json
    revision = client.get(f"/v1/vm/{SNP_VM}", headers=owner).json["revision"]
    resp = client.post(
        f"/v1/vm/{SNP_VM}/initdata",
        json={"services": ["https://a.example/v1", "https://b.example/v1"]},
        headers=owner,
    )
    assert resp.status_code == 200, resp.json
    new = resp.json
    assert new["host-data"] != old["host-data"]
    parsed = doc.parse(new["initdata"].encode())
    assert parsed.services == ("https://a.example/v1", "https://b.example/v1")
    assert parsed.pin == GUEST_PIN  # not overridden: from the settings
    assert new["host-data"] == hashlib.sha256(new["initdata"].encode()).hexdigest()
    assert client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json == new
    assert client.get(f"/v1/vm/{SNP_VM}", headers=owner).json["revision"] == revision + 1
    events = client.get(f"/v1/vm/{SNP_VM}/events", headers=owner).json["events"]
    (changed,) = [e for e in events if e["kind"] == "initdata-changed"]
    assert changed["detail"]["old-sha256"] == old["host-data"]
    assert changed["detail"]["new-sha256"] == new["host-data"]
    refused = attest(client, snp_platform, digest, bytes.fromhex(old["host-data"]))
    refused_by_registration(client, owner, refused, "host_data_mismatch")
    assert attest(client, snp_platform, digest, bytes.fromhex(new["host-data"])).status_code == 200
    # an empty body rebuilds from the settings: the original document again
    back = client.post(f"/v1/vm/{SNP_VM}/initdata", headers=owner)
    assert back.status_code == 200 and back.json == old


def test_host_data_is_remembered_only_for_the_same_initdata_bytes(
    client: FlaskClient,
    owner: dict[str, str],
    snp_platform: SnpPlatform,
    digest: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The initdata is parsed once per document (its HOST_DATA remembered by the SHA-256
    of its bytes), and a changed document, or another VM's, is never answered from it."""
    from attestd.service import attestations

    parsed: list[bytes] = []
    real = attestations.expected_host_data

    def counted(vm: Any, reg: Any) -> bytes | None:
        parsed.append(vm.initdata)
        return real(vm, reg)

    monkeypatch.setattr(attestations, "expected_host_data", counted)
    register(client, owner, snp_registration(digest))
    old = bytes.fromhex(client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json["host-data"])
    assert attest(client, snp_platform, digest, old).status_code == 200
    assert attest(client, snp_platform, digest, old).status_code == 200
    assert len(parsed) == 1  # the second attest was answered from memory
    changed = client.post(
        f"/v1/vm/{SNP_VM}/initdata", json={"services": ["https://a.example/v1"]}, headers=owner
    )
    assert changed.status_code == 200, changed.json
    new = bytes.fromhex(changed.json["host-data"])
    refused = attest(client, snp_platform, digest, old)
    refused_by_registration(client, owner, refused, "host_data_mismatch")
    assert attest(client, snp_platform, digest, new).status_code == 200
    assert len(parsed) == 2  # the new document was parsed, then remembered
    # another VM of the owner: its own document, its own HOST_DATA
    register(client, owner, snp_registration(digest), uuid=OTHER_VM)
    theirs = client.get(f"/v1/vm/{OTHER_VM}/initdata", headers=owner).json["host-data"]
    assert theirs not in (old.hex(), new.hex())
    guest = Guest()
    wrong = attest_body(snp_platform, guest, challenge(client, OTHER_VM), digest, host_data=new)
    refused = client.post(f"/v1/vm/{OTHER_VM}/attest", json=wrong)
    refused_by_registration(client, owner, refused, "host_data_mismatch", OTHER_VM)
    right = attest_body(snp_platform, guest, challenge(client, OTHER_VM), digest, vm=OTHER_VM)
    assert client.post(f"/v1/vm/{OTHER_VM}/attest", json=right).status_code == 200
    assert len(parsed) == 3


@pytest.mark.parametrize(
    "body",
    [
        {"pin": "sha256//short"},
        {"ca-pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
        {"services": ["ftp://x.example"]},
        {"services": []},
        {"private-key": "x"},
    ],
)
def test_bad_change_is_refused_and_nothing_changes(
    client: FlaskClient, owner: dict[str, str], digest: bytes, body: dict[str, Any]
) -> None:
    register(client, owner, snp_registration(digest))
    before = client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json
    resp = client.post(f"/v1/vm/{SNP_VM}/initdata", json=body, headers=owner)
    assert resp.status_code == 422, resp.json
    assert client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner).json == before


def test_responses_match_the_openapi_document(
    snp_app: Flask, client: FlaskClient, owner: dict[str, str], digest: bytes
) -> None:
    register(client, owner, snp_registration(digest))
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", snp_app)
    for method, resp in (
        ("GET", client.get(f"/v1/vm/{SNP_VM}/initdata", headers=owner)),
        ("POST", client.post(f"/v1/vm/{SNP_VM}/initdata", headers=owner)),
        ("GET", client.get(f"/v1/vm/{OTHER_VM}/initdata", headers=owner)),
    ):
        operation = schema["/v1/vm/{uuid}/initdata"][method]
        operation.validate_response(resp)
