"""Alembic environment: runs on the connection handed over in ``config.attributes``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from attestd.storage.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several nodes may upgrade at once: one at a time.
            connection.execute(text("SELECT pg_advisory_xact_lock(7411001)"))
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("attestd migrations run through `attestd db upgrade`")
_run(connection)
