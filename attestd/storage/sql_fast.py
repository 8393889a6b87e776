"""The storage hot path: Core statements compiled once, run on the pooled DBAPI connection.

A SQLAlchemy Core transaction of one statement costs ~220 µs of CPU on SQLite where
the sqlite3 module alone takes ~12 µs; the launch+validate pair runs four of them.
Each hot statement is still *defined* once in Core (:mod:`attestd.storage.sql`); here
it is compiled once per dialect, and executed with the compiled SQL and parameters
in the compiled order, through the bind processors of the statement's types (the
result processors, from the cursor's column types, on the rows), so the records
read are the ones the Core path reads. It reads private attributes of SQLAlchemy's
compiled statements (``_bind_processors``, ``_result_columns``, ``positiontup``), so
setup.cfg bounds SQLAlchemy to the minor versions tested (2.0 and 2.1).

Transactions:

- a *read* is one statement in the driver's autocommit mode (SQLite WAL: a plain
  read, no write lock; PostgreSQL: one round trip);
- a *write* takes :class:`WriteLock` on SQLite, then ``BEGIN IMMEDIATE``; on
  PostgreSQL the driver opens the transaction (the engine's isolation level);
  either commits at the end and rolls back on any exception.

A pooled PostgreSQL connection the server closed while it was idle is discarded at
checkout without a round trip (:func:`drop_closed_on_checkout`), so the transaction
runs on a fresh one; a connection lost during a transaction is discarded and the
caller gets :class:`~attestd.errors.StorageUnavailable` (nothing was committed).
Database errors are mapped as ``Database._tx`` maps them (SQLAlchemy's classes).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import select
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from attestd.errors import StorageUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What an observer is handed at every transaction start (then each statement's SQL and
#: DBAPI parameters).
BEGIN = "BEGIN"
Observer = Callable[[str, Any], None]


@dataclass(frozen=True, eq=False)
class Statement:
    """A hot Core statement; ``keys``: the columns an ``INSERT`` is given."""

    stmt: ClauseElement
    keys: tuple[str, ...] | None = None


class Compiled:
    """One :class:`Statement` compiled for one dialect."""

    __slots__ = ("_columns", "_dialect", "_positional", "_results", "_row", "_slots", "sql")

    def __init__(self, statement: Statement, dialect: Dialect) -> None:
        compiled = cast(
            SQLCompiler,
            statement.stmt.compile(
                dialect=dialect,
                column_keys=None if statement.keys is None else list(statement.keys),
            ),
        )
        if compiled.escaped_bind_names:
            raise ValueError("the fast path takes plain parameter names")
        self.sql = compiled.string
        self._dialect = dialect
        processors = compiled._bind_processors
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        self._positional = compiled.positiontup is not None
        order = compiled.positiontup if compiled.positiontup is not None else list(by_name)
        # (name rendered in the SQL, key the caller passes, literal value, bind processor)
        self._slots: tuple[tuple[str, str, bool, Any, Callable[[Any], Any] | None], ...] = tuple(
            self._slot(by_name[name], name, processors.get(name)) for name in order
        )
        self._columns = tuple(entry[3] for entry in compiled._result_columns)
        names = [entry[0] for entry in compiled._result_columns]
        self._row: Any = collections.namedtuple("Row", names, rename=True) if names else None
        self._results: list[Callable[[Any], Any] | None] | None = None

    @staticmethod
    def _slot(
        bind: BindParameter[Any], name: str, processor: Any
    ) -> tuple[str, str, bool, Any, Callable[[Any], Any] | None]:
        if bind.expanding:
            raise ValueError(f"the fast path takes no expanding parameter ({bind.key})")
        literal = not bind.required
        return (name, bind.key, literal, bind.effective_value if literal else None, processor)

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters: the caller's (by bind key) or the statement's literals,
        through the types' bind processors, in the compiled order or by rendered name."""
        values: list[Any] = []
        for _name, key, literal, value, processor in self._slots:
            if key in params or not literal:
                value = params[key]
            values.append(value if processor is None or value is None else processor(value))
        if self._positional:
            return tuple(values)
        return {slot[0]: value for slot, value in zip(self._slots, values, strict=True)}

    def rows(self, cursor: Any) -> list[Any]:
        """Every row of the executed ``cursor``, through the result processors."""
        fetched = cursor.fetchall()
        if self._row is None:
            return []
        results = self._results
        if results is None:
            description = cursor.description
            results = self._results = [
                type_._cached_result_processor(self._dialect, column[1])
                for type_, column in zip(self._columns, description, strict=True)
            ]
        make = self._row._make
        if not any(results):
            return [make(row) for row in fetched]
        return [
            make(
                value if proc is None or value is None else proc(value)
                for proc, value in zip(results, row, strict=True)
            )
            for row in fetched
        ]


