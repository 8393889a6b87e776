"""SEV-SNP initdata per VM (issue 13): the document the service made, stored as bytes.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``vms.initdata`` (NULL: no initdata, e.g. VMs registered before)."""
    op.add_column("vms", sa.Column("initdata", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    """Drop ``vms.initdata``."""
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("initdata")
