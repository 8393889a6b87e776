"""The fast-path statements on the ``vms`` table that both the SEV launch tables
(:mod:`attestd.storage.sql`) and the SEV-SNP challenge tables
(:mod:`attestd.storage.sql_challenges`) run: one definition for both."""

from __future__ import annotations

from sqlalchemy import and_, bindparam, or_, select, update

from attestd.storage import tables as t
from attestd.storage.sql_fast import Statement

# a VM is named by its owner and UUID (each owner has its own UUID namespace)
VM_OF_OWNER = Statement(
    select(t.vms).where(
        and_(t.vms.c.owner_id == bindparam("b_owner"), t.vms.c.uuid == bindparam("b_uuid"))
    )
)
# one release of the budget, on the registration revision it was decided on
SPEND_LAUNCH = Statement(
    update(t.vms)
    .where(
        and_(
            t.vms.c.id == bindparam("b_vm_id"),
            t.vms.c.revision == bindparam("b_revision"),
            or_(
                t.vms.c.max_launches.is_(None),
                t.vms.c.launches_used < t.vms.c.max_launches,
            ),
        )
    )
    .values(launches_used=t.vms.c.launches_used + 1)
)
# a release (or a new challenge) locks the VM row first (FOR UPDATE; SQLite's BEGIN
# IMMEDIATE locks the whole database)
VM_REVISION_FOR_UPDATE = Statement(
    select(t.vms.c.revision).where(t.vms.c.id == bindparam("b_vm_id")).with_for_update()
)
