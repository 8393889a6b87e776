"""Records the storage layer hands to the service (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated owner or host."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class VmRecord:
    """A registered VM. ``registration`` is JSON without secret values."""

    id: int
    uuid: str
    owner_id: int
    revision: int
    registration: str
    secrets_enc: bytes
    launches_used: int
    max_launches: int | None
    created_at: float
    updated_at: float


class LaunchState(StrEnum):
    """Life of a launch: pending -> validating -> validated | failed."""

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
    state: LaunchState
    policy: int
    keys_enc: bytes | None
    chip_id: str
    pdh_sha256: str
    generation: str
    created_at: float
    expires_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One audit event (never holds secret material)."""

    id: int
    vm_uuid: str
    ts: float
    kind: str
    launch_id: str | None
    outcome: str | None
    detail: str
