"""Initial schema: owners, hosts, firmware, VMs, launches, events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table."""
    for name in ("owners", "hosts"):
        op.create_table(
            name,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(128), nullable=False, unique=True),
            sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("created_at", sa.Float, nullable=False),
        )
    op.create_table(
        "firmware_blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "owner_firmware",
        sa.Column(
            "owner_id",
            sa.Integer,
            sa.ForeignKey("owners.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "sha256", sa.String(64), sa.ForeignKey("firmware_blobs.sha256"), primary_key=True
        ),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "vms",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column(
            "owner_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("registration", sa.Text, nullable=False),
        sa.Column("secrets_enc", sa.LargeBinary, nullable=False),
        sa.Column("launches_used", sa.Integer, nullable=False),
        sa.Column("max_launches", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_vms_owner_id", "vms", ["owner_id"])
    op.create_table(
        "launches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vm_id", sa.Integer, sa.ForeignKey("vms.id", ondelete="CASCADE"), nullable=False),
        sa.Column("vm_revision", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("policy", sa.BigInteger, nullable=False),
        sa.Column("keys_enc", sa.LargeBinary, nullable=True),
        sa.Column("chip_id", sa.String(128), nullable=False),
        sa.Column("pdh_sha256", sa.String(64), nullable=False),
        sa.Column("generation", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_launches_vm_id", "launches", ["vm_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "owner_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("vm_uuid", sa.String(36), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("launch_id", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_events_owner_vm", "events", ["owner_id", "vm_uuid", "id"])


def downgrade() -> None:
    """Drop every table."""
    op.drop_index("ix_events_owner_vm", "events")
    op.drop_table("events")
    op.drop_index("ix_launches_vm_id", "launches")
    op.drop_table("launches")
    op.drop_index("ix_vms_owner_id", "vms")
    op.drop_table("vms")
    op.drop_table("owner_firmware")
    op.drop_table("firmware_blobs")
    op.drop_table("hosts")
    op.drop_table("owners")
