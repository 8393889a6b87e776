"""SEV-SNP initdata of a VM: made at registration, stored, served, changed by its owner.

Every SNP VM gets an initdata document (:mod:`attestd.guest.initdata`, Trustee's
format) when it is registered (``POST``, or a ``PUT`` from another scheme): its
owner's base URL(s) on the service (``public_urls`` with ``/owners/<owner>`` before
the final ``/v1``, so the guest names its owner's UUID namespace and another owner
registering the same UUID cannot make it ambiguous), the VM UUID and what the guest
trusts the service by (``guest_ca_file`` and/or ``guest_pin``). The document is stored
as bytes, never recomputed: a restart, another node or a later ``PUT`` serves the same
bytes, so the HOST_DATA the host writes (its SHA-256) stays valid. Only the owner's
explicit ``POST /v1/vm/<uuid>/initdata`` changes it (an ``initdata-changed`` event
with the old and new digests, a new revision).

The HOST_DATA an attestation must report (:meth:`VmInitdata.expected_host_data`) is the
owner's pinned ``host-data`` if the registration has one, else the SHA-256 of the stored
document. An SNP VM with neither is refused (fail closed): nothing would bind what the
host passed to the guest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from cryptography import x509

from attestd.config import Settings
from attestd.errors import InitdataUnavailable, NotFound, ParseError, Unsupported
from attestd.guest import initdata as doc
from attestd.service.clock import Clock
from attestd.service.owners import named_owner
from attestd.service.snp_registration import SNP_SCHEME, SnpRegistration, is_snp
from attestd.storage.ports import Event, EventKind, Principal, VmRecord, VmRepository

logger = logging.getLogger(__name__)


def read_ca_file(settings: Settings) -> str | None:
    """The PEM text of ``guest_ca_file`` (checked to hold certificates), if configured."""
    path = settings.guest_ca_file
    if path is None:
        return None
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParseError(f"configuration guest_ca_file {path}: cannot read it ({exc})") from None
    try:
        x509.load_pem_x509_certificates(text.encode("ascii"))
    except ValueError:
        raise ParseError(
            f"configuration guest_ca_file {path}: not PEM X.509 certificates"
        ) from None
    return text


def owner_base_url(url: str, owner: str) -> str:
    """Owner ``owner``'s base URL on the service whose v1 base URL is ``url``."""
    root = url.removesuffix("/v1")
    return f"{root}/owners/{owner}/v1"


@dataclass(frozen=True, slots=True)
class GuestTrust:
    """What the service writes into initdata: where it is and how guests trust it."""

    services: tuple[str, ...] = ()
    ca_pem: str | None = None
    pin: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GuestTrust:
        """From ``public_urls``, ``guest_ca_file`` (read here) and ``guest_pin``."""
        return cls(settings.public_urls, read_ca_file(settings), settings.guest_pin or None)

    def missing(self) -> str | None:
        """The setting the service lacks to make initdata (None: it can)."""
        if not self.services:
            return "public_urls (ATTESTD_PUBLIC_URLS)"
        if self.ca_pem is None and self.pin is None:
            return "guest_ca_file or guest_pin"
        return None

    def owner_services(self, owner: str) -> tuple[str, ...]:
        """The service URLs as owner ``owner``'s guests use them (its base URLs)."""
        return tuple(owner_base_url(url, owner) for url in self.services)

    def build(self, uuid: str, owner: str) -> bytes | None:
        """The initdata document of owner ``owner``'s VM ``uuid`` (None: a setting is
        missing)."""
        if self.missing() is not None:
            return None
        services = self.owner_services(owner)
        return doc.build(services, UUID(uuid), ca_pem=self.ca_pem, pin=self.pin)


@dataclass(frozen=True, slots=True)
class InitdataView:
    """``GET /v1/vm/<uuid>/initdata``: what the host writes into an SNP domain."""

    scheme: str
    policy: int
    initdata: bytes
    host_data: bytes


@dataclass(frozen=True, slots=True)
class InitdataChange:
    """The owner's optional overrides for a rebuilt document (None: from the settings)."""

    services: Sequence[str] | None = None
    ca_pem: str | None = None
    pin: str | None = None


def expected_host_data(vm: VmRecord, reg: SnpRegistration) -> bytes | None:
    """The HOST_DATA VM ``vm`` must report: pinned, else SHA-256 of its initdata."""
    if reg.host_data is not None:
        return bytes.fromhex(reg.host_data)
    if vm.initdata is None:
        return None
    return doc.host_data(vm.initdata)


