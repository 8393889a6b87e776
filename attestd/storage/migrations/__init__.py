"""Alembic migrations of the attestd schema (``attestd db upgrade``)."""
