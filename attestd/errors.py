"""The attestd exception taxonomy (pyca's discipline).

- misuse by the calling code (a wrong type, an out-of-range argument) raises the
  built-in ``TypeError`` / ``ValueError``;
- bytes or text from outside that do not decode raise :class:`ParseError`;
- a refusal by the service raises an :class:`AttestdError` subclass with a stable
  machine ``code``, a human ``message`` and, where useful, ``reasons`` (what was
  tried or checked).

The mapping to HTTP status codes lives only in ``attestd.api.errors``; nothing
here knows HTTP. Messages never contain key material or secret values.
"""

from __future__ import annotations

from dataclasses import dataclass


class AttestdError(Exception):
    """Root of all attestd errors."""

    code = "attestd_error"

    def __init__(
        self, message: str, *, reasons: list[str] | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reasons: list[str] = list(reasons or [])
        #: seconds after which the same request may succeed (a transient refusal)
        self.retry_after = retry_after


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


class NotAccepted(PolicyViolation):
    """Verified evidence that the VM's registration refuses, answered to a caller that
    has not proven it is the VM (an SEV-SNP guest has no token): ``reasons`` is only
    ``not_accepted``. What failed, with the registration's values, is the ``withheld``
    refusal, for the VM's events, which only its owner reads."""

    def __init__(self, withheld: AttestdError) -> None:
        super().__init__(
            "the report does not meet the VM's registration (its owner sees why in the "
            "VM's events)",
            reasons=["not_accepted"],
        )
        self.withheld = withheld


class SecretTooLarge(AttestdError):
    """The secret table does not fit the firmware's secret area."""

    code = "secret_too_large"


class CekRequired(AttestdError):
    """The host gave neither a signed CEK nor a chip id whose CEK the service has.

    A client error: the host can send the ASK-signed CEK (``cek``) itself.
    """

    code = "cek_required"


class CekUnavailable(AttestdError):
    """AMD KDS could not be asked for the chip's CEK (unreachable, error answer)."""

    code = "cek_unavailable"


class TooManyRequests(AttestdError):
    """A bound on pending launches or on a host's request rate was reached; retry later."""

    code = "rate_limited"


class AuthenticationError(AttestdError):
    """Missing or invalid credentials."""

    code = "unauthenticated"


class NotFound(AttestdError):
    """The named resource does not exist (or is not visible to the caller)."""

    code = "not_found"


class Conflict(AttestdError):
    """The resource is not in a state that allows the request."""

    code = "conflict"


class OwnerRequired(Conflict):
    """Several owners registered the VM UUID and the request names none of them.

    Each owner has its own VM UUID namespace; a caller that is not an owner names one
    by an owner-scoped host token or by the owner's base URL ``/owners/<name>/v1``.
    """

    code = "owner_required"

    @classmethod
    def for_vm(cls, uuid: str) -> OwnerRequired:
        """The refusal for VM ``uuid``."""
        return cls(
            f"VM {uuid} is registered by several owners: name the owner (an owner-scoped "
            "host token, or the owner's base URL /owners/<name>/v1)",
            reasons=["owner_required"],
        )


class WrongOwner(AttestdError):
    """A token used at the base URL ``/owners/<name>/v1`` of an owner it is not for.

    Refused alike whether or not an owner of that name exists (no existence oracle).
    """

    code = "wrong_owner"


class RegistrationChanged(Conflict):
    """The VM's registration changed (or was deleted) after the launch started."""

    code = "registration_changed"


Field = str | tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a registration is invalid: the API field, a stable code, a message."""

    field: Field
    code: str
    message: str


class InvalidRegistration(AttestdError):
    """A registration breaks one or more rules (every :class:`Problem` is listed)."""

    code = "invalid_request"

    def __init__(self, message: str, *, problems: list[Problem]) -> None:
        super().__init__(message, reasons=[p.code for p in problems])
        self.problems = list(problems)


class StorageUnavailable(AttestdError):
    """The database cannot be reached."""

    code = "storage_unavailable"


class StorageKeyError(AttestdError):
    """The storage key file is missing, unreadable or does not decrypt stored data."""

    code = "storage_key"


class NonceRejected(Conflict):
    """An attest nonce that is unknown, another VM's, already used or expired."""

    code = "nonce_rejected"


class InitdataUnavailable(Conflict):
    """An SEV-SNP VM has no initdata: the service lacks a setting to make it."""

    code = "initdata_unavailable"


class ChallengeLimit(AttestdError):
    """Too many live attestation challenges for one VM."""

    code = "too_many_challenges"


class LaunchError(AttestdError):
    """Host-side launch driver failure (service refused, QMP failure, timeout).

    Raised by ``attestd.host`` only; never by the service, so not in its HTTP table.
    """

    code = "launch_failed"


#: Errors of the host side that the service never raises (no HTTP status).
HOST_SIDE_ERRORS: tuple[type[AttestdError], ...] = (LaunchError,)
