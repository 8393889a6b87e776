"""SEV-SNP attestation challenges (issue 12).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the challenges table."""
    op.create_table(
        "attest_challenges",
        sa.Column("nonce_sha256", sa.String(64), primary_key=True),
        sa.Column("vm_id", sa.Integer, sa.ForeignKey("vms.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index("ix_attest_challenges_vm_id", "attest_challenges", ["vm_id"])


def downgrade() -> None:
    """Drop the challenges table."""
    op.drop_index("ix_attest_challenges_vm_id", "attest_challenges")
    op.drop_table("attest_challenges")