class WriteLock:
    """Serialize a SQLite database's write transactions without busy-polling.

    SQLite's busy handler sleeps and retries (1, 2, 5 … 100 ms), so a writer that
    finds the database locked waits up to 100 ms past the release. Here a writer
    first takes a process-wide :class:`threading.Lock`, then ``flock(LOCK_EX)`` on
    ``<database>.lock`` beside the database (one open file description per process,
    opened again after a fork): the kernel wakes the next writer at the release.
    ``BEGIN IMMEDIATE`` with the busy timeout stays the backstop (a writer that does
    not take this lock, another program). Without a lock file (a read-only
    directory, an in-memory database) only the thread lock is taken.
    """

    def __init__(self, database: Path | None) -> None:
        self.path = None if database is None else database.with_name(database.name + ".lock")
        self._mutex = threading.Lock()
        self._pid = -1
        self._fd = -1

    def _file(self) -> int:
        """This process's descriptor of the lock file (-1: none)."""
        pid = os.getpid()
        if self._pid != pid and self.path is not None:
            # after a fork the inherited descriptor shares the parent's lock: a new one
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                logger.warning("no write lock file %s (%s): busy timeout only", self.path, exc)
                self._fd = -1
            self._pid = pid
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock (re-entry from the same thread is a deadlock: do not nest)."""
        with self._mutex:
            fd = self._file()
            if fd < 0:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close this process's descriptor (it is opened again when needed)."""
        with self._mutex:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1
            self._pid = -1


