"""The attestd exception taxonomy.

Every error carries a stable machine-readable ``code``. The mapping to HTTP
status codes lives only in ``attestd.api.errors``; nothing here knows HTTP.
Messages never contain key material or secret values.
"""

from __future__ import annotations


class AttestdError(Exception):
    """Root of all attestd errors."""

    code = "attestd_error"

    def __init__(self, message: str, *, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reasons: list[str] = list(reasons or [])


class ParseError(AttestdError):
    """Bytes or text that do not decode into the expected structure."""

    code = "malformed_input"


class Unsupported(AttestdError):
    """A well-formed input that attestd does not support (version, algorithm, mode)."""

    code = "unsupported"


class AttestationFailed(AttestdError):
    """Evidence from the platform did not verify. Nothing secret is released."""

    code = "attestation_failed"


class ChainInvalid(AttestationFailed):
    """The platform certificate chain does not verify to a trusted AMD root."""

    code = "chain_invalid"


class MeasurementMismatch(AttestationFailed):
    """The launch measurement does not prove any accepted launch digest."""

    code = "measurement_mismatch"


class PolicyViolation(AttestationFailed):
    """Guest policy or firmware version is not acceptable to the owner."""

    code = "policy_violation"


class SecretTooLarge(AttestdError):
    """The secret table does not fit the firmware's secret area."""

    code = "secret_too_large"


class CekUnavailable(AttestdError):
    """No ASK-signed CEK for the chip: not in the cache and not fetchable."""

    code = "cek_unavailable"


class AuthenticationError(AttestdError):
    """Missing or invalid credentials."""

    code = "unauthenticated"


class PermissionDenied(AttestdError):
    """Authenticated, but not allowed to touch this resource."""

    code = "forbidden"


class NotFound(AttestdError):
    """The named resource does not exist (or is not visible to the caller)."""

    code = "not_found"


class Conflict(AttestdError):
    """The resource is not in a state that allows the request."""

    code = "conflict"


class StorageUnavailable(AttestdError):
    """The database cannot be reached."""

    code = "storage_unavailable"


class LaunchError(AttestdError):
    """Host-side launch driver failure (service refused, QMP failure, timeout)."""

    code = "launch_failed"


class GuestError(AttestdError):
    """In-guest bootstrap failure."""

    code = "guest_error"
