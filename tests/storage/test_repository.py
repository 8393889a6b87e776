"""Storage contract on SQLite and PostgreSQL: schema = migrations, atomic budget and claim."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from attestd.config import Settings
from attestd.errors import Conflict
from attestd.storage.ports import (
    ChallengeRecord,
    Event,
    EventKind,
    LaunchRecord,
    LaunchStatus,
    VmRecord,
)
from attestd.storage.sql import Database
from attestd.storage.tables import metadata


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.effective_database_url, pool_size=10, max_overflow=20)
    database.upgrade()
    yield database
    database.dispose()


def test_migrations_match_tables(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _vm(db: Database, max_launches: int | None) -> VmRecord:
    owner = db.create_owner("o", "1" * 64, 1.0)
    with pytest.raises(Conflict):
        db.create_owner("o", "2" * 64, 1.0)
    return db.insert_vm(
        uuid="00000000-0000-4000-8000-000000000001",
        owner_id=owner,
        registration={},
        secrets_enc=b"x",
        max_launches=max_launches,
        now=1.0,
        event=Event(owner, "00000000-0000-4000-8000-000000000001", EventKind.REGISTERED, 1.0),
    )


def _launch(vm: VmRecord, n: int, expires: float = 1e12) -> LaunchRecord:
    return LaunchRecord(
        id=f"launch-{n:04d}",
        vm_id=vm.id,
        vm_revision=vm.revision,
        state=LaunchStatus.PENDING,
        policy=1,
        keys_enc=b"k",
        chip_id="",
        pdh_sha256="0" * 64,
        generation="g",
        created_at=1.0,
        expires_at=expires,
        finished_at=None,
    )


def _parallel(count: int, fn: object) -> list[object]:
    barrier = threading.Barrier(count)
    results: list[object] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        value = fn(n)  # type: ignore[operator]
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_launch_budget_is_atomic(db: Database) -> None:
    vm = _vm(db, max_launches=3)
    event = Event(vm.owner_id, vm.uuid, EventKind.LAUNCH, 1.0)
    results = _parallel(8, lambda n: db.begin_launch(vm, _launch(vm, n), event=event))
    assert sorted(results) == [False] * 5 + [True] * 3  # type: ignore[type-var]
    again = db.vm(vm.owner_id, vm.uuid)
    assert again is not None and again.launches_used == 3


def test_a_challenge_is_claimed_once_with_the_vm_in_one_transaction(db: Database) -> None:
    """The claim of an SNP nonce reads the VM as it is after the claim in the same
    transaction (one BEGIN, UPDATE ... RETURNING then SELECT); a claim that lost, an
    unknown nonce or another VM's nonce reads the challenge as it is, also in one."""
    vm = _vm(db, max_launches=None)
    assert db.add_challenge(ChallengeRecord("a" * 64, vm.id, 1.0, 100.0, None), limit=4, now=1.0)
    seen: list[str] = []
    with db.observe(lambda sql, _params: seen.append(sql.split()[0].upper())):
        claims = _parallel(6, lambda n: db.claim_challenge("a" * 64, vm, 10.0))
    won = [c for c in claims if c.claimed]  # type: ignore[attr-defined]
    assert len(won) == 1
    assert won[0].vm == db.vm(vm.owner_id, vm.uuid)  # type: ignore[attr-defined]
    assert won[0].challenge.used_at == 10.0  # type: ignore[attr-defined]
    assert seen.count("BEGIN") == 6
    assert seen.count("UPDATE") == 6 and seen.count("SELECT") == 6  # VM once, challenge 5x
    for lost in claims:
        if not lost.claimed:  # type: ignore[attr-defined]
            assert lost.vm is None and lost.challenge == won[0].challenge  # type: ignore[attr-defined]
    unknown = db.claim_challenge("b" * 64, vm, 10.0)
    assert not unknown.claimed and unknown.challenge is None and unknown.vm is None
    other = db.insert_vm(
        uuid="00000000-0000-4000-8000-000000000002",
        owner_id=vm.owner_id,
        registration={},
        secrets_enc=b"x",
        max_launches=None,
        now=1.0,
        event=Event(vm.owner_id, "00000000-0000-4000-8000-000000000002", EventKind.REGISTERED, 1.0),
    )
    assert db.add_challenge(ChallengeRecord("c" * 64, other.id, 1.0, 100.0, None), limit=4, now=1.0)
    theirs = db.claim_challenge("c" * 64, vm, 10.0)
    assert not theirs.claimed and theirs.challenge is not None
    assert theirs.challenge.vm_id == other.id and theirs.challenge.used_at is None
    mine = db.claim_challenge("c" * 64, other, 10.0)
    assert mine.claimed and mine.vm == db.vm(other.owner_id, other.uuid)


def test_claim_is_single_use_and_respects_expiry(db: Database) -> None:
    vm = _vm(db, max_launches=None)
    event = Event(vm.owner_id, vm.uuid, EventKind.LAUNCH, 1.0)
    assert db.begin_launch(vm, _launch(vm, 1), event=event)
    assert db.begin_launch(vm, _launch(vm, 2, expires=50.0), event=event)
    assert db.begin_launch(vm, _launch(vm, 3, expires=50.0), event=event)
    assert db.claim_launch(vm.uuid, "launch-0003", 10.0).claimed  # then the node dies
    claims = _parallel(6, lambda n: db.claim_launch(vm.uuid, "launch-0001", 10.0))
    assert sum(c.claimed for c in claims) == 1  # type: ignore[attr-defined]
    expired = db.claim_launch(vm.uuid, "launch-0002", 60.0)
    assert not expired.claimed and expired.launch is not None
    assert expired.launch.state is LaunchStatus.PENDING
    assert expired.vm == db.vm(vm.owner_id, vm.uuid)
    other = db.claim_launch("00000000-0000-4000-8000-000000000002", "launch-0002", 10.0)
    assert not other.claimed and other.vm is None  # other VM
    assert db.purge_expired_keys(60.0) == 2
    crashed = db.launch("launch-0003")
    assert crashed is not None and crashed.keys_enc is None
    record = db.launch("launch-0002")
    assert record is not None and record.keys_enc is None and record.state is LaunchStatus.PENDING
    db.finish_launch("launch-0001", LaunchStatus.VALIDATED, 11.0, event=event)
    done = db.launch("launch-0001")
    assert done is not None and done.state is LaunchStatus.VALIDATED and done.keys_enc is None
