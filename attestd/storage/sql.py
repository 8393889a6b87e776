"""SQLAlchemy Core repository over SQLite (default) or PostgreSQL.

Every state change that must be atomic across service processes is a single
conditional ``UPDATE`` whose row count decides the winner (launch budget, launch
claim), so several nodes sharing one PostgreSQL behave as one service.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.sql.dml import ReturningUpdate

from attestd.errors import Conflict, NotFound, OwnerRequired, StorageUnavailable
from attestd.storage import tables as t
from attestd.storage.ports import (
    Claim,
    Event,
    EventRecord,
    LaunchRecord,
    LaunchStatus,
    Principal,
    VmRecord,
)
from attestd.storage.sql_challenges import ChallengeTables
from attestd.storage.sql_fast import (
    FastPath,
    Observer,
    Session,
    Statement,
    WriteLock,
    drop_closed_on_checkout,
)
from attestd.storage.sql_vms import SPEND_LAUNCH, VM_OF_OWNER, VM_REVISION_FOR_UPDATE

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


#: Free space a SQLite database's file system must have for /healthz to pass.
MIN_FREE_BYTES = 1024 * 1024


def _write_failure(exc: SQLAlchemyError) -> str:
    """Why a write failed, in words for /healthz and the log (never the SQL)."""
    text = str(getattr(exc, "orig", exc)).lower()
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "the database is read-only"
    if "disk is full" in text or "no space" in text or "disk full" in text:
        return "the disk is full"
    if "locked" in text or "timeout" in text:
        return "the database is locked"
    return "the database refuses writes"


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True)


# Hot-path statements are built once with bound parameters: building a Core statement
# per call (coercing every column and value) cost more CPU than executing it.
_INSERT_EVENT = insert(t.events)
_INSERT_LAUNCH = insert(t.launches)
# a caller naming no owner: the VM when only one owner has the UUID (two rows: several)
_VMS_BY_UUID = select(t.vms).where(t.vms.c.uuid == bindparam("b_uuid")).limit(2)
_LAUNCH_BY_ID = select(t.launches).where(t.launches.c.id == bindparam("b_id"))


def _claim_statement(*, owned: bool) -> ReturningUpdate[Any]:
    """Claim a launch for a lease: pending and unexpired, or ``validating`` whose claim
    lapsed; of a VM with that UUID (of that owner, when one is named).
    It reads the launch it takes (RETURNING): no second round trip."""
    vm_id = select(t.vms.c.id).where(t.vms.c.uuid == bindparam("b_uuid"))
    if owned:
        vm_id = vm_id.where(t.vms.c.owner_id == bindparam("b_owner"))
    lapsed = and_(
        t.launches.c.state == LaunchStatus.VALIDATING.value,
        t.launches.c.claimed_until.is_not(None),
        t.launches.c.claimed_until <= bindparam("b_now"),
    )
    return (
        update(t.launches)
        .where(
            and_(
                t.launches.c.id == bindparam("b_id"),
                t.launches.c.vm_id.in_(vm_id),
                or_(t.launches.c.state == LaunchStatus.PENDING.value, lapsed),
                t.launches.c.expires_at > bindparam("b_now"),
                t.launches.c.keys_enc.is_not(None),
            )
        )
        .values(state=LaunchStatus.VALIDATING.value, claimed_until=bindparam("b_until"))
        .returning(*t.launches.c)
    )


_PENDING_OF_VM = and_(
    t.launches.c.vm_id == t.vms.c.id,
    t.launches.c.state == LaunchStatus.PENDING.value,
    t.launches.c.expires_at > bindparam("b_now"),
)
# /launch reads the VM with its pending launches (the flood bound): one statement
_VM_FOR_LAUNCH = select(
    t.vms,
    select(func.count())
    .select_from(t.launches)
    .where(_PENDING_OF_VM)
    .correlate(t.vms)
    .scalar_subquery()
    .label("pending"),
    select(func.min(t.launches.c.expires_at))
    .where(_PENDING_OF_VM)
    .correlate(t.vms)
    .scalar_subquery()
    .label("first_expiry"),
)
_VM_FOR_LAUNCH_OF_OWNER = _VM_FOR_LAUNCH.where(
    and_(t.vms.c.owner_id == bindparam("b_owner"), t.vms.c.uuid == bindparam("b_uuid"))
)
_VM_FOR_LAUNCH_BY_UUID = _VM_FOR_LAUNCH.where(t.vms.c.uuid == bindparam("b_uuid")).limit(2)
_CLAIM_LAUNCH = _claim_statement(owned=False)
_CLAIM_OWNED_LAUNCH = _claim_statement(owned=True)
_FINISH_LAUNCH = (
    update(t.launches)
    .where(t.launches.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), keys_enc=None, finished_at=bindparam("b_now"))
)
_RELEASE_LAUNCH = (
    update(t.launches)
    .where(
        and_(
            t.launches.c.id == bindparam("b_id"),
            t.launches.c.vm_revision == bindparam("b_revision"),
            t.launches.c.state == LaunchStatus.VALIDATING.value,
            t.launches.c.claimed_until == bindparam("b_claimed_until"),
        )
    )
    .values(state=LaunchStatus.VALIDATED.value, keys_enc=None, finished_at=bindparam("b_now"))
)
_UNCLAIM_LAUNCH = (
    update(t.launches)
    .where(
        and_(
            t.launches.c.id == bindparam("b_id"),
            t.launches.c.state == LaunchStatus.VALIDATING.value,
            t.launches.c.claimed_until == bindparam("b_claimed_until"),
        )
    )
    .values(state=LaunchStatus.PENDING.value, claimed_until=None)
)
_HOST_BY_TOKEN = select(t.hosts.c.id, t.hosts.c.name, t.hosts.c.owner_id).where(
    t.hosts.c.token_hash == bindparam("b_token")
)
_ACTIVE = (LaunchStatus.PENDING.value, LaunchStatus.VALIDATING.value)

_EVENT_KEYS = ("owner_id", "vm_uuid", "ts", "kind", "launch_id", "outcome", "detail")
_LAUNCH_KEYS = (
    "id",
    "vm_id",
    "vm_revision",
    "state",
    "policy",
    "keys_enc",
    "chip_id",
    "pdh_sha256",
    "generation",
    "created_at",
    "expires_at",
    "finished_at",
)
# The hot path's statements (see attestd.storage.sql_fast): compiled once per dialect.
_FAST_INSERT_EVENT = Statement(_INSERT_EVENT, _EVENT_KEYS)
_FAST_INSERT_LAUNCH = Statement(_INSERT_LAUNCH, _LAUNCH_KEYS)
_FAST_VMS_BY_UUID = Statement(_VMS_BY_UUID)
_FAST_LAUNCH_BY_ID = Statement(_LAUNCH_BY_ID)
_FAST_VM_FOR_LAUNCH_OF_OWNER = Statement(_VM_FOR_LAUNCH_OF_OWNER)
_FAST_VM_FOR_LAUNCH_BY_UUID = Statement(_VM_FOR_LAUNCH_BY_UUID)
_FAST_CLAIM_LAUNCH = Statement(_CLAIM_LAUNCH)
_FAST_CLAIM_OWNED_LAUNCH = Statement(_CLAIM_OWNED_LAUNCH)
_FAST_FINISH_LAUNCH = Statement(_FINISH_LAUNCH)
_FAST_RELEASE_LAUNCH = Statement(_RELEASE_LAUNCH)
_FAST_UNCLAIM_LAUNCH = Statement(_UNCLAIM_LAUNCH)
_FAST_HOST_BY_TOKEN = Statement(_HOST_BY_TOKEN)


def _event_values(event: Event) -> dict[str, Any]:
    return {
        "owner_id": event.owner_id,
        "vm_uuid": event.vm_uuid,
        "ts": event.ts,
        "kind": event.kind.value,
        "launch_id": event.launch_id,
        "outcome": None if event.outcome is None else event.outcome.value,
        "detail": _dumps(event.detail),
    }


def _insert_event(conn: Connection, event: Event) -> None:
    conn.execute(_INSERT_EVENT, _event_values(event))


class Database(ChallengeTables):
    """The attestd tables behind one SQLAlchemy engine."""

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10) -> None:
        self.url = url
        try:
            if url.startswith("sqlite"):
                self.engine: Engine = create_engine(
                    url,
                    pool_size=pool_size,
                    max_overflow=max_overflow,
                    connect_args={"timeout": 30},
                )
                self._sqlite_setup(self.engine)
            else:
                # no pool_pre_ping (a SELECT 1 round trip per checkout): a connection
                # the server closed is found at checkout without one
                self.engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
                drop_closed_on_checkout(self.engine)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StorageUnavailable(f"cannot use database: {type(exc).__name__}") from None
        sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = WriteLock(self._sqlite_path()) if sqlite else None
        self._fast = FastPath(self.engine, self._write_lock)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @staticmethod
    def _sqlite_setup(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Take the write lock up front: no lock-upgrade deadlocks between processes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def dispose(self) -> None:
        """Close pooled connections (after fork, at shutdown)."""
        self.engine.dispose()
        if self._write_lock is not None:
            self._write_lock.close()

    @contextmanager
    def observe(self, observer: Observer) -> Iterator[None]:
        """Call ``observer`` with ``BEGIN`` (and None) at the start of every transaction
        and with the SQL and DBAPI parameters of every statement executed meanwhile, on
        the Core path and on the fast path alike (tests and ``bench/profile_pair.py``
        count them)."""

        def begin(_conn: Connection) -> None:
            observer("BEGIN", None)

        def statement(_conn: Any, _cursor: Any, sql: str, params: Any, *_args: Any) -> None:
            if not sql.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE: the begin above
                observer(sql, params)

        event.listen(self.engine, "begin", begin)
        event.listen(self.engine, "before_cursor_execute", statement)
        self._fast.observer = observer
        try:
            yield
        finally:
            self._fast.observer = None
            event.remove(self.engine, "before_cursor_execute", statement)
            event.remove(self.engine, "begin", begin)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._locked(), self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except OperationalError as exc:
            logger.error("database error: %s", type(exc.orig).__name__)
            raise StorageUnavailable("the database is unavailable") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """SQLite: the write lock (every Core transaction is BEGIN IMMEDIATE)."""
        if self._write_lock is None:
            yield
        else:
            with self._write_lock.held():
                yield

    def _run(self, fn: Callable[[Connection], T]) -> T:
        with self._tx() as conn:
            return fn(conn)

    # -- schema -------------------------------------------------------------------------

    def _alembic(self, conn: Connection) -> Config:
        cfg = Config()
        location = resources.files("attestd.storage") / "migrations"
        cfg.set_main_option("script_location", str(location))
        cfg.attributes["connection"] = conn
        return cfg

    @contextmanager
    def _migration(self) -> Iterator[Connection]:
        """One transaction for a migration. On SQLite foreign keys are off around it
        (the pragma is a no-op inside a transaction): rebuilding a table in batch mode
        drops the old one, which would cascade into the rows referencing it. The
        references are checked before the commit instead (SQLite's procedure for
        schema changes)."""
        if self.dialect != "sqlite":
            with self._tx() as conn:
                yield conn
            return
        try:
            with self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                raw.execute("PRAGMA foreign_keys=OFF")
                try:
                    with conn.begin():
                        yield conn
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                        if broken is not None:
                            raise StorageUnavailable(
                                f"the migration broke a reference of table {broken[0]}"
                            )
                finally:
                    raw.execute("PRAGMA foreign_keys=ON")
        except OperationalError as exc:
            logger.error("database error: %s", type(exc.orig).__name__)
            raise StorageUnavailable("the database is unavailable") from None

    def upgrade(self, revision: str = "head") -> None:
        """Create or migrate the schema to ``revision``."""
        with self._migration() as conn:
            command.upgrade(self._alembic(conn), revision)

    def downgrade(self, revision: str) -> None:
        """Migrate the schema down to ``revision`` (``base`` drops everything)."""
        with self._migration() as conn:
            command.downgrade(self._alembic(conn), revision)

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the database answers."""
        self._run(lambda conn: conn.execute(select(1)).scalar_one())

    def check_writable(self, now: float) -> None:
        """Raise :class:`StorageUnavailable` naming why the database takes no write.

        Commits one heartbeat row; for a SQLite file also demands
        :data:`MIN_FREE_BYTES` free on its file system (a WAL that is reused after a
        checkpoint takes a small write even on a full disk).
        """
        path = self._sqlite_path()
        if path is not None:
            try:
                info = os.statvfs(path.parent)
            except OSError:
                info = None
            if info is not None and info.f_bavail * info.f_frsize < MIN_FREE_BYTES:
                logger.error("database not writable: the disk is full (%s)", path.parent)
                raise StorageUnavailable("the database is not writable: the disk is full")
        try:
            with self._locked(), self.engine.begin() as conn:
                changed = conn.execute(
                    update(t.heartbeat).where(t.heartbeat.c.id == 1).values(checked_at=now)
                )
                if _rowcount(changed) == 0:
                    conn.execute(insert(t.heartbeat).values(id=1, checked_at=now))
        except SQLAlchemyError as exc:
            why = _write_failure(exc)
            logger.error("database not writable: %s (%s)", why, type(exc).__name__)
            raise StorageUnavailable(f"the database is not writable: {why}") from None

    def _sqlite_path(self) -> Path | None:
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    # -- principals ---------------------------------------------------------------------

    def _create_principal(self, table: Any, name: str, token_hash: str, now: float) -> int:
        try:
            with self._tx() as conn:
                result = conn.execute(
                    insert(table).values(name=name, token_hash=token_hash, created_at=now)
                )
                key = result.inserted_primary_key
                assert key is not None
                return int(key[0])
        except IntegrityError:
            raise Conflict(f"{name!r} already exists") from None

    def create_owner(self, name: str, token_hash: str, now: float) -> int:
        """Insert an owner; :class:`Conflict` when the name exists."""
        return self._create_principal(t.owners, name, token_hash, now)

    def create_host(self, name: str, token_hash: str, now: float) -> int:
        """Insert a host; :class:`Conflict` when the name exists."""
        return self._create_principal(t.hosts, name, token_hash, now)

    def _principal(self, table: Any, token_hash: str) -> Principal | None:
        row = self._run(
            lambda conn: conn.execute(
                select(table.c.id, table.c.name).where(table.c.token_hash == token_hash)
            ).first()
        )
        return None if row is None else Principal(id=row.id, name=row.name)

    def owner_by_token_hash(self, token_hash: str) -> Principal | None:
        """The owner holding this token, if any."""
        return self._principal(t.owners, token_hash)

    def owner_id(self, name: str) -> int | None:
        """The id of the owner named ``name``, if any."""
        query = select(t.owners.c.id).where(t.owners.c.name == name)
        found = self._run(lambda conn: conn.execute(query).scalar_one_or_none())
        return None if found is None else int(found)

    def host_by_token_hash(self, token_hash: str) -> Principal | None:
        """The host holding this token, if any (with the owner it is scoped to)."""
        query = self._fast.compiled(_FAST_HOST_BY_TOKEN)
        row = self._fast.read(lambda s: s.first(query, {"b_token": token_hash}))
        return None if row is None else Principal(row.id, row.name, owner_id=row.owner_id)

    def create_owner_host(self, name: str, token_hash: str, now: float, owner: str) -> int:
        """Insert a host scoped to owner ``owner``; :class:`NotFound` without that owner."""
        try:
            with self._tx() as conn:
                owner_id = conn.execute(
                    select(t.owners.c.id).where(t.owners.c.name == owner)
                ).scalar_one_or_none()
                if owner_id is None:
                    raise NotFound(f"no owner {owner!r}")
                result = conn.execute(
                    insert(t.hosts).values(
                        name=name, token_hash=token_hash, created_at=now, owner_id=owner_id
                    )
                )
                key = result.inserted_primary_key
                assert key is not None
                return int(key[0])
        except IntegrityError:
            raise Conflict(f"{name!r} already exists") from None

    def count_hosts(self) -> int:
        """How many host tokens exist."""
        return self._run(
            lambda conn: int(conn.execute(select(func.count()).select_from(t.hosts)).scalar_one())
        )

    # -- firmware -----------------------------------------------------------------------

    def put_firmware(
        self,
        owner_id: int,
        sha256: str,
        data: bytes,
        now: float,
        *,
        max_count: int = 0,
        max_bytes: int = 0,
    ) -> bool:
        """Store ``data`` under its hash and link it to the owner; True when newly linked.

        A new link that would take the owner past ``max_count`` images or ``max_bytes``
        in total (0: no limit) raises :class:`Conflict` (``firmware_quota``).
        """

        def txn(conn: Connection) -> bool:
            # serialise one owner's uploads (PostgreSQL; SQLite's BEGIN IMMEDIATE already does)
            conn.execute(select(t.owners.c.id).where(t.owners.c.id == owner_id).with_for_update())
            link = conn.execute(
                select(t.owner_firmware.c.sha256).where(
                    and_(
                        t.owner_firmware.c.owner_id == owner_id,
                        t.owner_firmware.c.sha256 == sha256,
                    )
                )
            ).first()
            if link is not None:
                return False
            if max_count or max_bytes:
                usage = conn.execute(
                    select(func.count(), func.coalesce(func.sum(t.firmware_blobs.c.size), 0))
                    .select_from(t.owner_firmware)
                    .join(t.firmware_blobs, t.owner_firmware.c.sha256 == t.firmware_blobs.c.sha256)
                    .where(t.owner_firmware.c.owner_id == owner_id)
                ).one()
                count, size = int(usage[0]), int(usage[1])
                if max_count and count + 1 > max_count:
                    raise Conflict(
                        f"the owner's firmware quota of {max_count} images is used up",
                        reasons=["firmware_quota", f"images {count} of {max_count}"],
                    )
                if max_bytes and size + len(data) > max_bytes:
                    raise Conflict(
                        f"the owner's firmware quota of {max_bytes} bytes would be exceeded",
                        reasons=["firmware_quota", f"bytes {size} + {len(data)} > {max_bytes}"],
                    )
            blob = conn.execute(
                select(t.firmware_blobs.c.sha256).where(t.firmware_blobs.c.sha256 == sha256)
            ).first()
            if blob is None:
                conn.execute(
                    insert(t.firmware_blobs).values(
                        sha256=sha256, size=len(data), data=data, created_at=now
                    )
                )
            conn.execute(
                insert(t.owner_firmware).values(owner_id=owner_id, sha256=sha256, created_at=now)
            )
            return True

        try:
            return self._run(txn)
        except IntegrityError:
            # A concurrent upload of the same image won the insert; it is there now.
            return self._run(txn)

    def delete_firmware(self, owner_id: int, sha256: str) -> bool:
        """Unlink the owner's image (the blob goes with its last link); False if not linked."""

        def txn(conn: Connection) -> bool:
            gone = conn.execute(
                delete(t.owner_firmware).where(
                    and_(
                        t.owner_firmware.c.owner_id == owner_id,
                        t.owner_firmware.c.sha256 == sha256,
                    )
                )
            )
            if _rowcount(gone) != 1:
                return False
            others = conn.execute(
                select(t.owner_firmware.c.owner_id).where(t.owner_firmware.c.sha256 == sha256)
            ).first()
            if others is None:
                conn.execute(delete(t.firmware_blobs).where(t.firmware_blobs.c.sha256 == sha256))
            return True

        return self._run(txn)

    def firmware(self, owner_id: int, sha256: str) -> bytes | None:
        """The image with this hash if the owner uploaded it."""
        query = (
            select(t.firmware_blobs.c.data)
            .join(t.owner_firmware, t.owner_firmware.c.sha256 == t.firmware_blobs.c.sha256)
            .where(
                and_(t.owner_firmware.c.owner_id == owner_id, t.firmware_blobs.c.sha256 == sha256)
            )
        )
        row = self._run(lambda conn: conn.execute(query).first())
        return None if row is None else bytes(row.data)

    def list_firmware(self, owner_id: int) -> list[tuple[str, int]]:
        """(sha256, size) of the owner's images."""
        query = (
            select(t.firmware_blobs.c.sha256, t.firmware_blobs.c.size)
            .join(t.owner_firmware, t.owner_firmware.c.sha256 == t.firmware_blobs.c.sha256)
            .where(t.owner_firmware.c.owner_id == owner_id)
            .order_by(t.firmware_blobs.c.sha256)
        )
        return self._run(lambda conn: [(r.sha256, r.size) for r in conn.execute(query)])

    # -- VMs ----------------------------------------------------------------------------

    @staticmethod
    def _vm(row: Any) -> VmRecord:
        return VmRecord(
            id=row.id,
            uuid=row.uuid,
            owner_id=row.owner_id,
            revision=row.revision,
            registration=json.loads(row.registration),
            secrets_enc=bytes(row.secrets_enc),
            launches_used=row.launches_used,
            max_launches=row.max_launches,
            created_at=row.created_at,
            updated_at=row.updated_at,
            initdata=None if row.initdata is None else bytes(row.initdata),
        )

    def vm(self, owner_id: int, uuid: str) -> VmRecord | None:
        """The owner's VM registered under ``uuid``."""
        params = {"b_owner": owner_id, "b_uuid": uuid}
        of_owner = self._fast.compiled(VM_OF_OWNER)
        row = self._fast.read(lambda s: s.first(of_owner, params))
        return None if row is None else self._vm(row)

    @staticmethod
    def _sole(uuid: str, rows: list[Any]) -> Any:
        """The one row of a lookup by UUID alone (None: none; :class:`OwnerRequired`
        when several owners have the UUID)."""
        if len(rows) > 1:
            raise OwnerRequired.for_vm(uuid)
        return rows[0] if rows else None

    def sole_vm(self, uuid: str) -> VmRecord | None:
        """The VM ``uuid`` of whichever owner has it, for a caller that names no owner;
        :class:`OwnerRequired` when several owners have it."""
        by_uuid = self._fast.compiled(_FAST_VMS_BY_UUID)
        row = self._sole(uuid, self._fast.read(lambda s: s.rows(by_uuid, {"b_uuid": uuid})))
        return None if row is None else self._vm(row)

    def list_vms(
        self, owner_id: int, *, after: str = "", limit: int | None = None
    ) -> list[VmRecord]:
        """The owner's VMs by UUID: those after UUID ``after``, at most ``limit``."""
        query = (
            select(t.vms)
            .where(and_(t.vms.c.owner_id == owner_id, t.vms.c.uuid > after))
            .order_by(t.vms.c.uuid)
        )
        if limit is not None:
            query = query.limit(limit)
        return self._run(lambda conn: [self._vm(r) for r in conn.execute(query)])

    def insert_vm(
        self,
        *,
        uuid: str,
        owner_id: int,
        registration: Mapping[str, Any],
        secrets_enc: bytes,
        max_launches: int | None,
        now: float,
        event: Event,
        initdata: bytes | None = None,
    ) -> VmRecord:
        """Register a new VM (with its SEV-SNP ``initdata``); :class:`Conflict` when the
        owner has the UUID already."""

        def txn(conn: Connection) -> None:
            conn.execute(
                insert(t.vms).values(
                    uuid=uuid,
                    owner_id=owner_id,
                    revision=1,
                    registration=_dumps(registration),
                    secrets_enc=secrets_enc,
                    launches_used=0,
                    max_launches=max_launches,
                    created_at=now,
                    updated_at=now,
                    initdata=initdata,
                )
            )
            _insert_event(conn, event)

        try:
            self._run(txn)
        except IntegrityError:
            raise Conflict(f"VM {uuid} is already registered", reasons=["uuid_taken"]) from None
        record = self.vm(owner_id, uuid)
        assert record is not None
        return record

    def replace_vm(
        self,
        vm: VmRecord,
        *,
        registration: Mapping[str, Any],
        secrets_enc: bytes,
        max_launches: int | None,
        now: float,
        event: Event,
        initdata: bytes | None = None,
    ) -> VmRecord:
        """Replace a registration if nobody changed it since ``vm`` was read; the stored
        initdata is kept unless ``vm`` has none and ``initdata`` is given."""
        values: dict[str, Any] = {
            "revision": vm.revision + 1,
            "registration": _dumps(registration),
            "secrets_enc": secrets_enc,
            "max_launches": max_launches,
            "updated_at": now,
        }
        if vm.initdata is None and initdata is not None:
            values["initdata"] = initdata
        return self._update_vm(vm, values, event)

    def change_initdata(
        self, vm: VmRecord, initdata: bytes, *, now: float, event: Event
    ) -> VmRecord:
        """Store a new initdata document (a new revision) if nobody changed ``vm`` since
        it was read: an attestation decided on the old document releases nothing."""
        values = {"revision": vm.revision + 1, "initdata": initdata, "updated_at": now}
        return self._update_vm(vm, values, event)

    def _update_vm(self, vm: VmRecord, values: Mapping[str, Any], event: Event) -> VmRecord:
        """One conditional UPDATE of ``vm`` at its revision, with its event."""

        def txn(conn: Connection) -> int:
            result = conn.execute(
                update(t.vms)
                .where(and_(t.vms.c.id == vm.id, t.vms.c.revision == vm.revision))
                .values(**values)
            )
            if _rowcount(result) == 1:
                _insert_event(conn, event)
            return _rowcount(result)

        if self._run(txn) != 1:
            raise Conflict("the registration changed concurrently; retry")
        record = self.vm(vm.owner_id, vm.uuid)
        assert record is not None
        return record

    def delete_vm(self, vm: VmRecord, *, event: Event) -> None:
        """Remove a VM, its secrets and its launches.

        The VM row is locked first, as :meth:`release_launch` does: taking the launch
        rows first deadlocked a release on PostgreSQL (a 503 for the validate).
        """

        def txn(conn: Connection) -> None:
            conn.execute(select(t.vms.c.id).where(t.vms.c.id == vm.id).with_for_update())
            conn.execute(delete(t.launches).where(t.launches.c.vm_id == vm.id))
            conn.execute(delete(t.attest_challenges).where(t.attest_challenges.c.vm_id == vm.id))
            conn.execute(delete(t.vms).where(t.vms.c.id == vm.id))
            _insert_event(conn, event)

        self._run(txn)

    # -- launches -----------------------------------------------------------------------

    @staticmethod
    def _launch(row: Any) -> LaunchRecord:
        return LaunchRecord(
            id=row.id,
            vm_id=row.vm_id,
            vm_revision=row.vm_revision,
            state=LaunchStatus(row.state),
            policy=int(row.policy),
            keys_enc=None if row.keys_enc is None else bytes(row.keys_enc),
            chip_id=row.chip_id,
            pdh_sha256=row.pdh_sha256,
            generation=row.generation,
            # float(): SQLite's RETURNING gives a REAL column's integral value as an int
            created_at=float(row.created_at),
            expires_at=float(row.expires_at),
            finished_at=None if row.finished_at is None else float(row.finished_at),
            claimed_until=None if row.claimed_until is None else float(row.claimed_until),
        )

    def begin_launch(self, vm: VmRecord, launch: LaunchRecord, *, event: Event) -> bool:
        """Spend one launch of the budget and store ``launch``; False when none is left."""

        fast = self._fast

        def txn(s: Session) -> bool:
            spend = {"b_vm_id": vm.id, "b_revision": launch.vm_revision}
            if s.run(fast.compiled(SPEND_LAUNCH), spend) != 1:
                return False
            s.run(
                fast.compiled(_FAST_INSERT_LAUNCH),
                {
                    "id": launch.id,
                    "vm_id": launch.vm_id,
                    "vm_revision": launch.vm_revision,
                    "state": launch.state.value,
                    "policy": launch.policy,
                    "keys_enc": launch.keys_enc,
                    "chip_id": launch.chip_id,
                    "pdh_sha256": launch.pdh_sha256,
                    "generation": launch.generation,
                    "created_at": launch.created_at,
                    "expires_at": launch.expires_at,
                    "finished_at": None,
                },
            )
            self._fast_event(s, event)
            return True

        return fast.write(txn)

    def _fast_event(self, s: Session, event: Event) -> None:
        s.run(self._fast.compiled(_FAST_INSERT_EVENT), _event_values(event))

    def launch(self, launch_id: str) -> LaunchRecord | None:
        """A launch by id."""
        row = self._run(lambda conn: conn.execute(_LAUNCH_BY_ID, {"b_id": launch_id}).first())
        return None if row is None else self._launch(row)

    def claim_launch(
        self,
        uuid: str,
        launch_id: str,
        now: float,
        lease: float = 60.0,
        *,
        owner_id: int | None = None,
    ) -> Claim:
        """Move launch ``launch_id`` of the VM ``uuid`` (of owner ``owner_id``, when
        given) to ``validating`` for ``lease`` seconds, if it is pending and unexpired or
        its previous claim lapsed (that worker died), and read the VM as it is after the
        claim, in one transaction. The release is conditional on the claim
        (``claimed_until``). Without ``owner_id``, several owners having the UUID raise
        :class:`OwnerRequired` (and the claim is rolled back)."""
        fast = self._fast
        claim = fast.compiled(_FAST_CLAIM_LAUNCH if owner_id is None else _FAST_CLAIM_OWNED_LAUNCH)
        params = {
            "b_id": launch_id,
            "b_uuid": uuid,
            "b_now": now,
            "b_until": now + lease,
            "b_owner": owner_id,
        }

        def txn(s: Session) -> Claim:
            claimed = s.first(claim, params)
            if owner_id is None:
                vm_row = self._sole(uuid, s.rows(fast.compiled(_FAST_VMS_BY_UUID), params))
            else:
                vm_row = s.first(fast.compiled(VM_OF_OWNER), params)
            vm = None if vm_row is None else self._vm(vm_row)
            if claimed is not None:
                return Claim(vm=vm, launch=self._launch(claimed), claimed=True)
            row = s.first(fast.compiled(_FAST_LAUNCH_BY_ID), {"b_id": launch_id})
            return Claim(vm=vm, launch=None if row is None else self._launch(row), claimed=False)

        return fast.write(txn)

    def finish_launch(
        self, launch_id: str, state: LaunchStatus, now: float, *, event: Event
    ) -> None:
        """Record the outcome and forget the transport keys."""

        finish = self._fast.compiled(_FAST_FINISH_LAUNCH)

        def txn(s: Session) -> None:
            s.run(finish, {"b_id": launch_id, "b_state": state.value, "b_now": now})
            self._fast_event(s, event)

        self._fast.write(txn)

    def release_launch(self, launch: LaunchRecord, now: float, *, event: Event) -> bool:
        """Mark the claimed ``launch`` validated, only while its VM is still at the
        launch's revision; False (nothing written) after a PUT or DELETE committed.

        The VM row is locked first (``FOR UPDATE``; SQLite's write lock is taken by
        ``BEGIN IMMEDIATE``), so a PUT or DELETE either committed before (and wins) or
        waits until this release committed.
        """

        fast = self._fast
        params = {
            "b_vm_id": launch.vm_id,
            "b_id": launch.id,
            "b_revision": launch.vm_revision,
            "b_claimed_until": launch.claimed_until,
            "b_now": now,
        }

        def txn(s: Session) -> bool:
            row = s.first(fast.compiled(VM_REVISION_FOR_UPDATE), params)
            if row is None or row.revision != launch.vm_revision:
                return False
            if s.run(fast.compiled(_FAST_RELEASE_LAUNCH), params) != 1:
                return False
            self._fast_event(s, event)
            return True

        return fast.write(txn)

    def unclaim_launch(self, launch: LaunchRecord) -> bool:
        """Give a claimed launch back (``pending``) after a retryable failure, if the
        claim is still this one; True when it was given back."""

        unclaim = self._fast.compiled(_FAST_UNCLAIM_LAUNCH)
        params = {"b_id": launch.id, "b_claimed_until": launch.claimed_until}
        return self._fast.write(lambda s: s.run(unclaim, params) == 1)

    def vm_for_launch(
        self, uuid: str, now: float, *, owner_id: int | None = None
    ) -> tuple[VmRecord, int, float | None] | None:
        """The VM ``uuid`` (of owner ``owner_id``; without one, of the only owner that
        has the UUID, else :class:`OwnerRequired`) with how many unexpired launches it
        has pending and when the first of them expires, in one read (the launch-flood
        bound of ``/launch``)."""
        params = {"b_uuid": uuid, "b_now": now, "b_owner": owner_id}
        if owner_id is None:
            by_uuid = self._fast.compiled(_FAST_VM_FOR_LAUNCH_BY_UUID)
            row = self._sole(uuid, self._fast.read(lambda s: s.rows(by_uuid, params)))
        else:
            of_owner = self._fast.compiled(_FAST_VM_FOR_LAUNCH_OF_OWNER)
            row = self._fast.read(lambda s: s.first(of_owner, params))
        if row is None:
            return None
        first = None if row.first_expiry is None else float(row.first_expiry)
        return self._vm(row), int(row.pending), first

    def purge_expired_keys(self, now: float) -> int:
        """Drop TEK/TIK of expired launches never finished (also those a crash left
        ``validating``); returns how many."""

        def txn(conn: Connection) -> int:
            result = conn.execute(
                update(t.launches)
                .where(
                    and_(
                        t.launches.c.state.in_(_ACTIVE),
                        t.launches.c.expires_at <= now,
                        t.launches.c.keys_enc.is_not(None),
                    )
                )
                .values(keys_enc=None)
            )
            return _rowcount(result)

        return self._run(txn)

    def delete_old_launches(self, before: float, *, batch: int = 1000) -> int:
        """Delete up to ``batch`` launches finished before ``before``, or never finished
        and expired before it; returns how many."""
        finished = select(t.launches.c.id).where(t.launches.c.finished_at < before).limit(batch)
        abandoned = (
            select(t.launches.c.id)
            .where(and_(t.launches.c.state.in_(_ACTIVE), t.launches.c.expires_at < before))
            .limit(batch)
        )

        def txn(conn: Connection) -> int:
            count = 0
            for query in (finished, abandoned):
                ids = list(conn.execute(query).scalars())
                if ids:
                    count += _rowcount(
                        conn.execute(delete(t.launches).where(t.launches.c.id.in_(ids)))
                    )
            return count

        return self._run(txn)

    def delete_old_events(self, before: float, *, batch: int = 1000) -> int:
        """Delete up to ``batch`` audit events recorded before ``before``; returns how many."""
        query = select(t.events.c.id).where(t.events.c.ts < before).limit(batch)

        def txn(conn: Connection) -> int:
            ids = list(conn.execute(query).scalars())
            if not ids:
                return 0
            return _rowcount(conn.execute(delete(t.events).where(t.events.c.id.in_(ids))))

        return self._run(txn)

    # -- events -------------------------------------------------------------------------

    def add_event(self, event: Event) -> None:
        """Append an audit event."""
        self._run(lambda conn: _insert_event(conn, event))

    def events(
        self, owner_id: int, vm_uuid: str, *, after: int = 0, limit: int = 100
    ) -> list[EventRecord]:
        """The owner's events for one VM, oldest first."""
        query = (
            select(t.events)
            .where(
                and_(
                    t.events.c.owner_id == owner_id,
                    t.events.c.vm_uuid == vm_uuid,
                    t.events.c.id > after,
                )
            )
            .order_by(t.events.c.id)
            .limit(limit)
        )
        return self._run(
            lambda conn: [
                EventRecord(
                    id=r.id,
                    vm_uuid=r.vm_uuid,
                    ts=r.ts,
                    kind=r.kind,
                    launch_id=r.launch_id,
                    outcome=r.outcome,
                    detail=json.loads(r.detail),
                )
                for r in conn.execute(query)
            ]
        )

    # -- maintenance --------------------------------------------------------------------

    def rotate_encrypted(self, rotate: Callable[[bytes], bytes]) -> int:
        """Re-encrypt every ``*_enc`` value with ``rotate``; returns how many."""

        def txn(conn: Connection) -> int:
            count = 0
            for row in conn.execute(select(t.vms.c.id, t.vms.c.secrets_enc)).all():
                conn.execute(
                    update(t.vms)
                    .where(t.vms.c.id == row.id)
                    .values(secrets_enc=rotate(bytes(row.secrets_enc)))
                )
                count += 1
            query = select(t.launches.c.id, t.launches.c.keys_enc).where(
                t.launches.c.keys_enc.is_not(None)
            )
            for row in conn.execute(query).all():
                conn.execute(
                    update(t.launches)
                    .where(t.launches.c.id == row.id)
                    .values(keys_enc=rotate(bytes(row.keys_enc)))
                )
                count += 1
            return count

        return self._run(txn)

    def stats(self, now: float) -> dict[str, int]:
        """Counts for /metrics: owners, VMs and the launches in progress.

        ``launches_pending`` counts only unexpired sessions. Finished launches are not
        counted (that would read every row of a table retention keeps large); the
        process counters of /metrics count outcomes.
        """
        count = select(func.count()).select_from(t.launches)

        def txn(conn: Connection) -> dict[str, int]:
            return {
                "owners": int(
                    conn.execute(select(func.count()).select_from(t.owners)).scalar_one()
                ),
                "vms": int(conn.execute(select(func.count()).select_from(t.vms)).scalar_one()),
                "launches_pending": int(
                    conn.execute(
                        count.where(
                            and_(
                                t.launches.c.state == LaunchStatus.PENDING.value,
                                t.launches.c.expires_at > now,
                            )
                        )
                    ).scalar_one()
                ),
                "launches_validating": int(
                    conn.execute(
                        count.where(t.launches.c.state == LaunchStatus.VALIDATING.value)
                    ).scalar_one()
                ),
            }

        return self._run(txn)
