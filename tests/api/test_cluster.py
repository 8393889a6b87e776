"""Several service instances on one database form one service."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import VM, Boot, launch_body, measure, sev, validate_body
from tests.servicefix import make_owner


def _nodes(settings: Settings, count: int) -> list[Flask]:
    return [create_app(settings) for _ in range(count)]


def test_launch_on_one_node_validate_on_another(
    host_settings: Settings, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    a, b = _nodes(host_settings, 2)
    try:
        owner = make_owner(a, "alice")
        assert (
            a.test_client().post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
        )
        grant = a.test_client().post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
        _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
        body = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
        released = b.test_client().post(f"/v1/vm/{VM}/validate", json=body)
        assert released.status_code == 200, released.json
        assert a.test_client().post(f"/v1/vm/{VM}/validate", json=body).status_code == 409
        shown = b.test_client().get(f"/v1/vm/{VM}", headers=owner)
        assert shown.status_code == 200 and shown.json["launches-used"] == 1
    finally:
        for app in (a, b):
            app.extensions["attestd"].store.dispose()


def _race(nodes: list[Flask], request: dict[str, Any]) -> list[tuple[int, Any]]:
    barrier = threading.Barrier(4)
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def validate(app: Flask) -> None:
        client = app.test_client()
        barrier.wait()
        resp = client.post(f"/v1/vm/{VM}/validate", json=request)
        with lock:
            results.append((resp.status_code, resp.json))

    threads = [threading.Thread(target=validate, args=(nodes[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_double_validate_releases_once(
    host_settings: Settings, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    nodes = _nodes(host_settings, 2)
    try:
        owner = make_owner(nodes[0], "alice")
        body = sev(ovmf)
        assert (
            nodes[0].test_client().post(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 201
        )
        for _round in range(4):
            grant = (
                nodes[0].test_client().post(f"/v1/vm/{VM}/launch", json=launch_body(platform)).json
            )
            _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
            request = validate_body(platform, grant, measurement, Boot(firmware=ovmf))
            results = _race(nodes, request)
            statuses = sorted(status for status, _ in results)
            assert statuses == [200, 409, 409, 409], results
            assert sum("secret-table" in body for _, body in results) == 1
    finally:
        for app in nodes:
            app.extensions["attestd"].store.dispose()
