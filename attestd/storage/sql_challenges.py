"""The SQL side of SEV-SNP attestation: challenges and the attestation budget.

A mixin of :class:`attestd.storage.sql.Database` (kept apart from the SEV tables).
As there, each change that must be atomic across service nodes is one conditional
``UPDATE`` whose row count decides: a nonce is claimed by exactly one attest, and a
release spends the budget only on the registration revision it was decided on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from attestd.storage import tables as t
from attestd.storage.ports import ChallengeRecord, Event, VmRecord

T = TypeVar("T")
_C = t.attest_challenges


def _challenge(row: Any) -> ChallengeRecord:
    return ChallengeRecord(
        nonce_sha256=row.nonce_sha256,
        vm_id=row.vm_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
    )


class ChallengeTables:
    """:class:`~attestd.storage.ports.ChallengeRepository` over SQLAlchemy Core."""

    def _run(self, fn: Callable[[Connection], T]) -> T:  # provided by Database
        raise NotImplementedError

    def add_challenge(self, challenge: ChallengeRecord, *, limit: int, now: float) -> bool:
        """Store a new challenge unless the VM has ``limit`` live ones (False then).

        Count and insert are one critical section per VM across nodes: the VM row is
        locked first (``FOR UPDATE`` on PostgreSQL, whose READ COMMITTED would let two
        transactions both count ``limit - 1`` and both insert; SQLite's ``BEGIN
        IMMEDIATE`` already serialises writers). Used and expired challenges of the VM
        are purged here, off the attest path.
        """

        def txn(conn: Connection) -> bool:
            conn.execute(select(t.vms.c.id).where(t.vms.c.id == challenge.vm_id).with_for_update())
            conn.execute(
                delete(_C).where(
                    and_(
                        _C.c.vm_id == challenge.vm_id,
                        or_(_C.c.used_at.is_not(None), _C.c.expires_at <= now),
                    )
                )
            )
            live = conn.execute(
                select(func.count()).select_from(_C).where(_C.c.vm_id == challenge.vm_id)
            ).scalar_one()
            if live >= limit:
                return False
            conn.execute(
                insert(_C).values(
                    nonce_sha256=challenge.nonce_sha256,
                    vm_id=challenge.vm_id,
                    created_at=challenge.created_at,
                    expires_at=challenge.expires_at,
                    used_at=None,
                )
            )
            return True

        return self._run(txn)

    def challenge(self, nonce_sha256: str) -> ChallengeRecord | None:
        """A challenge by the SHA-256 of its nonce."""

        def txn(conn: Connection) -> ChallengeRecord | None:
            row = conn.execute(select(_C).where(_C.c.nonce_sha256 == nonce_sha256)).first()
            return None if row is None else _challenge(row)

        return self._run(txn)

    def claim_challenge(self, nonce_sha256: str, vm_id: int, now: float) -> ChallengeRecord | None:
        """Mark the VM's unused challenge used; None when another attest claimed it first."""
        from attestd.storage.sql import _rowcount

        def txn(conn: Connection) -> ChallengeRecord | None:
            claimed = conn.execute(
                update(_C)
                .where(
                    and_(
                        _C.c.nonce_sha256 == nonce_sha256,
                        _C.c.vm_id == vm_id,
                        _C.c.used_at.is_(None),
                    )
                )
                .values(used_at=now)
            )
            if _rowcount(claimed) != 1:
                return None
            row = conn.execute(select(_C).where(_C.c.nonce_sha256 == nonce_sha256)).first()
            return None if row is None else _challenge(row)

        return self._run(txn)

    def spend_attestation(self, vm: VmRecord, *, event: Event) -> bool:
        """Spend one release of the budget on ``vm``'s revision, with its event; False if not.

        The same conditional ``UPDATE`` as :meth:`Database.begin_launch` spends a launch.
        """
        from attestd.storage.sql import _SPEND_LAUNCH, _insert_event, _rowcount

        def txn(conn: Connection) -> bool:
            spent = conn.execute(_SPEND_LAUNCH, {"b_vm_id": vm.id, "b_revision": vm.revision})
            if _rowcount(spent) != 1:
                return False
            _insert_event(conn, event)
            return True

        return self._run(txn)
