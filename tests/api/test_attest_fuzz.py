"""hypothesis on the ``/attest`` body: no input yields a 500, no refusal holds a secret.

Each example takes a fresh nonce, builds a valid body from the software SNP platform
and then damages it: one member replaced by arbitrary JSON, one byte of the report
flipped, or a member removed. Only an undamaged body may be answered 200.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestd.sim.snp import SnpPlatform
from tests.snpfix import (
    FUZZ_OWNER,
    SECRET_VALUES,
    SNP_VM,
    Guest,
    attest_body,
    challenge,
    snp_fuzz_app,
)

MEMBERS = ("nonce", "tee-pubkey", "report", "vcek", "cert-table", "extra")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def fuzz_snp(
    tmp_path_factory: pytest.TempPathFactory, snp_platform: SnpPlatform, snp_anchors_dir: Path
) -> Iterator[tuple[Flask, bytes]]:
    digest = bytes(range(48))
    app, _owner = snp_fuzz_app(
        tmp_path_factory.mktemp("snp-fuzz"), snp_anchors_dir, digest, snp_platform
    )
    yield app, digest
    app.extensions["attestd"].services.store.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    how=st.sampled_from(["replace", "flip", "drop", "none"]),
    member=st.sampled_from(MEMBERS),
    value=JSON,
    position=st.integers(0, 0x49F),
    bit=st.integers(0, 7),
)
def test_attest_body_fuzz(
    fuzz_snp: tuple[Flask, bytes],
    snp_platform: SnpPlatform,
    how: str,
    member: str,
    value: Any,
    position: int,
    bit: int,
) -> None:
    app, digest = fuzz_snp
    client = app.test_client()
    body = attest_body(snp_platform, Guest(), challenge(client), digest, owner=FUZZ_OWNER)
    if how == "replace":
        body[member] = value
    elif how == "flip":
        report = bytearray(base64.b64decode(body["report"]))
        report[position] ^= 1 << bit
        body["report"] = base64.b64encode(bytes(report)).decode()
    elif how == "drop":
        body.pop(member, None)
    resp = client.post(f"/v1/vm/{SNP_VM}/attest", json=body)
    assert resp.status_code < 500, resp.json
    undamaged = how == "none" or (how == "drop" and member in ("cert-table", "extra"))
    if resp.status_code == 200:
        assert undamaged, (how, member)
        return
    assert 400 <= resp.status_code < 500
    text = resp.get_data(as_text=True)
    for secret in SECRET_VALUES:
        assert secret not in text
