"""Firmware images the owner uploads so the service can compute launch digests itself."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from attestd.config import Settings
from attestd.errors import Conflict, NotFound
from attestd.service.clock import Clock
from attestd.storage.ports import FirmwareRepository, Principal, VmRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FirmwareInfo:
    """An uploaded firmware image."""

    sha256: str
    size: int
    created: bool


class Firmware:
    """Upload and delete firmware images, content-addressed (SHA-256) per owner.

    Each owner may store at most ``max_firmware_per_owner`` images of
    ``max_firmware_bytes_per_owner`` bytes in total (409 ``firmware_quota``).
    """

    def __init__(
        self, settings: Settings, repo: FirmwareRepository, vms: VmRepository, *, clock: Clock
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.vms = vms
        self.clock = clock

    def upload(self, owner: Principal, data: bytes) -> FirmwareInfo:
        """Store a firmware image content-addressed (SHA-256)."""
        digest = hashlib.sha256(data).hexdigest()
        created = self.repo.put_firmware(
            owner.id,
            digest,
            data,
            self.clock(),
            max_count=self.settings.max_firmware_per_owner,
            max_bytes=self.settings.max_firmware_bytes_per_owner,
        )
        logger.info("firmware %s (%d bytes) for owner_id=%d", digest, len(data), owner.id)
        return FirmwareInfo(sha256=digest, size=len(data), created=created)

    def delete(self, owner: Principal, sha256: str) -> None:
        """Delete the owner's image; refused while one of the owner's registrations names it."""
        users = [
            vm.uuid
            for vm in self.vms.list_vms(owner.id)
            if sha256 in vm.registration.get("firmware-hashes", ())
        ]
        if users:
            raise Conflict(
                "the firmware is named by a registration; replace or delete it first",
                reasons=["firmware_in_use", *users],
            )
        if not self.repo.delete_firmware(owner.id, sha256):
            raise NotFound(f"no firmware {sha256}", reasons=["unknown_firmware"])
        logger.info("deleted firmware %s of owner_id=%d", sha256, owner.id)
