"""Indexes for the hot path and for maintenance.

``launches(state, expires_at)`` serves the pending / validating gauges of
``/metrics`` and the expired-key purge; ``launches(finished_at)`` and
``events(ts)`` serve retention (``attestd db maintain``). Without them each of
these queries scanned the whole table.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the indexes."""
    op.create_index("ix_launches_state_expires", "launches", ["state", "expires_at"])
    op.create_index("ix_launches_finished_at", "launches", ["finished_at"])
    op.create_index("ix_events_ts", "events", ["ts"])


def downgrade() -> None:
    """Drop the indexes."""
    op.drop_index("ix_events_ts", "events")
    op.drop_index("ix_launches_finished_at", "launches")
    op.drop_index("ix_launches_state_expires", "launches")
