"""SEV-SNP attestation through the API: challenge -> simulator report -> attest -> JWE.

On SQLite and PostgreSQL (the ``backend`` fixture), against the software SNP platform
whose anchor is in the service's trust anchors directory. Every refusal releases
nothing and is an ``attest`` event naming every failed check; the guest, which has no
token, learns the checks of its evidence, and of the registration only ``not_accepted``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from attestd.api import create_app
from attestd.config import Settings
from attestd.sev.snp.certs import SnpCertificate
from attestd.sev.snp.report import SigningKey, TcbVersion
from attestd.sim.platform import SimulatedPlatform
from attestd.sim.snp import SnpPlatform
from attestd.trust.vcek import VcekKey
from tests.api.simhost import launch_body
from tests.servicefix import Clock, make_owner, sev_registration
from tests.snpfix import (
    OTHER_VM,
    SECRET_VALUES,
    SNP_VM,
    Guest,
    attest_body,
    challenge,
    measurement,
    other_chip,
    refused_by_registration,
    register,
    snp_registration,
)


@pytest.fixture
def client(snp_app: Flask) -> FlaskClient:
    return snp_app.test_client()


def no_secret(resp: Any) -> None:
    text = resp.get_data(as_text=True)
    assert "payload" not in (resp.json or {})
    for value in SECRET_VALUES:
        assert value not in text


def events(client: FlaskClient, owner: dict[str, str], uuid: str = SNP_VM) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/vm/{uuid}/events", headers=owner)
    assert resp.status_code == 200
    return [e for e in resp.json["events"] if e["kind"] == "attest"]


def test_attest_releases_exactly_the_registered_secrets(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest, **{"user-id": "web-1"}))
    guest = Guest()
    nonce = challenge(client)
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(snp_platform, guest, nonce, digest)
    )
    assert resp.status_code == 200, resp.json
    assert guest.decrypt(resp.json["payload"]) == {
        "version": 1,
        "user_id": "web-1",
        "env": {"app": {"MODE": "prod"}},
        "secret": {"api": {"TOKEN": "s3cr3t-token"}},
        "volumes": {"data": {"device": "/dev/vdb", "passphrase": "pass-of-data"}},
    }
    (event,) = events(client, owner)
    assert event["outcome"] == "released"
    assert "s3cr3t" not in str(event) and "pass-of-data" not in str(event)
    shown = client.get(f"/v1/vm/{SNP_VM}", headers=owner)
    assert shown.json["launches-used"] == 1
    assert "pass-of-data" not in shown.get_data(as_text=True)


def test_a_challenge_attest_pair_makes_five_transactions_and_ten_statements(
    snp_app: Flask,
    client: FlaskClient,
    owner: dict[str, str],
    snp_platform: SnpPlatform,
    digest: bytes,
) -> None:
    """The SNP pair's statements (on the fast path, as the SEV pair's): the claim reads the
    challenge it marks used (RETURNING) instead of a second SELECT, and reads the VM as it
    is after the claim in the claim's transaction (as the SEV claim does)."""
    register(client, owner, snp_registration(digest))
    guest = Guest()
    seen: list[str] = []
    store = snp_app.extensions["attestd"].services.store
    with store.observe(lambda sql, _params: seen.append(sql.split()[0].upper())):
        nonce = challenge(client)
        body = attest_body(snp_platform, guest, nonce, digest)
        resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=body)
    assert resp.status_code == 200, resp.json
    work = [s for s in seen if s != "BEGIN"]
    # challenge: the VM; VM row lock + purge + count + insert. attest: the VM; claim + the
    # VM again in one transaction (a PUT before the claim wins); budget + event
    assert seen.count("BEGIN") == 5, seen
    assert work == [
        "SELECT",
        "SELECT",
        "DELETE",
        "SELECT",
        "INSERT",
        "SELECT",
        "UPDATE",
        "SELECT",
        "UPDATE",
        "INSERT",
    ], work


