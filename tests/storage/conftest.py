"""Service fixtures (see ``tests/servicefix.py``)."""

from __future__ import annotations

from tests.servicefix import alice, app, backend, bob, client, database_url, pg, settings

__all__ = ["alice", "app", "backend", "bob", "client", "database_url", "pg", "settings"]
