"""Safe defaults (issue 10): host tokens scoped to one owner (``hosts.owner_id``,
NULL: an unscoped host); the one-row ``heartbeat`` table /healthz writes to prove the
database is writable; the lease of a launch's claim (``launches.claimed_until``): a
``validating`` launch whose worker died is claimable again once it passed.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the owner of a host token, the heartbeat table and the claim lease."""
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("owner_id", sa.Integer, nullable=True))
        batch.create_foreign_key(
            "fk_hosts_owner_id", "owners", ["owner_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("launches") as batch:
        batch.add_column(sa.Column("claimed_until", sa.Float, nullable=True))
    op.create_table(
        "heartbeat",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("checked_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop them (scoped host tokens become unscoped)."""
    op.drop_table("heartbeat")
    with op.batch_alter_table("launches") as batch:
        batch.drop_column("claimed_until")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_constraint("fk_hosts_owner_id", type_="foreignkey")
        batch.drop_column("owner_id")