def test_cert_table_and_computed_digests_from_uploaded_firmware(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, ovmf: bytes
) -> None:
    up = client.post("/v1/firmware", data=ovmf, headers=owner)
    assert up.status_code == 201
    kernel, initrd, cmdline = b"kernel image", b"initrd image", "console=ttyS0"
    digest = measurement(
        ovmf, kernel=kernel, initrd=initrd, cmdline=cmdline, vcpus=4, vcpu_type="EPYC-Milan"
    )
    import hashlib

    body = snp_registration(
        b"",
        **{
            "launch-digests": [],
            "firmware-hashes": [up.json["sha256"]],
            "kernel-hash": hashlib.sha256(kernel).hexdigest(),
            "initrd-hash": hashlib.sha256(initrd).hexdigest(),
            "cmdline": cmdline,
            "cpu-count": 4,
            "vcpu-types": ["EPYC-v4", "EPYC-Milan"],
        },
    )
    register(client, owner, body)
    guest = Guest()
    nonce = challenge(client)
    req = attest_body(snp_platform, guest, nonce, digest, with_vcek=False)
    import base64

    req["cert-table"] = base64.b64encode(snp_platform.cert_table()).decode()
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=req)
    assert resp.status_code == 200, resp.json
    assert guest.decrypt(resp.json["payload"])["secret"] == {"api": {"TOKEN": "s3cr3t-token"}}


def _refusals() -> list[Any]:
    """(id, registration changes, report request changes, platform changes, reason code)."""
    bump = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    cases: list[Any] = [
        ("debug", {}, {"policy": 0xB0000}, {}, "policy_debug_not_allowed"),
        ("smt", {"policy": 0x20000}, {}, {}, "policy_smt_not_allowed"),
        ("abi", {"policy": 0x30100}, {}, {}, "policy_abi_too_old"),
        ("vmpl", {}, {"vmpl": 1}, {}, "vmpl_too_high"),
        ("host-data", {"host-data": "11" * 32}, {}, {}, "host_data_mismatch"),
        (
            "vlek",
            {"signing-keys": ["vcek"]},
            {"signing_key": SigningKey.VLEK},
            {},
            "signing_key_not_allowed",
        ),
        ("chip-id", {}, {}, {"chip_id": bytes(range(64))}, "chip_id_mismatch"),
        (
            "reported-tcb",
            {},
            {},
            {"tcb": TcbVersion.build(bootloader=3, tee=0, snp=24, microcode=219)},
            "reported_tcb_mismatch",
        ),
        (
            "provisional-firmware",
            {},
            {},
            {"committed_tcb": TcbVersion.build(bootloader=4, tee=0, snp=24, microcode=218)},
            "provisional_firmware",
        ),
    ]
    for name in bump:
        minimum = dict(bump)
        minimum[name] += 1
        cases.append(
            (f"min-tcb-{name}", {"min-tcb": minimum}, {}, {}, "reported_tcb_below_minimum")
        )
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


@pytest.mark.parametrize(
    ("reg_changes", "request_changes", "platform_changes", "reason"), _refusals()
)
def test_refusals_release_nothing_and_the_event_names_the_reason(
    client: FlaskClient,
    owner: dict[str, str],
    snp_platform: SnpPlatform,
    digest: bytes,
    reg_changes: dict[str, Any],
    request_changes: dict[str, Any],
    platform_changes: dict[str, Any],
    reason: str,
) -> None:
    register(client, owner, snp_registration(digest, **reg_changes))
    platform = other_chip(snp_platform, **platform_changes) if platform_changes else snp_platform
    guest = Guest()
    nonce = challenge(client)
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest",
        json=attest_body(platform, guest, nonce, digest, **request_changes),
    )
    no_secret(resp)
    if reason in ("chip_id_mismatch", "reported_tcb_mismatch"):
        # the report's own consistency, checked before the registration: the guest is told
        assert resp.status_code == 403
        assert resp.json["errors"]["reasons"][0].startswith(reason), resp.json
    else:
        refused_by_registration(client, owner, resp, reason)
    (event,) = events(client, owner)
    assert event["outcome"] == "refused"
    assert any(r.startswith(reason) for r in event["detail"]["failed"])
    assert client.get(f"/v1/vm/{SNP_VM}", headers=owner).json["launches-used"] == 0


