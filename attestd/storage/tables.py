"""The database schema (SQLAlchemy Core). Migrations in ``migrations/`` create it.

Times are UNIX seconds (float) so SQLite and PostgreSQL compare them alike.
Columns ending in ``_enc`` hold Fernet tokens (see ``attestd.storage.keys``);
no other column holds secret material.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

owners = Table(
    "owners",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

hosts = Table(
    "hosts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    # the one owner whose VMs this host may launch (NULL: any owner's; migration 0003)
    Column(
        "owner_id",
        Integer,
        ForeignKey("owners.id", ondelete="CASCADE", name="fk_hosts_owner_id"),
        nullable=True,
    ),
)

firmware_blobs = Table(
    "firmware_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

owner_firmware = Table(
    "owner_firmware",
    metadata,
    Column("owner_id", Integer, ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True),
    Column("sha256", String(64), ForeignKey("firmware_blobs.sha256"), primary_key=True),
    Column("created_at", Float, nullable=False),
)

vms = Table(
    "vms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # unique per owner: each owner has its own VM UUID namespace (migration 0006)
    Column("uuid", String(36), nullable=False),
    Column("owner_id", Integer, ForeignKey("owners.id", ondelete="CASCADE"), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("registration", Text, nullable=False),
    Column("secrets_enc", LargeBinary, nullable=False),
    Column("launches_used", Integer, nullable=False),
    Column("max_launches", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # the SEV-SNP initdata document the service made for the VM (migration 0005)
    Column("initdata", LargeBinary, nullable=True),
    UniqueConstraint("owner_id", "uuid", name="uq_vms_owner_uuid"),
)
Index("ix_vms_owner_id", vms.c.owner_id)
# a host or guest that names no owner: the VM of that UUID when only one owner has it
Index("ix_vms_uuid", vms.c.uuid)

launches = Table(
    "launches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("vm_id", Integer, ForeignKey("vms.id", ondelete="CASCADE"), nullable=False),
    Column("vm_revision", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("policy", BigInteger, nullable=False),
    Column("keys_enc", LargeBinary, nullable=True),
    Column("chip_id", String(128), nullable=False),
    Column("pdh_sha256", String(64), nullable=False),
    Column("generation", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # the claim of a validating launch lasts until then (migration 0003)
    Column("claimed_until", Float, nullable=True),
)
Index("ix_launches_vm_id", launches.c.vm_id)
Index("ix_launches_state_expires", launches.c.state, launches.c.expires_at)
Index("ix_launches_finished_at", launches.c.finished_at)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner_id", Integer, ForeignKey("owners.id", ondelete="CASCADE"), nullable=False),
    Column("vm_uuid", String(36), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("launch_id", String(64), nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("detail", Text, nullable=False),
)
Index("ix_events_owner_vm", events.c.owner_id, events.c.vm_uuid, events.c.id)
Index("ix_events_ts", events.c.ts)

attest_challenges = Table(
    "attest_challenges",
    metadata,
    Column("nonce_sha256", String(64), primary_key=True),
    Column("vm_id", Integer, ForeignKey("vms.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)
Index("ix_attest_challenges_vm_id", attest_challenges.c.vm_id)

#: One row /healthz rewrites: a database that cannot take a write is unhealthy (0003).
heartbeat = Table(
    "heartbeat",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("checked_at", Float, nullable=False),
)
