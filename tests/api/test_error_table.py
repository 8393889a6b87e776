"""Rows of the error table (``attestd/api/errors.py``) not reached by the other API suites.

Every row is reached by a real request somewhere: ``malformed_input`` and
``invalid_request`` in test_registration.py, ``unauthenticated`` in test_cli.py,
``chain_invalid``/``cek_required`` in test_launch.py (launch refusals),
``measurement_mismatch``/``policy_violation`` in test_launch.py and
tests/service/test_launches.py, ``secret_too_large`` in test_registration.py,
``not_found``/``conflict`` in test_launch.py (replay, expiry, budget),
``registration_changed`` at /validate in test_launch.py, ``storage_unavailable``
in test_openapi.py, ``initdata_unavailable`` in test_initdata.py, ``not_accepted``
(``NotAccepted``, a ``policy_violation``) in test_attest.py; the rest here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import responses
from flask import Flask

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from attestd.storage.keys import add_primary_key, retire_old_keys
from tests.api.simhost import VM, launch_body, sev
from tests.servicefix import make_owner


@responses.activate
def test_kds_unreachable_is_503_cek_unavailable(
    host_settings: Settings, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    settings = host_settings.replace(kds_offline=False, kds_url="https://kds.invalid")
    responses.get(re.compile(r"https://kds\.invalid/.*"), status=500)
    app = create_app(settings)
    try:
        client = app.test_client()
        owner = make_owner(app, "alice")
        assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
        resp = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform, cek=None))
        assert resp.status_code == 503, resp.json
        assert resp.json["errors"]["reason"] == "cek_unavailable"
        assert "session" not in resp.json
    finally:
        app.extensions["attestd"].store.dispose()


def test_stored_values_the_keys_cannot_open_are_503_storage_key(
    app: Flask, settings: Settings, ovmf: bytes
) -> None:
    client = app.test_client()
    owner = make_owner(app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    key_file = settings.effective_storage_key_file
    add_primary_key(key_file)
    retire_old_keys(key_file)  # the old key is gone: the stored secrets cannot be opened
    resp = client.put(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner)
    assert resp.status_code == 503, resp.json
    assert resp.json["errors"]["reason"] == "storage_key"


def test_registration_changed_while_the_launch_starts_is_409(
    host_app: Flask, platform: SimulatedPlatform, ovmf: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = host_app.test_client()
    owner = make_owner(host_app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    store = host_app.extensions["attestd"].store
    real_begin = store.begin_launch

    def begin_after_a_put(*args: Any, **kwargs: Any) -> bool:
        assert client.put(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 200
        return bool(real_begin(*args, **kwargs))

    monkeypatch.setattr(store, "begin_launch", begin_after_a_put)
    resp = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert resp.status_code == 409, resp.json
    assert resp.json["errors"]["reason"] == "registration_changed"
