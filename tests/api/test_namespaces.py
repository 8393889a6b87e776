"""Each owner has its own VM UUID namespace (issue 10), through the API on SQLite and
PostgreSQL: two owners register the same UUID independently, nobody can squat or even
see another owner's UUID, and hosts and guests name the owner by an owner-scoped host
token or by the owner's base URL ``/owners/<name>/v1`` (at ``/v1`` a UUID that several
owners registered is 409 ``owner_required``)."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from attestd.guest import initdata
from attestd.sim.platform import SimulatedPlatform
from attestd.sim.snp import SnpPlatform
from tests.api.simhost import Boot, Outcome, launch_body, measure, run_launch, sev, validate_body
from tests.servicefix import make_owner
from tests.snpfix import (
    SECRET_VALUES,
    Guest,
    attest_body,
    challenge,
    measurement,
    snp_registration,
)

VM = "5e0c1b2a-4d3f-4a6b-8c7d-9e0f1a2b3c4d"
UNREGISTERED = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
PASSPHRASE = {"alice": "alice-root-pass", "bob": "bob-root-pass"}


def _sev(ovmf: bytes, who: str) -> dict[str, Any]:
    secrets = [{"type": "luks-passphrase", "passphrase": PASSPHRASE[who]}]
    return sev(ovmf, secrets=secrets, **{"user-id": f"{who}-vm"})


def _host(app: Flask, name: str, owner: str | None = None) -> dict[str, str]:
    token = app.extensions["attestd"].services.principals.create_host(name, owner=owner)
    return {"Authorization": f"Bearer {token}"}


def _released(outcome: Outcome) -> bytes:
    """The secret table the guest got (the payload entries' bytes)."""
    assert outcome.released, (outcome.launch.json, outcome.validate and outcome.validate.json)
    return b"".join(entry.data for entry in outcome.table)


def _two_owners(client: FlaskClient, app: Flask, ovmf: bytes) -> dict[str, dict[str, str]]:
    owners = {who: make_owner(app, who) for who in ("alice", "bob")}
    for who, headers in owners.items():
        resp = client.post(f"/v1/vm/{VM}", json=_sev(ovmf, who), headers=headers)
        assert resp.status_code == 201, resp.json
    return owners


def _same_but_uuid(first: Any, second: Any) -> None:
    """Two answers identical but for the UUID each names: status, headers, full body."""
    assert first.status_code == second.status_code
    assert first.headers.get("Content-Type") == second.headers.get("Content-Type")
    assert first.get_data(as_text=True).replace(VM, "U") == second.get_data(as_text=True).replace(
        UNREGISTERED, "U"
    )


def test_two_owners_register_the_same_uuid_and_each_sees_only_its_own(
    client: FlaskClient, app: Flask
) -> None:
    alice, bob = make_owner(app, "alice"), make_owner(app, "bob")
    for headers, who in ((alice, "alice"), (bob, "bob")):
        body = {
            "scheme": "amd-sev",
            "policy": 1,
            "firmware-hashes": ["ab" * 32],
            "user-id": f"{who}-vm",
            "secrets": [{"type": "luks-passphrase", "passphrase": PASSPHRASE[who]}],
        }
        resp = client.post(f"/v1/vm/{VM}", json=body, headers=headers)
        assert resp.status_code == 201, resp.json
    for headers, who, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
        shown = client.get(f"/v1/vm/{VM}", headers=headers)
        assert shown.status_code == 200
        assert shown.json["registration"]["user-id"] == f"{who}-vm"
        listed = client.get("/v1/vm", headers=headers).json["vms"]
        assert [vm["uuid"] for vm in listed] == [VM]
        trail = client.get(f"/v1/vm/{VM}/events", headers=headers).json["events"]
        assert [e["kind"] for e in trail] == ["registered"]
        text = shown.get_data(as_text=True) + str(listed) + str(trail)
        assert other not in text and PASSPHRASE[who] not in text
    # a change in one namespace leaves the other alone
    assert client.delete(f"/v1/vm/{VM}", headers=alice).status_code == 204
    assert client.get(f"/v1/vm/{VM}", headers=alice).status_code == 404
    assert client.get(f"/v1/vm/{VM}", headers=bob).json["registration"]["user-id"] == "bob-vm"
    # the same at each owner's base URL
    mine = client.get(f"/owners/bob/v1/vm/{VM}", headers=bob)
    assert mine.status_code == 200 and mine.json["registration"]["user-id"] == "bob-vm"


def test_no_owner_can_squat_or_probe_another_owners_uuid(client: FlaskClient, app: Flask) -> None:
    alice, bob, carol = (make_owner(app, who) for who in ("alice", "bob", "carol"))
    body = {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": ["ab" * 32],
        "secrets": [{"type": "luks-passphrase", "passphrase": "pw"}],
    }
    # alice takes the UUID first: bob's registration of it still succeeds (no squatting)
    assert client.post(f"/v1/vm/{VM}", json=body, headers=alice).status_code == 201
    assert client.post(f"/v1/vm/{VM}", json=body, headers=bob).status_code == 201
    again = client.post(f"/v1/vm/{VM}", json=body, headers=bob)  # once per owner
    assert again.status_code == 409 and again.json["errors"]["reasons"] == ["uuid_taken"]
    # for carol, their UUID answers exactly like one nobody registered
    for method in ("get", "put", "delete"):
        kwargs: dict[str, Any] = {"headers": carol}
        if method == "put":
            kwargs["json"] = body
        taken = getattr(client, method)(f"/v1/vm/{VM}", **kwargs)
        free = getattr(client, method)(f"/v1/vm/{UNREGISTERED}", **kwargs)
        assert taken.status_code == 404, (method, taken.json)
        _same_but_uuid(taken, free)
    taken = client.get(f"/v1/vm/{VM}/events", headers=carol)
    free = client.get(f"/v1/vm/{UNREGISTERED}/events", headers=carol)
    assert taken.status_code == 404
    _same_but_uuid(taken, free)
    # and carol's own registration of it is hers: 201 (before: 409 uuid_taken, an oracle)
    assert client.post(f"/v1/vm/{VM}", json=body, headers=carol).status_code == 201
    # alice's and bob's VMs are untouched by all of it
    for headers in (alice, bob):
        assert client.get(f"/v1/vm/{VM}", headers=headers).json["revision"] == 1


def test_owner_tokens_only_at_their_own_base_url(client: FlaskClient, app: Flask) -> None:
    alice, _bob = make_owner(app, "alice"), make_owner(app, "bob")
    body = {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": ["ab" * 32],
        "secrets": [{"type": "luks-passphrase", "passphrase": "pw"}],
    }
    made = client.post(f"/owners/alice/v1/vm/{VM}", json=body, headers=alice)
    assert made.status_code == 201
    assert client.get(f"/v1/vm/{VM}", headers=alice).status_code == 200
    # bob's base URL and the base URL of nobody answer alike: 403 wrong_owner
    answers = [
        client.post(f"/owners/{name}/v1/vm/{UNREGISTERED}", json=body, headers=alice)
        for name in ("bob", "nobody")
    ]
    answers += [client.get(f"/owners/{name}/v1/vm", headers=alice) for name in ("bob", "nobody")]
    for resp in answers:
        assert resp.status_code == 403, resp.json
        assert resp.json["errors"]["reason"] == "wrong_owner"
    assert answers[0].get_data() == answers[1].get_data()
    assert answers[2].get_data() == answers[3].get_data()
    assert [vm["uuid"] for vm in client.get("/v1/vm", headers=alice).json["vms"]] == [VM]


def test_hosts_name_the_owner_by_scoped_token_or_base_url(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = host_app.test_client()
    owners = _two_owners(client, host_app, ovmf)
    for_alice = _host(host_app, "alice-node", owner="alice")
    unscoped = _host(host_app, "any-node")

    # an owner-scoped host token launches its owner's VM, though bob has the same UUID
    outcome = run_launch(client, platform, VM, Boot(firmware=ovmf), headers=for_alice)
    table = _released(outcome)
    assert PASSPHRASE["alice"].encode() in table and PASSPHRASE["bob"].encode() not in table

    # an unscoped token (and an anonymous development host) at /v1: which owner's?
    for headers in (unscoped, {}):
        refused = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform), headers=headers)
        assert refused.status_code == 409, refused.json
        assert refused.json["errors"]["reason"] == "owner_required"
        assert "/owners/<name>/v1" in refused.json["message"]
        assert "session" not in refused.json

    # ... at bob's base URL it is bob's
    outcome = run_launch(
        client, platform, VM, Boot(firmware=ovmf), headers=unscoped, base="/owners/bob/v1"
    )
    table = _released(outcome)
    assert PASSPHRASE["bob"].encode() in table and PASSPHRASE["alice"].encode() not in table

    # alice's scoped token at bob's base URL, or at the base URL of nobody: 403 alike
    for name in ("bob", "nobody"):
        resp = client.post(
            f"/owners/{name}/v1/vm/{VM}/launch", json=launch_body(platform), headers=for_alice
        )
        assert resp.status_code == 403 and resp.json["errors"]["reason"] == "wrong_owner"

    # at the base URL of nobody an unscoped host finds no VM, as for an unknown UUID
    nobody = client.post(
        f"/owners/nobody/v1/vm/{VM}/launch", json=launch_body(platform), headers=unscoped
    )
    unknown = client.post(
        f"/owners/bob/v1/vm/{UNREGISTERED}/launch", json=launch_body(platform), headers=unscoped
    )
    assert nobody.status_code == 404
    _same_but_uuid(nobody, unknown)

    # each owner's audit trail holds its own launch only (refusals before the owner was
    # known are no owner's events)
    for headers in owners.values():
        trail = client.get(f"/v1/vm/{VM}/events", headers=headers).json["events"]
        assert [(e["kind"], e["outcome"]) for e in trail] == [
            ("registered", None),
            ("launch", "started"),
            ("validate", "released"),
        ]


