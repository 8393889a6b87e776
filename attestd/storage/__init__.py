"""Persistence: SQLAlchemy Core (SQLite or PostgreSQL), alembic migrations, encryption at rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attestd.config import Settings
    from attestd.storage.ports import Store


def open_store(settings: Settings) -> Store:
    """The database of ``settings``.

    A SQLite file the service creates is 0600 in a 0700 directory (SQLite gives its
    ``-wal`` and ``-shm`` files the database file's mode); an existing file or
    directory keeps the mode its operator gave it.

    The only place outside this package that gets the SQL adapter is through here,
    typed as the :class:`~attestd.storage.ports.Store` Protocol.
    """
    from attestd.files import private_dir
    from attestd.storage.sql import Database

    if not settings.database_url:
        private_dir(settings.data_dir)
    _create_sqlite_file(settings.effective_database_url)
    return Database(
        settings.effective_database_url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
    )


def _create_sqlite_file(url: str) -> None:
    """Create the SQLite file of ``url`` empty and 0600 (before SQLite creates it 0644)."""
    import os
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from attestd.files import private_dir

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # Database() reports the bad URL
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return
    if name.startswith("file:") or parsed.query.get("uri"):
        return  # a SQLite URI (mode=ro, ...): the operator's file, opened as given
    path = Path(name)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # Database() reports what it cannot open
    os.close(fd)
