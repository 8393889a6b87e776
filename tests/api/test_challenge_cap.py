"""The live-challenge cap per VM holds when requests race, on one node or several
sharing a database (the count and the insert are one critical section per VM)."""

from __future__ import annotations

import threading

from flask import Flask
from sqlalchemy import delete, func, select

from attestd.api import create_app
from attestd.config import Settings
from attestd.storage import tables as t
from tests.servicefix import make_owner
from tests.snpfix import SNP_VM, snp_registration

CAP = 4
REQUESTS = 32


def _race(nodes: list[Flask]) -> list[int]:
    barrier = threading.Barrier(REQUESTS)
    statuses: list[int] = []
    lock = threading.Lock()

    def ask(app: Flask) -> None:
        client = app.test_client()
        barrier.wait()
        code = client.post(f"/v1/vm/{SNP_VM}/attest/challenge").status_code
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=ask, args=(nodes[i % len(nodes)],)) for i in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def test_racing_challenges_on_two_nodes_never_exceed_the_cap(snp_settings: Settings) -> None:
    settings = snp_settings.replace(attest_max_challenges=CAP)
    nodes = [create_app(settings) for _ in range(2)]
    try:
        owner = make_owner(nodes[0], "alice")
        body = snp_registration(bytes(48))
        assert (
            nodes[0].test_client().post(f"/v1/vm/{SNP_VM}", json=body, headers=owner).status_code
            == 201
        )
        store = nodes[0].extensions["attestd"].store
        with store.engine.connect() as conn:
            vm_id = conn.execute(select(t.vms.c.id).where(t.vms.c.uuid == SNP_VM)).scalar_one()
        mine = t.attest_challenges.c.vm_id == vm_id
        for _round in range(3):
            with store.engine.begin() as conn:
                conn.execute(delete(t.attest_challenges).where(mine))
            statuses = _race(nodes)
            assert set(statuses) == {200, 429}, statuses
            with store.engine.connect() as conn:
                live = conn.execute(
                    select(func.count()).select_from(t.attest_challenges).where(mine)
                ).scalar_one()
            assert live == CAP and statuses.count(200) == CAP, (live, statuses.count(200))
    finally:
        for app in nodes:
            app.extensions["attestd"].store.dispose()