class Session:
    """The statements of one fast-path transaction."""

    __slots__ = ("_cursor", "_observer")

    def __init__(self, cursor: Any, observer: Observer | None) -> None:
        self._cursor = cursor
        self._observer = observer

    def _execute(self, compiled: Compiled, params: Mapping[str, Any]) -> Any:
        parameters = compiled.parameters(params)
        if self._observer is not None:
            self._observer(compiled.sql, parameters)
        self._cursor.execute(compiled.sql, parameters)
        return self._cursor

    def run(self, compiled: Compiled, params: Mapping[str, Any]) -> int:
        """Execute a statement returning no rows; its row count."""
        return int(self._execute(compiled, params).rowcount)

    def rows(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """Execute a query (or DML with RETURNING); all its rows."""
        return compiled.rows(self._execute(compiled, params))

    def first(self, compiled: Compiled, params: Mapping[str, Any]) -> Any:
        """Execute a query; its first row or None."""
        found = self.rows(compiled, params)
        return found[0] if found else None


def drop_closed_on_checkout(engine: Engine) -> None:
    """Discard a pooled connection the server closed, at its checkout, with no round trip.

    What ``pool_pre_ping`` buys (a server restart or failover closes every idle
    connection; the next request should not get the dead one) without its
    ``SELECT 1`` per checkout: an idle PostgreSQL connection receives nothing unless
    the server ends it (its termination notice, then end of file), so a socket that
    is readable at checkout is a closed connection. The pool then connects anew (a
    server that is down: the checkout fails, 503).
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_conn.closed:
            raise DisconnectionError("the connection is closed")
        poller = select.poll()
        poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            raise DisconnectionError("the server closed the idle connection")


class FastPath:
    """Run hot transactions on the pooled DBAPI connections of ``engine``."""

    def __init__(self, engine: Engine, lock: WriteLock | None) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.sqlite = self.dialect.name == "sqlite"
        self.lock = lock
        self.observer: Observer | None = None
        self._compiled: dict[Statement, Compiled] = {}
        dbapi = self.dialect.loaded_dbapi
        self._dbapi_error: type[Exception] = dbapi.Error

    def compiled(self, statement: Statement) -> Compiled:
        """``statement`` compiled for this engine's dialect (once)."""
        found = self._compiled.get(statement)
        if found is None:
            found = self._compiled[statement] = Compiled(statement, self.dialect)
        return found

    def read(self, body: Callable[[Session], T]) -> T:
        """``body`` as one read in autocommit mode (no write lock, no ``BEGIN``)."""
        return self._once(body, write=False)

    def write(self, body: Callable[[Session], T]) -> T:
        """``body`` as one write transaction (committed, or rolled back on any error)."""
        if self.lock is None:
            return self._once(body, write=True)
        with self.lock.held():
            return self._once(body, write=True)

    def _once(self, body: Callable[[Session], T], *, write: bool) -> T:
        try:
            fairy = self.engine.raw_connection()
        except DBAPIError as exc:
            self._unavailable(exc)
        except self._dbapi_error as exc:  # the pool connects with the driver alone
            self._raise(self._wrap("(connect)", exc, disconnected=False), exc)
        cursor: Any = None
        try:
            raw: Any = fairy.dbapi_connection
            if not write and not self.sqlite:
                raw.autocommit = True
            cursor = raw.cursor()
            if self.observer is not None:
                self.observer(BEGIN, None)
            if write and self.sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            result = body(Session(cursor, self.observer))
            if write:
                raw.commit()
            cursor.close()
            if not write and not self.sqlite:
                raw.autocommit = False
            return result
        except self._dbapi_error as exc:
            disconnected = self._discard(fairy, cursor, exc)
            self._raise(self._wrap("(fast path)", exc, disconnected=disconnected), exc)
        except BaseException:
            self._rollback(fairy)
            raise
        finally:
            fairy.close()

    def _discard(self, fairy: PoolProxiedConnection, cursor: Any, exc: Exception) -> bool:
        """Roll back after ``exc``; a lost connection is discarded instead (the pool's
        other connections are checked at their checkout: :func:`drop_closed_on_checkout`).
        True when the connection was lost."""
        disconnected = bool(
            self.dialect.is_disconnect(cast(Any, exc), fairy.dbapi_connection, cursor)
        )
        if disconnected:
            fairy.invalidate(exc)
        else:
            self._rollback(fairy)
        return disconnected

    @staticmethod
    def _rollback(fairy: PoolProxiedConnection) -> None:
        raw = fairy.dbapi_connection
        if raw is None:
            return
        try:
            raw.rollback()
            if getattr(raw, "autocommit", False) is True:
                raw.autocommit = False
        except Exception:  # a broken connection: the pool discards it
            fairy.invalidate()

    def _wrap(self, sql: str, exc: Exception, *, disconnected: bool) -> DBAPIError:
        """The SQLAlchemy exception the Core path raises for the driver's ``exc``."""
        wrapped = DBAPIError.instance(
            sql,
            None,
            exc,
            self._dbapi_error,
            dialect=self.dialect,
            connection_invalidated=disconnected,
        )
        assert isinstance(wrapped, DBAPIError)
        return wrapped

    def _raise(self, wrapped: DBAPIError, exc: Exception) -> NoReturn:
        """As ``Database._tx``: an integrity error as is (the caller decides), an
        operational one as :class:`StorageUnavailable`, any other as is."""
        if isinstance(wrapped, OperationalError) and not isinstance(wrapped, IntegrityError):
            self._unavailable(wrapped)
        raise wrapped from exc

    @staticmethod
    def _unavailable(exc: DBAPIError) -> NoReturn:
        logger.error("database error: %s", type(exc.orig).__name__)
        raise StorageUnavailable("the database is unavailable") from None