def test_provisional_firmware_is_released_only_when_the_owner_allows_it(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    """CURRENT_TCB above COMMITTED_TCB (as on cloud hosts with late-loaded microcode)."""
    old = TcbVersion.build(bootloader=4, tee=0, snp=24, microcode=218)
    provisional = other_chip(snp_platform, committed_tcb=old)
    register(client, owner, snp_registration(digest))
    shown = client.get(f"/v1/vm/{SNP_VM}", headers=owner).json
    assert shown["registration"]["allow-provisional-firmware"] is False
    refused = client.post(
        f"/v1/vm/{SNP_VM}/attest",
        json=attest_body(provisional, Guest(), challenge(client), digest),
    )
    refused_by_registration(client, owner, refused, "provisional_firmware")
    body = snp_registration(digest, **{"allow-provisional-firmware": True})
    assert client.put(f"/v1/vm/{SNP_VM}", json=body, headers=owner).status_code == 200
    guest = Guest()
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(provisional, guest, challenge(client), digest)
    )
    assert resp.status_code == 200, resp.json
    assert guest.decrypt(resp.json["payload"])["user_id"] == SNP_VM
    for bad in ("yes", 1, None):
        wrong = snp_registration(digest, **{"allow-provisional-firmware": bad})
        answer = client.put(f"/v1/vm/{SNP_VM}", json=wrong, headers=owner)
        assert answer.status_code == 422, (bad, answer.json)


def test_the_event_lists_every_reason_the_caller_none(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest, **{"host-data": "22" * 32}))
    guest = Guest()
    nonce = challenge(client)
    body = attest_body(snp_platform, guest, nonce, bytes(48), vmpl=2)
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=body)
    no_secret(resp)
    refused_by_registration(client, owner, resp, "measurement_not_accepted")
    codes = {r.split(":")[0] for r in events(client, owner)[0]["detail"]["failed"]}
    assert {"measurement_not_accepted", "host_data_mismatch", "vmpl_too_high"} <= codes


def test_untrusted_root_is_refused(
    client: FlaskClient, owner: dict[str, str], digest: bytes
) -> None:
    register(client, owner, snp_registration(digest))
    rogue = SnpPlatform.create(name="sim-rogue-snp")
    guest = Guest()
    nonce = challenge(client)
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=attest_body(rogue, guest, nonce, digest))
    assert resp.status_code == 403
    assert resp.json["errors"]["reason"] == "chain_invalid"
    assert resp.json["errors"]["reasons"][0].startswith("chain_untrusted")
    no_secret(resp)


@pytest.mark.parametrize("what", ["nonce", "key"])
def test_report_data_must_bind_the_nonce_and_the_key(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes, what: str
) -> None:
    register(client, owner, snp_registration(digest))
    guest = Guest()
    nonce = challenge(client)
    other = {"bind_nonce": challenge(client)} if what == "nonce" else {"bind_key": Guest().public}
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(snp_platform, guest, nonce, digest, **other)
    )
    assert resp.status_code == 403
    assert any(r.startswith("report_data_mismatch") for r in resp.json["errors"]["reasons"])
    no_secret(resp)


