"""Persistence: SQLAlchemy Core (SQLite or PostgreSQL), alembic migrations, encryption at rest."""
