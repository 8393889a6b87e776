"""Each owner has its own VM UUID namespace (issue 10): ``vms`` is unique on
``(owner_id, uuid)`` instead of ``uuid``; ``ix_vms_uuid`` finds the owners of a UUID
for a caller that names none. Rows are kept both ways; the downgrade refuses while two
owners have the same UUID.

On SQLite the table is rebuilt (batch mode); ``Database.upgrade`` turns foreign keys
off around the migration so that the rebuild does not cascade into launches.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from attestd.errors import Conflict

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: names SQLite's unnamed ``UNIQUE (uuid)`` of 0001 so that batch mode can drop it
_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
#: PostgreSQL's name of 0001's ``UNIQUE (uuid)``, and the name the downgrade restores
_PG_UUID_KEY = "vms_uuid_key"


def _uuid_constraint(unnamed: str) -> str:
    """The name of the unique constraint on ``vms.uuid`` alone (``unnamed``: the name
    the naming convention gives SQLite's unnamed one of 0001)."""
    for found in sa.inspect(op.get_bind()).get_unique_constraints("vms"):
        if found["column_names"] == ["uuid"]:
            return str(found["name"] or unnamed)
    return unnamed


def upgrade() -> None:
    """Unique per owner; index the UUID alone."""
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("vms", naming_convention=_NAMES) as batch:
            batch.drop_constraint(_uuid_constraint("uq_vms_uuid"), type_="unique")
            batch.create_unique_constraint("uq_vms_owner_uuid", ["owner_id", "uuid"])
    else:
        op.drop_constraint(_uuid_constraint(_PG_UUID_KEY), "vms", type_="unique")
        op.create_unique_constraint("uq_vms_owner_uuid", "vms", ["owner_id", "uuid"])
    op.create_index("ix_vms_uuid", "vms", ["uuid"])


def downgrade() -> None:
    """Globally unique UUIDs again; refused while two owners have the same UUID."""
    shared = (
        op.get_bind()
        .execute(
            sa.text("SELECT uuid FROM vms GROUP BY uuid HAVING COUNT(*) > 1 ORDER BY uuid LIMIT 1")
        )
        .scalar()
    )
    if shared is not None:
        raise Conflict(
            f"cannot downgrade below 0006: VM {shared} is registered by several owners "
            "(delete all but one of them first)",
            reasons=["uuid_shared"],
        )
    op.drop_index("ix_vms_uuid", "vms")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("vms") as batch:
            batch.drop_constraint("uq_vms_owner_uuid", type_="unique")
            batch.create_unique_constraint(_PG_UUID_KEY, ["uuid"])
    else:
        op.drop_constraint("uq_vms_owner_uuid", "vms", type_="unique")
        op.create_unique_constraint(_PG_UUID_KEY, "vms", ["uuid"])
