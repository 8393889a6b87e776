"""Launch flood (issue 10): a bound on pending launches per VM and a launch rate per
host, each answered 429 with the error envelope and ``Retry-After``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import VM, Boot, launch_body, run_launch, sev
from tests.servicefix import Clock, make_owner


def _app(settings: Settings, clock: Clock, **changes: object) -> Flask:
    return create_app(settings.replace(**changes), clock=clock)


@pytest.fixture
def flood_app(host_settings: Settings, clock: Clock) -> Iterator[Flask]:
    app = _app(host_settings, clock, max_pending_launches=3, host_launch_rate=0)
    yield app
    app.extensions["attestd"].store.dispose()


def test_pending_launches_per_vm_are_bounded(
    flood_app: Flask, clock: Clock, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    client = flood_app.test_client()
    owner = make_owner(flood_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    for _ in range(3):
        assert client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).status_code == 200
    refused = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert refused.status_code == 429, refused.json
    assert refused.json["errors"] == {
        "reason": "rate_limited",
        "reasons": ["max-pending-launches=3"],
    }
    ttl = flood_app.extensions["attestd"].settings.launch_ttl
    assert 1 <= int(refused.headers["Retry-After"]) <= ttl + 1
    # the pending launches expire: the VM can be started again
    clock.now += ttl + 1
    assert run_launch(client, platform, VM, Boot(firmware=ovmf)).released


def test_launch_rate_per_host(
    host_settings: Settings, clock: Clock, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    app = _app(
        host_settings, clock, require_host_token=True, host_launch_rate=1, max_pending_launches=0
    )
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        principals = app.extensions["attestd"].services.principals
        first = {"Authorization": f"Bearer {principals.create_host('n1')}"}
        second = {"Authorization": f"Bearer {principals.create_host('n2')}"}
        assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
        answers = [
            client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform), headers=first)
            for _ in range(4)
        ]
        assert [a.status_code for a in answers][:2] == [200, 200]  # the burst
        assert 429 in [a.status_code for a in answers[2:]]
        limited = next(a for a in answers if a.status_code == 429)
        assert limited.json["errors"]["reason"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # another host is not held back by the first one's rate
        other = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform), headers=second)
        assert other.status_code == 200
    finally:
        app.extensions["attestd"].store.dispose()
