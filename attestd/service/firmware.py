"""Firmware images the owner uploads so the service can compute launch digests itself."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from attestd.service.clock import Clock
from attestd.storage.ports import FirmwareRepository, Principal

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FirmwareInfo:
    """An uploaded firmware image."""

    sha256: str
    size: int
    created: bool


class Firmware:
    """Upload firmware images, content-addressed (SHA-256) per owner."""

    def __init__(self, repo: FirmwareRepository, *, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock

    def upload(self, owner: Principal, data: bytes) -> FirmwareInfo:
        """Store a firmware image content-addressed (SHA-256)."""
        digest = hashlib.sha256(data).hexdigest()
        created = self.repo.put_firmware(owner.id, digest, data, self.clock())
        logger.info("firmware %s (%d bytes) for owner_id=%d", digest, len(data), owner.id)
        return FirmwareInfo(sha256=digest, size=len(data), created=created)
