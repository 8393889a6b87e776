"""Every query of the hot path and of maintenance uses an index on launches and events.

The statements are captured while a real launch+validate pair, ``/metrics``'s counts,
an audit-trail page and a maintenance pass run; each is then explained with the same
parameters (SQLite ``EXPLAIN QUERY PLAN``; PostgreSQL ``EXPLAIN`` with sequential
scans discouraged, so a plan still scanning has no index to use).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from attestd.config import Settings
from attestd.service.factory import Services, build_services
from attestd.service.launches import ValidateRequest
from attestd.service.registration import LuksPassphrase, Registration
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import Boot, measure
from tests.servicefix import Clock

VM = "6f1d3a2c-9b8e-4f7a-8c6d-5e4b3a291807"
BIG_TABLES = ("launches", "events")


@pytest.fixture
def services(host_settings: Settings, clock: Clock) -> Iterator[Services]:
    built = build_services(host_settings, clock=clock)
    yield built
    built.store.dispose()


def _hot_path(services: Services, platform: SimulatedPlatform, ovmf: bytes) -> None:
    owner = services.principals.authenticate_owner(services.principals.create_owner("alice"))
    services.vms.register(
        owner,
        VM,
        Registration(
            scheme="amd-sev",
            policy=1,
            firmware_hashes=(hashlib.sha256(ovmf).hexdigest(),),
            secrets=(LuksPassphrase("correct horse"),),
        ),
    )
    exp = platform.export()
    session = services.launches.begin(
        VM, pdh=exp.pdh, cert_chain=exp.cert_chain, cpu_id=exp.chip_id, cek=exp.signed_cek
    )
    grant = {
        "launch-id": session.launch_id,
        "session": base64.b64encode(session.session).decode(),
        "owner-cert": base64.b64encode(session.owner_cert).decode(),
        "policy": session.policy,
    }
    _handle, measurement = measure(platform, grant, Boot(firmware=ovmf))
    services.launches.validate(
        VM,
        ValidateRequest(
            api_major=platform.api_major,
            api_minor=platform.api_minor,
            build_id=platform.build_id,
            policy=session.policy,
            launch_id=session.launch_id,
            measurement=measurement,
        ),
    )
    services.store.stats(services.clock())
    services.events.list(owner, VM, after=0, limit=10)
    services.vms.list(owner, after="", limit=10)
    services.upkeep.run()


def _capture(store: Any, work: Any) -> list[tuple[str, Any]]:
    """The statements ``work`` executes (Core path and fast path: ``Database.observe``)."""
    captured: list[tuple[str, Any]] = []

    def record(sql: str, params: Any) -> None:
        head = sql.lstrip().split(None, 1)[0].upper()
        if head in ("SELECT", "UPDATE", "DELETE", "INSERT"):
            captured.append((sql, params))

    with store.observe(record):
        work()
    return captured


def _plan(conn: Any, dialect: str, sql: str, params: Any) -> str:
    if dialect == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
        return "\n".join(str(row[-1]) for row in rows)
    conn.exec_driver_sql("SET enable_seqscan = off")
    rows = conn.exec_driver_sql("EXPLAIN " + sql, params).all()
    return "\n".join(str(row[0]) for row in rows)


def _full_scans(plan: str, dialect: str) -> list[str]:
    out = []
    for table in BIG_TABLES:
        if dialect == "sqlite":
            # "SCAN launches" reads every row; so does "SCAN launches USING ... INDEX"
            if f"SCAN {table}" in plan:
                out.append(table)
        elif f"Seq Scan on {table}" in plan:
            out.append(table)
    return out


def test_no_hot_path_query_scans_launches_or_events(
    services: Services, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    engine = services.store.engine  # type: ignore[attr-defined]
    captured = _capture(services.store, lambda: _hot_path(services, platform, ovmf))
    touching = [(s, p) for s, p in captured if any(t in s for t in BIG_TABLES)]
    assert len(touching) >= 10
    scans = []
    with engine.begin() as conn:
        for sql, params in touching:
            plan = _plan(conn, engine.dialect.name, sql, params)
            if _full_scans(plan, engine.dialect.name):
                scans.append(f"{' '.join(sql.split())}\n  -> {plan}")
    assert scans == [], "\n".join(scans)


def test_vm_lookups_by_owner_and_uuid_or_uuid_alone_use_an_index(
    services: Services, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    """Each owner has its own UUID namespace: the VM is found by (owner, UUID) through
    ``uq_vms_owner_uuid``, by the UUID alone (a caller naming no owner) through
    ``ix_vms_uuid``; neither reads the vms table through."""
    engine = services.store.engine  # type: ignore[attr-defined]
    captured = _capture(services.store, lambda: _hot_path(services, platform, ovmf))
    owner = services.store.owner_id("alice")
    assert owner is not None
    captured += _capture(
        services.store,
        lambda: (
            services.launches.begin(
                VM,
                pdh=platform.export().pdh,
                cert_chain=platform.export().cert_chain,
                cpu_id=platform.export().chip_id,
                cek=platform.export().signed_cek,
                owner_id=owner,
            ),
            services.store.sole_vm(VM),
            services.store.vm(owner, VM),
        ),
    )
    by_uuid = [(q, p) for q, p in captured if "FROM vms" in q and "vms.uuid =" in q]
    assert len(by_uuid) >= 4
    scans = []
    with engine.begin() as conn:
        for sql, params in by_uuid:
            plan = _plan(conn, engine.dialect.name, sql, params)
            full = (
                "SCAN vms" in plan if engine.dialect.name == "sqlite" else "Seq Scan on vms" in plan
            )
            if full:
                scans.append(f"{' '.join(sql.split())}\n  -> {plan}")
    assert scans == [], "\n".join(scans)