def test_nonce_replayed_expired_or_of_another_vm(
    client: FlaskClient,
    owner: dict[str, str],
    snp_platform: SnpPlatform,
    digest: bytes,
    clock: Clock,
) -> None:
    register(client, owner, snp_registration(digest))
    register(client, owner, snp_registration(digest), OTHER_VM)
    guest = Guest()
    nonce = challenge(client)
    body = attest_body(snp_platform, guest, nonce, digest)
    assert client.post(f"/v1/vm/{SNP_VM}/attest", json=body).status_code == 200
    replay = client.post(f"/v1/vm/{SNP_VM}/attest", json=body)
    assert replay.status_code == 409
    assert replay.json["errors"] == {
        "reason": "nonce_rejected",
        "reasons": ["nonce_used"],
    }
    no_secret(replay)
    theirs = challenge(client, OTHER_VM)
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(snp_platform, guest, theirs, digest)
    )
    assert resp.status_code == 409 and resp.json["errors"]["reasons"] == ["nonce_other_vm"]
    # the other VM's nonce was not consumed by the attempt on this VM
    ok = client.post(
        f"/v1/vm/{OTHER_VM}/attest",
        json=attest_body(snp_platform, guest, theirs, digest, vm=OTHER_VM),
    )
    assert ok.status_code == 200
    late = challenge(client)
    clock.now += 121
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(snp_platform, guest, late, digest)
    )
    assert resp.status_code == 409 and resp.json["errors"]["reasons"] == ["nonce_expired"]
    unknown = attest_body(snp_platform, guest, "A" * 43 + "=", digest)
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=unknown)
    assert resp.status_code == 409 and resp.json["errors"]["reasons"] == ["nonce_unknown"]
    reasons = [e["detail"].get("failed") for e in events(client, owner)]
    assert ["nonce_used"] in reasons and ["nonce_expired"] in reasons


def test_a_failed_attest_consumes_its_nonce(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest))
    guest = Guest()
    nonce = challenge(client)
    bad = attest_body(snp_platform, guest, nonce, bytes(48))
    assert client.post(f"/v1/vm/{SNP_VM}/attest", json=bad).status_code == 403
    good = attest_body(snp_platform, guest, nonce, digest)
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=good)
    assert resp.status_code == 409 and resp.json["errors"]["reasons"] == ["nonce_used"]


def test_budget_bounds_successful_attestations(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest, **{"max-launches": 1}))
    guest = Guest()
    first = attest_body(snp_platform, guest, challenge(client), digest)
    assert client.post(f"/v1/vm/{SNP_VM}/attest", json=first).status_code == 200
    second = attest_body(snp_platform, guest, challenge(client), digest)
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=second)
    assert resp.status_code == 409
    assert resp.json["errors"]["reasons"] == ["max-launches=1"]
    no_secret(resp)


def test_evidence_that_does_not_verify_learns_nothing_of_the_registration(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    """Anyone may ask for a nonce: a report that does not verify (here from a platform
    no pinned root signs) is refused for its evidence alone, before the registration is
    consulted. An exhausted budget (it used to answer 409 ``max-launches=1`` first) or a
    genuine report bound to another key looks like any other refusal of the kind."""
    register(client, owner, snp_registration(digest, **{"max-launches": 1}))
    guest = Guest()
    first = attest_body(snp_platform, guest, challenge(client), digest)
    assert client.post(f"/v1/vm/{SNP_VM}/attest", json=first).status_code == 200
    rogue = SnpPlatform.create(name="sim-rogue-snp")
    forged = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(rogue, guest, challenge(client), digest)
    )
    assert forged.status_code == 403, forged.json
    assert forged.json["errors"]["reason"] == "chain_invalid"
    assert forged.json["errors"]["reasons"][0].startswith("chain_untrusted")
    unbound = attest_body(snp_platform, guest, challenge(client), digest)
    unbound["tee-pubkey"] = Guest().public  # REPORT_DATA binds another key
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=unbound)
    assert resp.status_code == 403
    assert resp.json["errors"]["reasons"] == [
        "report_data_mismatch: REPORT_DATA does not bind the nonce and key"
    ]
    for refused in (forged, resp):
        assert "max-launches" not in refused.get_data(as_text=True)