def test_validate_names_the_owner_too_and_a_refused_claim_burns_nothing(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = host_app.test_client()
    _two_owners(client, host_app, ovmf)
    unscoped = _host(host_app, "any-node")
    for_bob = _host(host_app, "bob-node", owner="bob")
    boot = Boot(firmware=ovmf)
    grant = client.post(
        f"/owners/alice/v1/vm/{VM}/launch", json=launch_body(platform), headers=unscoped
    )
    assert grant.status_code == 200, grant.json
    _handle, measured = measure(platform, grant.json, boot)
    body = validate_body(platform, grant.json, measured, boot)

    # at /v1 the UUID is ambiguous: 409, and the launch is not claimed by it
    ambiguous = client.post(f"/v1/vm/{VM}/validate", json=body, headers=unscoped)
    assert ambiguous.status_code == 409 and ambiguous.json["errors"]["reason"] == "owner_required"
    # bob's host with alice's launch id answers as for a launch id nobody issued
    foreign = client.post(f"/v1/vm/{VM}/validate", json=body, headers=for_bob)
    unknown = client.post(
        f"/v1/vm/{VM}/validate", json=body | {"launch-id": "x" * 32}, headers=for_bob
    )
    assert foreign.status_code == 404 and foreign.json["errors"]["reasons"] == ["unknown_launch"]
    assert foreign.get_data() == unknown.get_data()
    # at alice's base URL the launch is validated: none of the above used it up
    done = client.post(f"/owners/alice/v1/vm/{VM}/validate", json=body, headers=unscoped)
    assert done.status_code == 200, done.json


def test_a_uuid_only_one_owner_has_resolves_at_v1(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = host_app.test_client()
    alice = make_owner(host_app, "alice")
    make_owner(host_app, "bob")
    assert client.post(f"/v1/vm/{VM}", json=_sev(ovmf, "alice"), headers=alice).status_code == 201
    unscoped = _host(host_app, "any-node")
    outcome = run_launch(client, platform, VM, Boot(firmware=ovmf), headers=unscoped)
    assert PASSPHRASE["alice"].encode() in _released(outcome)
    # bob's base URL does not reach alice's VM
    at_bob = run_launch(
        client, platform, VM, Boot(firmware=ovmf), headers=unscoped, base="/owners/bob/v1"
    )
    assert at_bob.launch.status_code == 404
    assert at_bob.launch.json["errors"]["reasons"] == ["unknown_vm"]


def test_snp_guests_attest_at_their_owners_base_url(
    snp_app: Flask, snp_platform: SnpPlatform, ovmf: bytes
) -> None:
    client = snp_app.test_client()
    digest = measurement(ovmf)
    for who in ("alice", "bob"):
        owner = make_owner(snp_app, who)
        body = snp_registration(
            digest,
            secrets=[{"type": "env", "name": "app", "values": {"OWNER": who}}],
        )
        assert client.post(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 201

    # at /v1 the guest's UUID is ambiguous: no nonce
    refused = client.post(f"/v1/vm/{VM}/attest/challenge")
    assert refused.status_code == 409 and refused.json["errors"]["reason"] == "owner_required"

    for who in ("alice", "bob"):
        guest = Guest()
        base = f"/owners/{who}/v1"
        nonce = challenge(client, VM, base=base)
        resp = client.post(
            f"{base}/vm/{VM}/attest",
            json=attest_body(snp_platform, guest, nonce, digest, vm=VM, owner=who),
        )
        assert resp.status_code == 200, resp.json
        assert guest.decrypt(resp.json["payload"])["env"] == {"app": {"OWNER": who}}

    # a nonce of alice's VM does not open bob's, and releases nothing
    guest = Guest()
    nonce = challenge(client, VM, base="/owners/alice/v1")
    crossed = client.post(
        f"/owners/bob/v1/vm/{VM}/attest",
        json=attest_body(snp_platform, guest, nonce, digest, vm=VM),
    )
    assert crossed.status_code == 409 and "payload" not in crossed.json
    # the base URL of nobody: as an unknown VM
    nobody = client.post(f"/owners/nobody/v1/vm/{VM}/attest/challenge")
    unknown = client.post(f"/owners/alice/v1/vm/{UNREGISTERED}/attest/challenge")
    assert nobody.status_code == 404
    _same_but_uuid(nobody, unknown)


def test_another_owners_firmware_upload_accepts_nothing_of_mine(
    snp_app: Flask, snp_platform: SnpPlatform, ovmf: bytes
) -> None:
    """SNP digests computed from alice's uploaded firmware are remembered per owner:
    bob, who names the same firmware hash without uploading it, is not served them."""
    client = snp_app.test_client()
    digest = measurement(ovmf)
    owners = {who: make_owner(snp_app, who) for who in ("alice", "bob")}
    up = client.post("/v1/firmware", data=ovmf, headers=owners["alice"])
    assert up.status_code == 201
    body = snp_registration(b"", **{"launch-digests": [], "firmware-hashes": [up.json["sha256"]]})
    for headers in owners.values():
        assert client.post(f"/v1/vm/{VM}", json=body, headers=headers).status_code == 201
    answers = {}
    for who in ("alice", "bob"):
        base = f"/owners/{who}/v1"
        nonce = challenge(client, VM, base=base)
        answers[who] = client.post(
            f"{base}/vm/{VM}/attest", json=attest_body(snp_platform, Guest(), nonce, digest, vm=VM)
        )
    assert answers["alice"].status_code == 200, answers["alice"].json
    assert answers["bob"].status_code == 403 and "payload" not in answers["bob"].json
    (refused,) = [
        e
        for e in client.get(f"/v1/vm/{VM}/events", headers=owners["bob"]).json["events"]
        if e["kind"] == "attest"
    ]
    assert any("not uploaded" in t for t in refused["detail"]["tried"])


def test_hosts_get_initdata_of_the_owner_they_name(snp_app: Flask, ovmf: bytes) -> None:
    client = snp_app.test_client()
    body = snp_registration(measurement(ovmf))
    owners = {who: make_owner(snp_app, who) for who in ("alice", "bob")}
    for headers in owners.values():
        assert client.post(f"/v1/vm/{VM}", json=body, headers=headers).status_code == 201
    unscoped = _host(snp_app, "any-node")
    for_bob = _host(snp_app, "bob-node", owner="bob")
    ambiguous = client.get(f"/v1/vm/{VM}/initdata", headers=unscoped)
    assert ambiguous.status_code == 409 and ambiguous.json["errors"]["reason"] == "owner_required"
    assert client.get(f"/owners/alice/v1/vm/{VM}/initdata", headers=unscoped).status_code == 200
    assert client.get(f"/v1/vm/{VM}/initdata", headers=for_bob).status_code == 200
    wrong = client.get(f"/owners/alice/v1/vm/{VM}/initdata", headers=for_bob)
    assert wrong.status_code == 403 and wrong.json["errors"]["reason"] == "wrong_owner"


def test_another_owner_registering_my_uuid_does_not_strand_my_guest(
    snp_app: Flask, snp_platform: SnpPlatform, ovmf: bytes
) -> None:
    """The initdata the service makes names the owner's base URL: bob registering
    alice's UUID after her guest was provisioned leaves the URL her guest uses
    unambiguous (with plain ``/v1`` there, her next boot would get 409 owner_required)."""
    client = snp_app.test_client()
    digest = measurement(ovmf)
    alice = make_owner(snp_app, "alice")
    assert (
        client.post(f"/v1/vm/{VM}", json=snp_registration(digest), headers=alice).status_code == 201
    )
    document = client.get(f"/v1/vm/{VM}/initdata", headers=alice).json["initdata"].encode()
    (service,) = initdata.parse(document).services
    assert service == "https://attestd.example/owners/alice/v1"
    bob = make_owner(snp_app, "bob")
    assert (
        client.post(f"/v1/vm/{VM}", json=snp_registration(digest), headers=bob).status_code == 201
    )

    base = service.removeprefix("https://attestd.example")
    guest = Guest()
    nonce = challenge(client, VM, base=base)
    resp = client.post(
        f"{base}/vm/{VM}/attest",
        json=attest_body(
            snp_platform, guest, nonce, digest, vm=VM, host_data=initdata.host_data(document)
        ),
    )
    assert resp.status_code == 200, resp.json
    assert SECRET_VALUES[1] in json.dumps(guest.decrypt(resp.json["payload"]))
