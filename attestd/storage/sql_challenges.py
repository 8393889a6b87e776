"""The SQL side of SEV-SNP attestation: challenges and the attestation budget.

A mixin of :class:`attestd.storage.sql.Database` (kept apart from the SEV tables).
As there, each change that must be atomic across service nodes is one conditional
``UPDATE`` whose row count decides: a nonce is claimed by exactly one attest, and a
release spends the budget only on the registration revision it was decided on.

The statements of a challenge+attest pair run on the fast path
(:mod:`attestd.storage.sql_fast`), built once with bound parameters, as the SEV
launch's do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, or_, select, update

from attestd.storage import tables as t
from attestd.storage.ports import ChallengeClaim, ChallengeRecord, Event, VmRecord
from attestd.storage.sql_fast import FastPath, Session, Statement
from attestd.storage.sql_vms import SPEND_LAUNCH, VM_OF_OWNER, VM_REVISION_FOR_UPDATE

T = TypeVar("T")
_C = t.attest_challenges
_CHALLENGE_KEYS = ("nonce_sha256", "vm_id", "created_at", "expires_at", "used_at")

# add_challenge: after the VM row lock, purge its used and expired challenges, count the rest
_PURGE_CHALLENGES = Statement(
    delete(_C).where(
        and_(
            _C.c.vm_id == bindparam("b_vm_id"),
            or_(_C.c.used_at.is_not(None), _C.c.expires_at <= bindparam("b_now")),
        )
    )
)
_COUNT_CHALLENGES = Statement(
    select(func.count().label("live")).select_from(_C).where(_C.c.vm_id == bindparam("b_vm_id"))
)
_INSERT_CHALLENGE = Statement(insert(_C), _CHALLENGE_KEYS)
# claim_challenge: the VM's unused challenge, marked used and read back (RETURNING)
_CLAIM_CHALLENGE = Statement(
    update(_C)
    .where(
        and_(
            _C.c.nonce_sha256 == bindparam("b_nonce"),
            _C.c.vm_id == bindparam("b_vm_id"),
            _C.c.used_at.is_(None),
        )
    )
    .values(used_at=bindparam("b_now"))
    .returning(*_C.c)
)
# an unclaimed nonce: what it is (unknown, used, or another VM's), in the same transaction
_CHALLENGE_BY_NONCE = Statement(select(_C).where(_C.c.nonce_sha256 == bindparam("b_nonce")))


def _challenge(row: Any) -> ChallengeRecord:
    # float(): SQLite's RETURNING gives a REAL column's integral value as an int
    return ChallengeRecord(
        nonce_sha256=row.nonce_sha256,
        vm_id=row.vm_id,
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
        used_at=None if row.used_at is None else float(row.used_at),
    )


class ChallengeTables:
    """:class:`~attestd.storage.ports.ChallengeRepository` over SQLAlchemy Core."""

    _fast: FastPath  # provided by Database

    def _run(self, fn: Callable[[Connection], T]) -> T:  # provided by Database
        raise NotImplementedError

    def _fast_event(self, s: Session, event: Event) -> None:  # provided by Database
        raise NotImplementedError

    @staticmethod
    def _vm(row: Any) -> VmRecord:  # provided by Database
        raise NotImplementedError

    def add_challenge(self, challenge: ChallengeRecord, *, limit: int, now: float) -> bool:
        """Store a new challenge unless the VM has ``limit`` live ones (False then).

        Count and insert are one critical section per VM across nodes: the VM row is
        locked first (``FOR UPDATE`` on PostgreSQL, whose READ COMMITTED would let two
        transactions both count ``limit - 1`` and both insert; SQLite's ``BEGIN
        IMMEDIATE`` already serialises writers). Used and expired challenges of the VM
        are purged here, off the attest path.
        """

        fast = self._fast
        params = {"b_vm_id": challenge.vm_id, "b_now": now}

        def txn(s: Session) -> bool:
            s.rows(fast.compiled(VM_REVISION_FOR_UPDATE), params)  # the VM row lock
            s.run(fast.compiled(_PURGE_CHALLENGES), params)
            if s.first(fast.compiled(_COUNT_CHALLENGES), params).live >= limit:
                return False
            s.run(
                fast.compiled(_INSERT_CHALLENGE),
                {
                    "nonce_sha256": challenge.nonce_sha256,
                    "vm_id": challenge.vm_id,
                    "created_at": challenge.created_at,
                    "expires_at": challenge.expires_at,
                    "used_at": None,
                },
            )
            return True

        return fast.write(txn)

    def challenge(self, nonce_sha256: str) -> ChallengeRecord | None:
        """A challenge by the SHA-256 of its nonce."""

        def txn(conn: Connection) -> ChallengeRecord | None:
            row = conn.execute(select(_C).where(_C.c.nonce_sha256 == nonce_sha256)).first()
            return None if row is None else _challenge(row)

        return self._run(txn)

    def claim_challenge(self, nonce_sha256: str, vm: VmRecord, now: float) -> ChallengeClaim:
        """Mark ``vm``'s unused challenge used and read the VM (by its owner and UUID) as it
        is after the claim, in one transaction; not claimed (another attest claimed it
        first, or it is unknown or another VM's): the challenge as it is, in the same one.
        """
        fast = self._fast
        params = {
            "b_nonce": nonce_sha256,
            "b_vm_id": vm.id,
            "b_now": now,
            "b_owner": vm.owner_id,
            "b_uuid": vm.uuid,
        }

        def txn(s: Session) -> ChallengeClaim:
            row = s.first(fast.compiled(_CLAIM_CHALLENGE), params)
            if row is None:
                known = s.first(fast.compiled(_CHALLENGE_BY_NONCE), params)
                return ChallengeClaim(None if known is None else _challenge(known), False)
            vm_row = s.first(fast.compiled(VM_OF_OWNER), params)
            return ChallengeClaim(
                _challenge(row), True, None if vm_row is None else self._vm(vm_row)
            )

        return fast.write(txn)

    def spend_attestation(self, vm: VmRecord, *, event: Event) -> bool:
        """Spend one release of the budget on ``vm``'s revision, with its event; False if not.

        The same conditional ``UPDATE`` as :meth:`Database.begin_launch` spends a launch.
        """
        spend = self._fast.compiled(SPEND_LAUNCH)
        params = {"b_vm_id": vm.id, "b_revision": vm.revision}

        def txn(s: Session) -> bool:
            if s.run(spend, params) != 1:
                return False
            self._fast_event(s, event)
            return True

        return self._fast.write(txn)
