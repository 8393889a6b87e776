"""The guest agent's own small error taxonomy (it cannot import ``attestd.errors``)."""

from __future__ import annotations


class GuestError(Exception):
    """Root of every error the guest agent raises on purpose."""

    code = "guest_error"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class PayloadError(GuestError):
    """The payload or request is malformed; nothing has touched a disk."""

    code = "malformed_payload"


class SecretSourceError(GuestError):
    """The secret source is missing, unreadable or corrupt."""

    code = "secret_source"


class CommandFailed(GuestError):
    """An external command (cryptsetup, mkfs.ext4, ...) failed."""

    code = "command_failed"


class ConflictError(GuestError):
    """The request conflicts with the agent's state (different input while ready, busy)."""

    code = "conflict"


class AuthenticationFailed(GuestError):
    """A passphrase or user id did not authenticate."""

    code = "authentication_failed"