class VmInitdata:
    """``GET`` and ``POST /v1/vm/<uuid>/initdata``."""

    def __init__(self, settings: Settings, repo: VmRepository, *, clock: Clock) -> None:
        self.settings = settings
        self.repo = repo
        self.clock = clock
        self._trust: tuple[Settings, GuestTrust] | None = None

    def trust(self) -> GuestTrust:
        """The settings' :class:`GuestTrust` (the CA file is read once per settings)."""
        if self._trust is None or self._trust[0] is not self.settings:
            self._trust = (self.settings, GuestTrust.from_settings(self.settings))
        return self._trust[1]

    def for_registration(self, uuid: str, owner: str) -> bytes | None:
        """The document a newly registered SNP VM gets (None: a setting is missing)."""
        return self.trust().build(uuid, owner)

    def _visible(
        self,
        uuid: str,
        *,
        owner: Principal | None,
        host: Principal | None,
        owner_id: int | None = None,
    ) -> VmRecord:
        """The VM as this owner, or this host token, may see it (404 otherwise): the
        owner's own; for a host, that of the owner its token or the base URL
        ``owner_id`` names (see :func:`named_owner`), or of the only owner of the UUID."""
        if owner is not None:
            vm = self.repo.vm(owner.id, uuid)
        else:
            named = named_owner(host, owner_id)
            vm = self.repo.sole_vm(uuid) if named is None else self.repo.vm(named, uuid)
        if vm is None:
            raise NotFound(f"no VM {uuid}", reasons=["unknown_vm"])
        return vm

    def _view(self, vm: VmRecord) -> InitdataView:
        if not is_snp(vm.registration):
            raise Unsupported(
                f"VM {vm.uuid} is registered for {vm.registration.get('scheme')}; only "
                f"{SNP_SCHEME} VMs have initdata",
                reasons=["wrong_scheme"],
            )
        reg = SnpRegistration.from_public(vm.registration)
        if vm.initdata is None:
            missing = self.trust().missing()
            if missing is None:
                why = f"post to /v1/vm/{vm.uuid}/initdata to make it"
            else:
                why = f"the service has no {missing} setting"
            raise InitdataUnavailable(
                f"VM {vm.uuid} has no initdata: {why}", reasons=["initdata_unavailable"]
            )
        host_data = expected_host_data(vm, reg)
        assert host_data is not None  # the initdata exists
        return InitdataView(reg.scheme, reg.policy, vm.initdata, host_data)

    def show(
        self,
        uuid: str,
        *,
        owner: Principal | None = None,
        host: Principal | None = None,
        owner_id: int | None = None,
    ) -> InitdataView:
        """The VM's initdata, policy and expected HOST_DATA (owner, or host token; at
        the base URL of owner ``owner_id``)."""
        return self._view(self._visible(uuid, owner=owner, host=host, owner_id=owner_id))

    def change(self, owner: Principal, uuid: str, change: InitdataChange) -> InitdataView:
        """Rebuild the VM's document from the settings and ``change``; record the event."""
        vm = self._visible(uuid, owner=owner, host=None)
        if not is_snp(vm.registration):
            self._view(vm)  # raises wrong_scheme
        trust = self.trust()
        services = tuple(change.services) if change.services else trust.owner_services(owner.name)
        ca_pem = change.ca_pem if change.ca_pem is not None else trust.ca_pem
        pin = change.pin if change.pin is not None else trust.pin
        if not services:
            raise InitdataUnavailable(
                "no service URL for the initdata: give services, or the operator sets "
                "public_urls (ATTESTD_PUBLIC_URLS)",
                reasons=["initdata_unavailable"],
            )
        try:
            document = doc.build(services, UUID(vm.uuid), ca_pem=ca_pem, pin=pin)
        except doc.InitdataError as exc:
            raise ParseError(exc.message, reasons=["invalid_initdata"]) from None
        now = self.clock()
        detail = {
            "revision": vm.revision + 1,
            "old-sha256": None if vm.initdata is None else doc.digest(vm.initdata).hex(),
            "new-sha256": doc.digest(document).hex(),
            "services": list(services),
        }
        event = Event(owner.id, vm.uuid, EventKind.INITDATA_CHANGED, now, detail=detail)
        updated = self.repo.change_initdata(vm, document, now=now, event=event)
        logger.info(
            "initdata of VM %s changed to %s (owner_id=%d)",
            vm.uuid,
            detail["new-sha256"],
            owner.id,
        )
        return self._view(updated)
