"""Nothing a client sends grows the service without bound: /metrics label sets, the
pending gauge, VM listings (paginated) and firmware storage (quotas, deletion)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import launch_body
from tests.servicefix import Clock, make_owner, sev_registration

VM = "6f1d3a2c-9b8e-4f7a-8c6d-5e4b3a291807"


def test_invented_methods_and_paths_add_no_metric_lines(
    client: FlaskClient,
) -> None:
    def invent(n: int) -> None:
        client.open("/healthz", method=f"X{n}")
        client.open(f"/v1/vm/{n}/nothing/{n}", method=f"Y{n}")
        client.get(f"/invented/{n}")

    client.get("/metrics")
    invent(0)
    before = client.get("/metrics").text.count("\n")
    for n in range(1, 200):
        invent(n)
    after = client.get("/metrics").text
    # the first round created every label set; 600 more requests add none
    assert after.count("\n") == before, after
    assert 'method="other"' in after
    assert "X1" not in after and "invented" not in after


def test_expired_launches_leave_the_pending_gauge(
    host_app: Flask, clock: Clock, platform: SimulatedPlatform
) -> None:
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev_registration(), headers=owner).status_code == 201
    assert client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).status_code == 200
    assert 'attestd_launches{state="pending"} 1' in client.get("/metrics").text
    clock.now += host_app.extensions["attestd"].settings.launch_ttl + 1
    assert 'attestd_launches{state="pending"} 0' in client.get("/metrics").text


def test_vm_list_is_paginated(app: Flask, client: FlaskClient) -> None:
    owner = make_owner(app, "alice")
    other = make_owner(app, "bob")
    uuids = sorted(f"00000000-0000-4000-8000-{n:012d}" for n in range(5))
    for uuid in uuids:
        assert (
            client.post(f"/v1/vm/{uuid}", json=sev_registration(), headers=owner).status_code == 201
        )
    assert (
        client.post(
            "/v1/vm/10000000-0000-4000-8000-000000000000", json=sev_registration(), headers=other
        ).status_code
        == 201
    )
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        query = f"?limit=2&after={after}" if after else "?limit=2"
        page = client.get(f"/v1/vm{query}", headers=owner)
        assert page.status_code == 200, page.json
        seen += [vm["uuid"] for vm in page.json["vms"]]
        pages += 1
        if page.json["next"] is None:
            break
        after = page.json["next"]
    assert seen == uuids and pages == 3
    whole = client.get("/v1/vm", headers=owner).json
    assert [vm["uuid"] for vm in whole["vms"]] == uuids and whole["next"] is None
    for bad in ("?limit=0", "?limit=1001", "?after=not-a-uuid", "?page=2"):
        assert client.get(f"/v1/vm{bad}", headers=owner).status_code == 422, bad


@pytest.fixture
def quota_app(settings: Settings) -> Iterator[Flask]:
    application = create_app(
        settings.replace(max_firmware_per_owner=2, max_firmware_bytes_per_owner=3000)
    )
    yield application
    application.extensions["attestd"].store.dispose()


def _upload(client: FlaskClient, data: bytes, owner: dict[str, str]) -> int:
    headers = {**owner, "Content-Type": "application/octet-stream"}
    return client.post("/v1/firmware", data=data, headers=headers).status_code


def test_firmware_quota_per_owner(quota_app: Flask) -> None:
    client = quota_app.test_client()
    alice, bob = make_owner(quota_app, "alice"), make_owner(quota_app, "bob")
    one, two, three = (os.urandom(1000) for _ in range(3))
    assert _upload(client, one, alice) == 201
    assert _upload(client, two, alice) == 201
    assert _upload(client, one, alice) == 200  # already there: no quota needed
    refused = client.post(
        "/v1/firmware", data=three, headers={**alice, "Content-Type": "application/octet-stream"}
    )
    assert refused.status_code == 409 and "firmware_quota" in refused.json["errors"]["reasons"]
    assert _upload(client, os.urandom(2500), bob) == 201
    assert _upload(client, os.urandom(600), bob) == 409  # 3100 bytes > 3000
    # deleting frees the quota
    sha = hashlib.sha256(two).hexdigest()
    assert client.delete(f"/v1/firmware/{sha}", headers=alice).status_code == 204
    assert _upload(client, three, alice) == 201


def test_firmware_delete_is_refused_while_a_registration_names_it(
    app: Flask, client: FlaskClient
) -> None:
    alice, bob = make_owner(app, "alice"), make_owner(app, "bob")
    image = os.urandom(4096)
    sha = hashlib.sha256(image).hexdigest()
    assert _upload(client, image, alice) == 201
    assert _upload(client, image, bob) == 201
    reg = sev_registration(**{"firmware-hashes": [sha]})
    assert client.post(f"/v1/vm/{VM}", json=reg, headers=alice).status_code == 201
    in_use = client.delete(f"/v1/firmware/{sha}", headers=alice)
    assert in_use.status_code == 409 and VM in in_use.json["errors"]["reasons"]
    # bob's link is his own: deleting it leaves alice's image in place
    assert client.delete(f"/v1/firmware/{sha}", headers=bob).status_code == 204
    assert client.delete(f"/v1/firmware/{sha}", headers=bob).status_code == 404
    services = app.extensions["attestd"].services
    owner = services.principals.authenticate_owner(alice["Authorization"].split()[1])
    assert services.store.firmware(owner.id, sha) == image
    assert client.delete(f"/v1/vm/{VM}", headers=alice).status_code == 204
    assert client.delete(f"/v1/firmware/{sha}", headers=alice).status_code == 204
    assert services.store.firmware(owner.id, sha) is None
    assert client.delete(f"/v1/firmware/{'AB' * 32}", headers=alice).status_code == 400
    assert client.delete(f"/v1/firmware/{sha}").status_code == 401
