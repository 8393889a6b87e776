"""VM registration use-cases: register, replace, read, list, delete.

Every entry (HTTP, CLI, tests) gets the same rules: :meth:`Registration.check`
runs here, before anything is stored, and its reasons raise
:class:`~attestd.errors.InvalidRegistration`. Secret values are sealed with the
key ring; the stored registration document holds none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from attestd.config import Settings
from attestd.errors import AttestdError, InvalidRegistration, NotFound, SecretTooLarge
from attestd.service.clock import Clock
from attestd.service.initdata import VmInitdata
from attestd.service.payload import resolve_secrets, secret_table
from attestd.service.registration import Registration, Secret, from_stored
from attestd.service.snp_registration import SnpRegistration
from attestd.sev.measure.ovmf import Ovmf
from attestd.storage.keys import KeyRing
from attestd.storage.ports import (
    Event,
    EventKind,
    FirmwareRepository,
    Principal,
    VmRecord,
    VmRepository,
)

logger = logging.getLogger(__name__)


class Vms:
    """The owner's registered VMs."""

    def __init__(
        self,
        settings: Settings,
        repo: VmRepository,
        firmware: FirmwareRepository,
        keyring: KeyRing,
        *,
        clock: Clock,
        initdata: VmInitdata | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.firmware = firmware
        self.keyring = keyring
        self.clock = clock
        #: makes an SNP VM's initdata when it is registered (None: never)
        self.initdata = initdata

    def owned(self, owner: Principal, uuid: str) -> VmRecord:
        """The owner's VM (:class:`NotFound` for any other)."""
        vm = self.repo.vm(owner.id, uuid)
        if vm is None:
            raise NotFound(f"no VM {uuid}", reasons=["unknown_vm"])
        return vm

    def stored_secrets(self, vm: VmRecord) -> list[Secret]:
        """Decrypt the VM's stored secrets."""
        value = json.loads(self.keyring.decrypt(vm.secrets_enc))
        if not isinstance(value, list):
            raise TypeError("stored secrets must be a JSON list")
        return [from_stored(entry) for entry in value]

    def _secret_area_limit(
        self, owner: Principal, registration: Registration | SnpRegistration
    ) -> int:
        """The configured secret area, or less if an accepted uploaded firmware declares less."""
        limit = self.settings.secret_area_size
        for digest in registration.firmware_hashes:
            data = self.firmware.firmware(owner.id, digest)
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
        registration: Registration | SnpRegistration,
        previous: Sequence[Secret],
    ) -> bytes:
        reasons = registration.check()
        if reasons:
            raise InvalidRegistration("the registration is not valid", problems=reasons)
        stored = resolve_secrets(registration.secrets, previous)
        if isinstance(registration, SnpRegistration):
            # no EFI secret area: the payload travels in a JWE
            document = [entry.to_stored() for entry in stored]
            return self.keyring.encrypt(json.dumps(document, sort_keys=True).encode("utf-8"))
        limit = self._secret_area_limit(owner, registration)
        try:
            secret_table(registration.user_id or uuid, stored, max_size=limit)
        except SecretTooLarge as exc:
            raise SecretTooLarge(
                f"the secret table would not fit the {limit}-byte secret area",
                reasons=[exc.message, *exc.reasons],
            ) from None
        document = [entry.to_stored() for entry in stored]
        return self.keyring.encrypt(json.dumps(document, sort_keys=True).encode("utf-8"))

    def _initdata(
        self, owner: Principal, uuid: str, registration: Registration | SnpRegistration
    ) -> bytes | None:
        """The initdata an SNP VM gets when it first becomes one (None: not SNP, or the
        service lacks a setting to make it)."""
        if not isinstance(registration, SnpRegistration) or self.initdata is None:
            return None
        return self.initdata.for_registration(uuid, owner.name)

    def register(
        self, owner: Principal, uuid: str, registration: Registration | SnpRegistration
    ) -> VmRecord:
        """Register a new VM (``POST``); an SNP VM gets its initdata."""
        sealed = self._seal(owner, uuid, registration, ())
        now = self.clock()
        vm = self.repo.insert_vm(
            uuid=uuid,
            owner_id=owner.id,
            registration=registration.public(),
            secrets_enc=sealed,
            max_launches=registration.max_launches,
            now=now,
            event=Event(owner.id, uuid, EventKind.REGISTERED, now, detail={"revision": 1}),
            initdata=self._initdata(owner, uuid, registration),
        )
        logger.info("registered VM %s (owner_id=%d)", uuid, owner.id)
        return vm

    def replace(
        self, owner: Principal, uuid: str, registration: Registration | SnpRegistration
    ) -> VmRecord:
        """Replace a registration (``PUT``); generated passphrases and the stored
        initdata are kept (a VM that becomes SNP without initdata gets it)."""
        vm = self.owned(owner, uuid)
        sealed = self._seal(owner, uuid, registration, self.stored_secrets(vm))
        now = self.clock()
        updated = self.repo.replace_vm(
            vm,
            registration=registration.public(),
            secrets_enc=sealed,
            max_launches=registration.max_launches,
            now=now,
            event=Event(
                owner.id, uuid, EventKind.REPLACED, now, detail={"revision": vm.revision + 1}
            ),
            initdata=None if vm.initdata is not None else self._initdata(owner, uuid, registration),
        )
        logger.info("replaced VM %s (owner_id=%d)", uuid, owner.id)
        return updated

    def get(self, owner: Principal, uuid: str) -> VmRecord:
        """The owner's VM."""
        return self.owned(owner, uuid)

    def list(self, owner: Principal, *, after: str = "", limit: int = 100) -> list[VmRecord]:
        """The owner's VMs with a UUID after ``after``, at most ``limit``, by UUID."""
        return self.repo.list_vms(owner.id, after=after, limit=limit)

    def delete(self, owner: Principal, uuid: str) -> None:
        """Remove a VM with its secrets and launches."""
        vm = self.owned(owner, uuid)
        now = self.clock()
        self.repo.delete_vm(vm, event=Event(owner.id, uuid, EventKind.DELETED, now))
        logger.info("deleted VM %s (owner_id=%d)", uuid, owner.id)
