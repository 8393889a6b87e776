"""Firmware status codes (AMD SEV API #55766 §4.4; Linux ``include/uapi/linux/psp-sev.h``)."""

from __future__ import annotations

from enum import IntEnum

from attestd.errors import AttestdError


class FirmwareStatus(IntEnum):
    """SEV firmware command status."""

    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_CONFIG = 0x03
    INVALID_LENGTH = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DFFLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWERROR_PLATFORM = 0x13
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    SECURE_DATA_INVALID = 0x18


class SevFirmwareError(AttestdError):
    """A simulated firmware command failed with ``status``."""

    code = "sev_firmware_error"

    def __init__(self, status: FirmwareStatus, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
