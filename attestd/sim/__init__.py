"""The software SEV platform: a model of the AMD SEV firmware, like swtpm for TPMs."""

from __future__ import annotations

from attestd.sim.errors import FirmwareStatus, SevFirmwareError

__all__ = ["FirmwareStatus", "SevFirmwareError"]
