"""Service fixtures (see ``tests/servicefix.py``)."""

from __future__ import annotations

from tests.servicefix import (
    alice,
    anchors_dir,
    app,
    backend,
    bob,
    client,
    clock,
    database_url,
    host_app,
    host_settings,
    ovmf,
    pg,
    platform,
    rogue_platform,
    settings,
)

__all__ = [
    "alice",
    "anchors_dir",
    "app",
    "backend",
    "bob",
    "client",
    "clock",
    "database_url",
    "host_app",
    "host_settings",
    "ovmf",
    "pg",
    "platform",
    "rogue_platform",
    "settings",
]
