"""Owners and hosts: bearer tokens (created once, stored as SHA-256) and authentication."""

from __future__ import annotations

import hashlib
import logging
import secrets as _secrets

from attestd.errors import AuthenticationError, WrongOwner
from attestd.service.clock import Clock
from attestd.storage.ports import Principal, PrincipalRepository

logger = logging.getLogger(__name__)

OWNER_TOKEN_PREFIX = "ato_"  # noqa: S105 (a prefix, not a secret)
HOST_TOKEN_PREFIX = "ath_"  # noqa: S105

#: An id no owner has (ids start at 1): the namespace named by the base URL of an
#: owner name that names nobody; every VM in it is unknown, as in an owner's.
NO_SUCH_OWNER = 0


def named_owner(host: Principal | None, owner_id: int | None) -> int | None:
    """The owner whose VM UUID namespace a host or guest request is about.

    ``owner_id`` is the owner of the base URL ``/owners/<name>/v1`` (None at ``/v1``);
    a host token scoped to one owner names that owner. A scoped token at the base URL
    of another owner (or of an owner name that names nobody) is refused alike with
    :class:`WrongOwner`. None: no owner named (the UUID must be one owner's only).
    """
    scoped = None if host is None else host.owner_id
    if scoped is None:
        return owner_id
    if owner_id is not None and owner_id != scoped:
        raise WrongOwner(
            "this host token is scoped to another owner than the one of this base URL",
            reasons=["wrong_owner"],
        )
    return scoped


def hash_token(token: str) -> str:
    """SHA-256 hex of a bearer token (tokens carry 256 random bits; no slow hash needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str) -> str:
    """A fresh bearer token."""
    return prefix + _secrets.token_urlsafe(32)


class Principals:
    """Create owners and hosts; authenticate their bearer tokens."""

    def __init__(
        self, repo: PrincipalRepository, *, clock: Clock, require_host_token: bool
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.require_host_token = require_host_token

    def create_owner(self, name: str) -> str:
        """Create an owner; returns its token (shown once, stored hashed)."""
        token = new_token(OWNER_TOKEN_PREFIX)
        owner_id = self.repo.create_owner(name, hash_token(token), self.clock())
        logger.info("created owner %s (owner_id=%d)", name, owner_id)
        return token

    def create_host(self, name: str, *, owner: str | None = None) -> str:
        """Create a host; returns its token (shown once, stored hashed).

        With ``owner`` the token launches only that owner's VMs; without, any owner's
        (a single-owner deployment).
        """
        token = new_token(HOST_TOKEN_PREFIX)
        if owner is None:
            host_id = self.repo.create_host(name, hash_token(token), self.clock())
            logger.warning(
                "created host %s (host_id=%d) NOT scoped to an owner: it may launch every "
                "owner's VMs",
                name,
                host_id,
            )
        else:
            host_id = self.repo.create_owner_host(name, hash_token(token), self.clock(), owner)
            logger.info("created host %s (host_id=%d) for owner %s", name, host_id, owner)
        return token

    def namespace(self, name: str) -> int:
        """The owner id of the base URL ``/owners/<name>/v1`` (:data:`NO_SUCH_OWNER`
        for a name that names nobody: answers there are those of an unknown VM)."""
        found = self.repo.owner_id(name)
        return NO_SUCH_OWNER if found is None else found

    def authenticate_owner(self, token: str | None) -> Principal:
        """The owner holding ``token``; :class:`AuthenticationError` otherwise."""
        if not token or not token.startswith(OWNER_TOKEN_PREFIX):
            raise AuthenticationError("a valid owner bearer token is required")
        owner = self.repo.owner_by_token_hash(hash_token(token))
        if owner is None:
            raise AuthenticationError("a valid owner bearer token is required")
        return owner

    def authenticate_host(self, token: str | None) -> Principal | None:
        """Check a host token when host tokens are required (None when they are not).

        With ``require_host_token = false`` (development) a request without a token is
        anonymous (None); a token it does carry is still checked, so a scoped host stays
        scoped.
        """
        if not self.require_host_token and not token:
            return None
        if not token or not token.startswith(HOST_TOKEN_PREFIX):
            raise AuthenticationError("a valid host bearer token is required")
        host = self.repo.host_by_token_hash(hash_token(token))
        if host is None:
            raise AuthenticationError("a valid host bearer token is required")
        return host
