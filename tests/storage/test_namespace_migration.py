"""Migration 0006 (each owner has its own VM UUID namespace) on SQLite and PostgreSQL:
the upgrade keeps every row (also those referencing the rebuilt table), the downgrade
is refused while two owners share a UUID and keeps the rows once they do not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from attestd.config import Settings
from attestd.errors import Conflict
from attestd.storage import tables as t
from attestd.storage.ports import ChallengeRecord, Event, EventKind, LaunchRecord, LaunchStatus
from attestd.storage.sql import Database

VM = "00000000-0000-4000-8000-0000000000aa"


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.effective_database_url)
    yield database
    database.dispose()


def _register(db: Database, owner: int) -> int:
    vm = db.insert_vm(
        uuid=VM,
        owner_id=owner,
        registration={"scheme": "amd-sev"},
        secrets_enc=b"sealed",
        max_launches=None,
        now=1.0,
        event=Event(owner, VM, EventKind.REGISTERED, 1.0),
    )
    return vm.id


def _counts(db: Database) -> dict[str, int]:
    with db.engine.connect() as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (t.vms, t.launches, t.attest_challenges, t.events)
        }


def _revision(db: Database) -> str:
    with db.engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one())


def test_upgrade_keeps_rows_and_makes_uuids_unique_per_owner(db: Database) -> None:
    db.upgrade("0005")
    alice = db.create_owner("alice", "a" * 64, 1.0)
    bob = db.create_owner("bob", "b" * 64, 1.0)
    vm_id = _register(db, alice)
    vm = db.vm(alice, VM)
    assert vm is not None
    launch = LaunchRecord(
        "launch-1", vm_id, 1, LaunchStatus.PENDING, 1, b"k", "", "0" * 64, "naples", 1.0, 1e12, None
    )
    assert db.begin_launch(vm, launch, event=Event(alice, VM, EventKind.LAUNCH, 1.0))
    assert db.add_challenge(ChallengeRecord("c" * 64, vm_id, 1.0, 1e12, None), limit=4, now=1.0)
    with pytest.raises(Conflict):  # 0005: one VM per UUID, whoever the owner
        _register(db, bob)
    before = _counts(db)

    db.upgrade()

    assert _revision(db) == "0006"
    assert _counts(db) == before  # the rebuilt vms table cascaded into nothing
    kept = db.launch("launch-1")
    assert kept is not None and kept.vm_id == vm_id and kept.keys_enc == b"k"
    assert db.challenge("c" * 64) is not None
    bobs = _register(db, bob)  # the same UUID in bob's namespace
    assert bobs != vm_id
    with pytest.raises(Conflict):  # still once per owner
        _register(db, alice)
    with db.engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(
            t.vms.insert().values(
                uuid=VM,
                owner_id=bob,
                revision=1,
                registration="{}",
                secrets_enc=b"x",
                launches_used=0,
                created_at=1.0,
                updated_at=1.0,
            )
        )


def test_downgrade_refused_while_owners_share_a_uuid(db: Database) -> None:
    db.upgrade()
    alice = db.create_owner("alice", "a" * 64, 1.0)
    bob = db.create_owner("bob", "b" * 64, 1.0)
    _register(db, alice)
    bob_vm = _register(db, bob)
    with pytest.raises(Conflict, match="registered by several owners"):
        db.downgrade("0005")
    assert _revision(db) == "0006"
    record = db.vm(bob, VM)
    assert record is not None and record.id == bob_vm
    db.delete_vm(record, event=Event(bob, VM, EventKind.DELETED, 2.0))
    before = _counts(db)

    db.downgrade("0005")

    assert _revision(db) == "0005"
    assert _counts(db) == before
    with pytest.raises(Conflict):  # globally unique again
        _register(db, bob)
    db.upgrade()
    assert _counts(db) == before
