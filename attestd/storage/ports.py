"""What the service needs from storage: records, the audit ``Event`` and repository Protocols.

The use-cases in :mod:`attestd.service` depend only on these Protocols; the
SQLAlchemy adapter (:mod:`attestd.storage.sql`) implements all of them in one
``Database`` class. JSON encoding of registrations and event details happens
inside the adapter: records carry decoded values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated owner or host.

    ``owner_id`` is set on a host token scoped to one owner: it launches only that
    owner's VMs and names that owner's UUID namespace (None: an owner itself, or an
    unscoped host, which names the owner by the base URL ``/owners/<name>/v1``).
    """

    id: int
    name: str
    owner_id: int | None = None


@dataclass(frozen=True, slots=True)
class VmRecord:
    """A registered VM. ``registration`` is the public document (no secret values)."""

    id: int
    uuid: str
    owner_id: int
    revision: int
    registration: Mapping[str, Any]
    secrets_enc: bytes
    launches_used: int
    max_launches: int | None
    created_at: float
    updated_at: float
    #: the SEV-SNP initdata document (exact bytes; its SHA-256 is the expected HOST_DATA)
    initdata: bytes | None = None


class LaunchStatus(StrEnum):
    """Status of a stored launch: pending -> validating -> validated | failed.

    (Not the host's ``attestd.host.state.LaunchState``, its per-domain record.)
    """

    PENDING = "pending"
    VALIDATING = "validating"
    VALIDATED = "validated"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """One launch session. ``keys_enc`` is the encrypted TEK||TIK (None once finished)."""

    id: str
    vm_id: int
    vm_revision: int
    state: LaunchStatus
    policy: int
    keys_enc: bytes | None
    chip_id: str
    pdh_sha256: str
    generation: str
    created_at: float
    expires_at: float
    finished_at: float | None
    #: while ``validating``: when the claim lapses (the claimer is presumed dead)
    claimed_until: float | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim of a launch found, read in the claiming transaction.

    ``claimed`` is true when this call moved the launch from pending to validating;
    ``launch`` is the launch as claimed (or as it is, when not claimed); ``vm`` is the
    VM registered under the UUID after the claim (None when there is none).
    """

    vm: VmRecord | None
    launch: LaunchRecord | None
    claimed: bool


class EventKind(StrEnum):
    """What an audit event records."""

    REGISTERED = "registered"
    REPLACED = "replaced"
    DELETED = "deleted"
    LAUNCH = "launch"
    VALIDATE = "validate"
    ATTEST = "attest"
    INITDATA_CHANGED = "initdata-changed"


class Outcome(StrEnum):
    """The result of a launch or validate event."""

    STARTED = "started"
    RELEASED = "released"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event to append (``detail`` is JSON-ready and never holds secret material)."""

    owner_id: int
    vm_uuid: str
    kind: EventKind
    ts: float
    launch_id: str | None = None
    outcome: Outcome | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored audit event (never holds secret material)."""

    id: int
    vm_uuid: str
    ts: float
    kind: str
    launch_id: str | None
    outcome: str | None
    detail: Mapping[str, Any]


class PrincipalRepository(Protocol):
    """Owners and hosts, found by the SHA-256 of their bearer token."""

    def create_owner(self, name: str, token_hash: str, now: float) -> int: ...
    def create_host(self, name: str, token_hash: str, now: float) -> int: ...
    def create_owner_host(self, name: str, token_hash: str, now: float, owner: str) -> int: ...
    def owner_by_token_hash(self, token_hash: str) -> Principal | None: ...
    def owner_id(self, name: str) -> int | None: ...
    def host_by_token_hash(self, token_hash: str) -> Principal | None: ...


class FirmwareRepository(Protocol):
    """Uploaded firmware images, per owner, content-addressed."""

    def put_firmware(
        self,
        owner_id: int,
        sha256: str,
        data: bytes,
        now: float,
        *,
        max_count: int = 0,
        max_bytes: int = 0,
    ) -> bool: ...
    def firmware(self, owner_id: int, sha256: str) -> bytes | None: ...
    def delete_firmware(self, owner_id: int, sha256: str) -> bool: ...


class VmRepository(Protocol):
    """Registered VMs; every change appends its event in the same transaction.

    Each owner has its own UUID namespace: a VM is named by (owner, UUID). Only a
    caller that names no owner (an unscoped host, an anonymous guest at ``/v1``) looks
    a UUID up alone, and finds it only while one owner has it (:class:`OwnerRequired`
    from :mod:`attestd.errors` otherwise).
    """

    def vm(self, owner_id: int, uuid: str) -> VmRecord | None: ...
    def sole_vm(self, uuid: str) -> VmRecord | None: ...
    def list_vms(
        self, owner_id: int, *, after: str = "", limit: int | None = None
    ) -> list[VmRecord]: ...
    def insert_vm(
        self,
        *,
        uuid: str,
        owner_id: int,
        registration: Mapping[str, Any],
        secrets_enc: bytes,
        max_launches: int | None,
        now: float,
        event: Event,
        initdata: bytes | None = None,
    ) -> VmRecord: ...
    def replace_vm(
        self,
        vm: VmRecord,
        *,
        registration: Mapping[str, Any],
        secrets_enc: bytes,
        max_launches: int | None,
        now: float,
        event: Event,
        initdata: bytes | None = None,
    ) -> VmRecord: ...
    def change_initdata(
        self, vm: VmRecord, initdata: bytes, *, now: float, event: Event
    ) -> VmRecord: ...
    def delete_vm(self, vm: VmRecord, *, event: Event) -> None: ...


class LaunchRepository(Protocol):
    """Launch sessions: budget spent and claim taken atomically across service processes."""

    def begin_launch(self, vm: VmRecord, launch: LaunchRecord, *, event: Event) -> bool: ...
    def launch(self, launch_id: str) -> LaunchRecord | None: ...
    def claim_launch(
        self,
        uuid: str,
        launch_id: str,
        now: float,
        lease: float = 60.0,
        *,
        owner_id: int | None = None,
    ) -> Claim: ...
    def unclaim_launch(self, launch: LaunchRecord) -> bool: ...
    def finish_launch(
        self, launch_id: str, state: LaunchStatus, now: float, *, event: Event
    ) -> None: ...
    def release_launch(self, launch: LaunchRecord, now: float, *, event: Event) -> bool: ...
    def vm_for_launch(
        self, uuid: str, now: float, *, owner_id: int | None = None
    ) -> tuple[VmRecord, int, float | None] | None: ...


class Maintenance(Protocol):
    """Work done outside the request path (``attestd db maintain``)."""

    def purge_expired_keys(self, now: float) -> int: ...
    def delete_old_launches(self, before: float, *, batch: int = 1000) -> int: ...
    def delete_old_events(self, before: float, *, batch: int = 1000) -> int: ...


@dataclass(frozen=True, slots=True)
class ChallengeRecord:
    """One SEV-SNP attestation challenge; only the SHA-256 of its nonce is stored."""

    nonce_sha256: str
    vm_id: int
    created_at: float
    expires_at: float
    used_at: float | None


@dataclass(frozen=True, slots=True)
class ChallengeClaim:
    """What one claim of a challenge found, read in the claiming transaction.

    ``claimed`` is true when this call marked the challenge used; ``challenge`` is the
    challenge as claimed (or as it is, when not claimed; None when no challenge has the
    nonce); ``vm`` is, after a claim, the VM registered under the claiming VM's owner and
    UUID (None when there is none, or nothing was claimed).
    """

    challenge: ChallengeRecord | None
    claimed: bool
    vm: VmRecord | None = None


class ChallengeRepository(Protocol):
    """SEV-SNP challenges (shared by every service node) and the attestation budget."""

    def add_challenge(self, challenge: ChallengeRecord, *, limit: int, now: float) -> bool: ...
    def challenge(self, nonce_sha256: str) -> ChallengeRecord | None: ...
    def claim_challenge(self, nonce_sha256: str, vm: VmRecord, now: float) -> ChallengeClaim: ...
    def spend_attestation(self, vm: VmRecord, *, event: Event) -> bool: ...


class EventLog(Protocol):
    """The append-only audit trail."""

    def add_event(self, event: Event) -> None: ...
    def events(
        self, owner_id: int, vm_uuid: str, *, after: int = 0, limit: int = 100
    ) -> list[EventRecord]: ...


class Store(
    PrincipalRepository,
    FirmwareRepository,
    VmRepository,
    LaunchRepository,
    EventLog,
    Maintenance,
    ChallengeRepository,
    Protocol,
):
    """Every repository plus the operations of one database (schema, health, key rotation)."""

    def upgrade(self, revision: str = "head") -> None: ...
    def downgrade(self, revision: str) -> None: ...
    def ping(self) -> None: ...
    def check_writable(self, now: float) -> None: ...
    def dispose(self) -> None: ...
    def stats(self, now: float) -> dict[str, int]: ...
    def count_hosts(self) -> int: ...
    def rotate_encrypted(self, rotate: Callable[[bytes], bytes]) -> int: ...
