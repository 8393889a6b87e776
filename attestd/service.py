"""Use-cases of the attestation service: owners, registration, firmware, events.

The Flask adapter (``attestd.api``) and the CLI call these; they orchestrate the
storage port and encryption at rest. The launch / validate use-cases that drive
the SEV protocol core live in :mod:`attestd.launch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets as _secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attestd.config import Settings
from attestd.errors import AttestdError, AuthenticationError, NotFound, SecretTooLarge
from attestd.registration import Registration, resolve_secrets, secret_table
from attestd.sev.measure.ovmf import Ovmf
from attestd.storage.keys import KeyRing
from attestd.storage.ports import EventRecord, Principal, VmRecord
from attestd.storage.sql import Database

logger = logging.getLogger(__name__)

OWNER_TOKEN_PREFIX = "ato_"  # noqa: S105 (a prefix, not a secret)
HOST_TOKEN_PREFIX = "ath_"  # noqa: S105

Clock = Callable[[], float]


def hash_token(token: str) -> str:
    """SHA-256 hex of a bearer token (tokens carry 256 random bits; no slow hash needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str) -> str:
    """A fresh bearer token."""
    return prefix + _secrets.token_urlsafe(32)


def event_row(
    owner_id: int,
    vm_uuid: str,
    kind: str,
    now: float,
    *,
    launch_id: str | None = None,
    outcome: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``events`` row (``detail`` must not hold secret material)."""
    return {
        "owner_id": owner_id,
        "vm_uuid": vm_uuid,
        "ts": now,
        "kind": kind,
        "launch_id": launch_id,
        "outcome": outcome,
        "detail": json.dumps(dict(detail or {}), sort_keys=True),
    }


@dataclass(frozen=True, slots=True)
class FirmwareInfo:
    """An uploaded firmware image."""

    sha256: str
    size: int
    created: bool


class Service:
    """Owner-facing use-cases over one database and key ring."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        keyring: KeyRing,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.clock = clock

    # -- principals ---------------------------------------------------------------------

    def create_owner(self, name: str) -> str:
        """Create an owner; returns its token (shown once, stored hashed)."""
        token = new_token(OWNER_TOKEN_PREFIX)
        owner_id = self.db.create_owner(name, hash_token(token), self.clock())
        logger.info("created owner %s (owner_id=%d)", name, owner_id)
        return token

    def create_host(self, name: str) -> str:
        """Create a host; returns its token (shown once, stored hashed)."""
        token = new_token(HOST_TOKEN_PREFIX)
        host_id = self.db.create_host(name, hash_token(token), self.clock())
        logger.info("created host %s (host_id=%d)", name, host_id)
        return token

    def authenticate_owner(self, token: str | None) -> Principal:
        """The owner holding ``token``; :class:`AuthenticationError` otherwise."""
        if not token or not token.startswith(OWNER_TOKEN_PREFIX):
            raise AuthenticationError("a valid owner bearer token is required")
        owner = self.db.owner_by_token_hash(hash_token(token))
        if owner is None:
            raise AuthenticationError("a valid owner bearer token is required")
        return owner

    def authenticate_host(self, token: str | None) -> Principal | None:
        """Check a host token when host tokens are required (None when they are not)."""
        if not self.settings.require_host_token:
            return None
        if not token or not token.startswith(HOST_TOKEN_PREFIX):
            raise AuthenticationError("a valid host bearer token is required")
        host = self.db.host_by_token_hash(hash_token(token))
        if host is None:
            raise AuthenticationError("a valid host bearer token is required")
        return host

    # -- registration -------------------------------------------------------------------

    def _owned_vm(self, owner: Principal, uuid: str) -> VmRecord:
        vm = self.db.vm(uuid)
        if vm is None or vm.owner_id != owner.id:
            raise NotFound(f"no VM {uuid}", reasons=["unknown_vm"])
        return vm

    def stored_secrets(self, vm: VmRecord) -> list[dict[str, Any]]:
        """Decrypt the VM's stored secrets."""
        value = json.loads(self.keyring.decrypt(vm.secrets_enc))
        assert isinstance(value, list)
        return value

    def _secret_area_limit(self, owner: Principal, registration: Registration) -> int:
        """The configured secret area, or less if an accepted uploaded firmware declares less."""
        limit = self.settings.secret_area_size
        for digest in registration.firmware_hashes:
            data = self.db.firmware(owner.id, digest)
            if data is None:
                continue
            try:
                area = Ovmf.from_bytes(data).secret_area
            except AttestdError:
                continue  # not OVMF with a footer table: nothing declared
            if area is not None and 0 < area[1] < limit:
                limit = area[1]
        return limit

    def _seal(
        self,
        owner: Principal,
        uuid: str,
        registration: Registration,
        previous: Sequence[Mapping[str, Any]],
    ) -> tuple[str, bytes]:
        stored = resolve_secrets(registration.secrets, previous)
        limit = self._secret_area_limit(owner, registration)
        try:
            secret_table(registration.user_id or uuid, stored, max_size=limit)
        except SecretTooLarge as exc:
            raise SecretTooLarge(
                f"the secret table would not fit the {limit}-byte secret area",
                reasons=[exc.message, *exc.reasons],
            ) from None
        sealed = self.keyring.encrypt(json.dumps(stored, sort_keys=True).encode("utf-8"))
        return json.dumps(registration.public(), sort_keys=True), sealed

    def register(self, owner: Principal, uuid: str, registration: Registration) -> VmRecord:
        """Register a new VM (``POST``)."""
        public, sealed = self._seal(owner, uuid, registration, ())
        now = self.clock()
        vm = self.db.insert_vm(
            uuid=uuid,
            owner_id=owner.id,
            registration=public,
            secrets_enc=sealed,
            max_launches=registration.max_launches,
            now=now,
            event=event_row(owner.id, uuid, "registered", now, detail={"revision": 1}),
        )
        logger.info("registered VM %s (owner_id=%d)", uuid, owner.id)
        return vm

    def replace(self, owner: Principal, uuid: str, registration: Registration) -> VmRecord:
        """Replace a registration (``PUT``); generated passphrases are kept."""
        vm = self._owned_vm(owner, uuid)
        public, sealed = self._seal(owner, uuid, registration, self.stored_secrets(vm))
        now = self.clock()
        updated = self.db.replace_vm(
            vm,
            registration=public,
            secrets_enc=sealed,
            max_launches=registration.max_launches,
            now=now,
            event=event_row(owner.id, uuid, "replaced", now, detail={"revision": vm.revision + 1}),
        )
        logger.info("replaced VM %s (owner_id=%d)", uuid, owner.id)
        return updated

    def get(self, owner: Principal, uuid: str) -> VmRecord:
        """The owner's VM."""
        return self._owned_vm(owner, uuid)

    def list_vms(self, owner: Principal) -> list[VmRecord]:
        """The owner's VMs."""
        return self.db.list_vms(owner.id)

    def delete(self, owner: Principal, uuid: str) -> None:
        """Remove a VM with its secrets and launches."""
        vm = self._owned_vm(owner, uuid)
        now = self.clock()
        self.db.delete_vm(vm, event=event_row(owner.id, uuid, "deleted", now))
        logger.info("deleted VM %s (owner_id=%d)", uuid, owner.id)

    def events(
        self, owner: Principal, uuid: str, *, after: int = 0, limit: int = 100
    ) -> list[EventRecord]:
        """The audit trail of one of the owner's VMs (also after it was deleted)."""
        found = self.db.events(owner.id, uuid, after=after, limit=limit)
        if not found and after == 0:
            self._owned_vm(owner, uuid)
        return found

    # -- firmware -----------------------------------------------------------------------

    def upload_firmware(self, owner: Principal, data: bytes) -> FirmwareInfo:
        """Store a firmware image content-addressed (SHA-256)."""
        digest = hashlib.sha256(data).hexdigest()
        created = self.db.put_firmware(owner.id, digest, data, self.clock())
        logger.info("firmware %s (%d bytes) for owner_id=%d", digest, len(data), owner.id)
        return FirmwareInfo(sha256=digest, size=len(data), created=created)