def test_a_spent_budget_is_told_only_to_a_report_the_registration_accepts(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    """The budget is the registration's too: a genuine report of another image finds the
    same not_accepted whether or not the VM's budget is spent."""
    register(client, owner, snp_registration(digest, **{"max-launches": 1}))
    guest = Guest()
    first = attest_body(snp_platform, guest, challenge(client), digest)
    assert client.post(f"/v1/vm/{SNP_VM}/attest", json=first).status_code == 200
    other = attest_body(snp_platform, guest, challenge(client), bytes(48))
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=other)
    refused_by_registration(client, owner, resp, "measurement_not_accepted")


def test_a_put_before_the_claim_wins(
    client: FlaskClient, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    register(client, owner, snp_registration(digest))
    guest = Guest()
    nonce = challenge(client)
    changed = snp_registration(digest, **{"host-data": "33" * 32})
    assert client.put(f"/v1/vm/{SNP_VM}", json=changed, headers=owner).status_code == 200
    resp = client.post(
        f"/v1/vm/{SNP_VM}/attest", json=attest_body(snp_platform, guest, nonce, digest)
    )
    refused_by_registration(client, owner, resp, "host_data_mismatch")
    assert events(client, owner)[-1]["detail"]["revision"] == 2


def test_other_schemes_cannot_attest_and_snp_has_no_launch(
    client: FlaskClient,
    owner: dict[str, str],
    snp_platform: SnpPlatform,
    digest: bytes,
    platform: SimulatedPlatform,
) -> None:
    """To the guest endpoints (no token) an SEV VM is an unregistered one: the same 404
    body, and nothing is written for it. A host (token) still learns wrong_scheme from
    /launch."""
    register(client, owner, sev_registration(), OTHER_VM)
    unregistered = "11111111-2222-3333-4444-555555555555"
    guest = Guest()
    body = attest_body(snp_platform, guest, "B" * 43 + "=", digest)
    for path, json in (("attest/challenge", None), ("attest", body)):
        sev = client.post(f"/v1/vm/{OTHER_VM}/{path}", json=json)
        unknown = client.post(f"/v1/vm/{unregistered}/{path}", json=json)
        assert sev.status_code == unknown.status_code == 404, (path, sev.json)
        assert sev.get_data(as_text=True).replace(OTHER_VM, unregistered) == unknown.get_data(
            as_text=True
        )
    assert events(client, owner, OTHER_VM) == []
    register(client, owner, snp_registration(digest))
    launch = client.post(f"/v1/vm/{SNP_VM}/launch", json=launch_body(platform))
    assert launch.status_code == 422
    assert launch.json["errors"]["reasons"] == ["wrong_scheme"]
    assert client.post(f"/v1/vm/{SNP_VM}0/attest/challenge").status_code == 422


def test_live_challenges_are_bounded(snp_settings: Settings, clock: Clock, digest: bytes) -> None:
    app = create_app(snp_settings.replace(attest_max_challenges=3), clock=clock)
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        register(client, owner, snp_registration(digest))
        for _ in range(3):
            challenge(client)
        resp = client.post(f"/v1/vm/{SNP_VM}/attest/challenge")
        assert resp.status_code == 429
        assert resp.json["errors"]["reason"] == "too_many_challenges"
        clock.now += 121  # expired ones no longer count
        challenge(client)
    finally:
        app.extensions["attestd"].services.store.dispose()


def test_guest_requests_beyond_the_vm_rate_are_refused_before_anything_is_written(
    snp_settings: Settings, clock: Clock, snp_platform: SnpPlatform, digest: bytes
) -> None:
    """The guest endpoints need no token and each request writes (a challenge, a claim,
    an event): by default 2 requests per second per VM pass (bursts of 4), more are 429
    with Retry-After and write nothing. Before, every request wrote, as fast as sent."""
    default = Settings().attest_vm_rate
    assert default == 2
    app = create_app(snp_settings.replace(attest_vm_rate=default), clock=clock)
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        register(client, owner, snp_registration(digest))
        register(client, owner, snp_registration(digest), OTHER_VM)
        guest = Guest()
        answers = [client.post(f"/v1/vm/{SNP_VM}/attest/challenge") for _ in range(2)]
        bad = attest_body(snp_platform, guest, "B" * 43 + "=", digest)  # an unknown nonce
        answers += [client.post(f"/v1/vm/{SNP_VM}/attest", json=bad) for _ in range(20)]
        statuses = [a.status_code for a in answers]
        assert statuses[:4] == [200, 200, 409, 409], statuses  # the burst of 4
        assert set(statuses[4:]) == {429}, statuses  # refill is 2/s; the loop takes less
        limited = answers[-1]
        assert limited.json["errors"]["reasons"] == ["attest-vm-rate=2/s"]
        assert int(limited.headers["Retry-After"]) >= 1
        assert len(events(client, owner)) == 2  # only the two attests let through wrote
        # another VM has its own bucket
        assert client.post(f"/v1/vm/{OTHER_VM}/attest/challenge").status_code == 200
    finally:
        app.extensions["attestd"].services.store.dispose()


def test_racing_attests_with_one_nonce_release_at_most_once(
    snp_app: Flask, owner: dict[str, str], snp_platform: SnpPlatform, digest: bytes
) -> None:
    client = snp_app.test_client()
    register(client, owner, snp_registration(digest))
    guest = Guest()
    body = attest_body(snp_platform, guest, challenge(client), digest)
    statuses: list[int] = []
    start = threading.Barrier(6)

    def run() -> None:
        mine = snp_app.test_client()
        start.wait()
        statuses.append(mine.post(f"/v1/vm/{SNP_VM}/attest", json=body).status_code)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409, 409, 409, 409, 409]
    assert client.get(f"/v1/vm/{SNP_VM}", headers=owner).json["launches-used"] == 1


