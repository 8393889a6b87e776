"""Persistence: SQLAlchemy Core (SQLite or PostgreSQL), alembic migrations, encryption at rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attestd.config import Settings
    from attestd.storage.ports import Store


def open_store(settings: Settings) -> Store:
    """The database of ``settings`` (the SQLite file's directory is created).

    The only place outside this package that gets the SQL adapter is through here,
    typed as the :class:`~attestd.storage.ports.Store` Protocol.
    """
    from attestd.storage.sql import Database

    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(
        settings.effective_database_url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
    )