def test_a_second_node_validates_a_challenge_of_the_first(
    snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    first, second = create_app(snp_settings), create_app(snp_settings)
    try:
        owner = make_owner(first, "alice")
        register(first.test_client(), owner, snp_registration(digest))
        guest = Guest()
        nonce = challenge(first.test_client())
        body = attest_body(snp_platform, guest, nonce, digest)
        resp = second.test_client().post(f"/v1/vm/{SNP_VM}/attest", json=body)
        assert resp.status_code == 200, resp.json
        again = first.test_client().post(f"/v1/vm/{SNP_VM}/attest", json=body)
        assert again.status_code == 409
    finally:
        for app in (first, second):
            app.extensions["attestd"].services.store.dispose()


@responses.activate
def test_the_vcek_comes_from_the_store_when_the_guest_sends_none(
    snp_settings: Settings, snp_platform: SnpPlatform, digest: bytes
) -> None:
    kds = "https://kds.test"
    key = VcekKey.of_certificate(SnpCertificate.from_der(snp_platform.vcek))
    responses.get(kds + key.query(), body=snp_platform.vcek)
    offline = create_app(snp_settings)
    online = create_app(snp_settings.replace(kds_offline=False, kds_url=kds))
    try:
        owner = make_owner(offline, "alice")
        client = offline.test_client()
        register(client, owner, snp_registration(digest))
        guest = Guest()
        body = attest_body(snp_platform, guest, challenge(client), digest, with_vcek=False)
        resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=body)
        assert resp.status_code == 422 and resp.json["errors"]["reason"] == "cek_required"
        no_secret(resp)
        body = attest_body(snp_platform, guest, challenge(client), digest, with_vcek=False)
        resp = online.test_client().post(f"/v1/vm/{SNP_VM}/attest", json=body)
        assert resp.status_code == 200, resp.json
        assert guest.decrypt(resp.json["payload"])["user_id"] == SNP_VM
        assert len(responses.calls) == 1
    finally:
        for app in (offline, online):
            app.extensions["attestd"].services.store.dispose()
