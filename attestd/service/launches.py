"""Host use-cases of SEV / SEV-ES pre-attestation: begin a launch, validate it.

``begin`` (``/launch``) verifies the platform's certificate chain against the pinned
AMD roots (plus ``trust_anchors_dir``), the ASK-signed CEK and the owner's pinned
OCA, then starts a fresh session (new GODH, TEK, TIK) and stores the transport keys
encrypted. ``validate`` (``/validate``) claims the launch exactly once, verifies the
measurement HMAC against the candidates of :mod:`attestd.service.acceptance`, asks
its :func:`~attestd.service.acceptance.decide` for every reason to refuse, and only
then builds the secret table and, from the :class:`~attestd.sev.secrets.VerifiedLaunch`,
the LAUNCH_SECRET packet (:class:`~attestd.sev.secrets.LaunchSecret`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets as _secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attestd.config import Settings
from attestd.errors import (
    AttestdError,
    CekRequired,
    Conflict,
    MeasurementMismatch,
    NotFound,
    PolicyViolation,
    RegistrationChanged,
    StorageKeyError,
    StorageUnavailable,
    TooManyRequests,
    Unsupported,
)
from attestd.ratelimit import PerKeyRate
from attestd.service import acceptance
from attestd.service.acceptance import HostClaims
from attestd.service.cache import Lru
from attestd.service.clock import Clock
from attestd.service.owners import named_owner
from attestd.service.payload import secret_table
from attestd.service.registration import Registration
from attestd.service.snp_registration import is_snp
from attestd.service.vms import Vms
from attestd.sev.certs import SevCertificate
from attestd.sev.chain import (
    PlatformChain,
    TrustAnchor,
    VerifiedChain,
    check_platform_links,
    verify_chain,
)
from attestd.sev.measure.digest import LaunchInputs, launch_digests
from attestd.sev.secrets import LaunchSecret, verify_launch
from attestd.sev.session import LaunchMeasurement, TransportKeys, start_launch
from attestd.storage.keys import KeyRing
from attestd.storage.ports import (
    Event,
    EventKind,
    EventLog,
    FirmwareRepository,
    LaunchRecord,
    LaunchRepository,
    LaunchStatus,
    Outcome,
    Principal,
    VmRecord,
    VmRepository,
)
from attestd.trust import load_anchors
from attestd.trust.kds import CekStore, KdsGate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LaunchSession:
    """The ``/launch`` answer: the session the host passes to LAUNCH_START."""

    launch_id: str
    session: bytes
    owner_cert: bytes
    policy: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class ValidateRequest(HostClaims):
    """The ``/validate`` request: the host's claims plus the launch id and measurement."""

    launch_id: str = ""
    measurement: bytes = b""


def _retryable(exc: Exception) -> bool:
    """A failure of the service, not of the launch's evidence: the launch is not burnt."""
    return isinstance(exc, StorageUnavailable | StorageKeyError) or not isinstance(
        exc, AttestdError
    )


def _pdh_fingerprint(pdh: bytes) -> str:
    """The PDH's :attr:`~attestd.sev.certs.SevCertificate.fingerprint` (signed bytes
    only); the SHA-256 of the raw bytes for a PDH that does not even parse."""
    try:
        return SevCertificate.unpack(pdh).fingerprint
    except AttestdError:
        return hashlib.sha256(pdh).hexdigest()


class Launches:
    """``/launch`` and ``/validate``."""

    def __init__(
        self,
        settings: Settings,
        *,
        vms: Vms,
        vm_repo: VmRepository,
        launches: LaunchRepository,
        events: EventLog,
        firmware: FirmwareRepository,
        keyring: KeyRing,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.vm_repo = vm_repo
        self.repo = launches
        self.events = events
        self.firmware = firmware
        self.keyring = keyring
        self.clock = clock
        self._anchors: tuple[TrustAnchor, ...] | None = None
        # launch digests per (owner, firmware hash, inputs): an owner's entry is reached
        # only through that owner's firmware link, so another owner's upload of the same
        # image neither serves nor reveals it; verified chains per exact input bytes
        self._digests: Lru[tuple[int, str, LaunchInputs], bytes] = Lru(512)
        self._chains: Lru[bytes, VerifiedChain] = Lru(256)
        #: AMD KDS behind single flight, a negative cache and a rate limit (per process)
        self.kds = KdsGate()
        #: /launch requests per host (per process), made when first needed
        self._host_rate = PerKeyRate()

    # -- helpers ------------------------------------------------------------------------

    def anchors(self) -> tuple[TrustAnchor, ...]:
        """The pinned AMD roots plus the configured extra anchors (loaded once)."""
        if self._anchors is None:
            self._anchors = load_anchors(self.settings.trust_anchors_dir)
        return self._anchors

    def _vm(
        self, uuid: str, owner_id: int | None
    ) -> tuple[VmRecord, Registration, int, float | None]:
        """The VM ``uuid`` of the named owner (see :func:`named_owner`; without one, of
        the only owner that has the UUID), with how many launches it has pending and
        when the first expires: another owner's VM is "no VM", as an unknown one."""
        found = self.repo.vm_for_launch(uuid, self.clock(), owner_id=owner_id)
        if found is None:
            raise NotFound(f"no VM {uuid}", reasons=["unknown_vm"])
        vm, pending, first_expiry = found
        if is_snp(vm.registration):
            raise Unsupported(
                f"VM {uuid} is an SEV-SNP VM: it attests itself (/attest), it has no "
                "/launch or /validate",
                reasons=["wrong_scheme"],
            )
        return vm, Registration.from_public(vm.registration), pending, first_expiry

    def _refuse(self, vm: VmRecord, kind: EventKind, exc: AttestdError, **detail: Any) -> None:
        info = {"reason": exc.code, "message": exc.message, "tried": list(exc.reasons), **detail}
        self.events.add_event(
            Event(
                vm.owner_id,
                vm.uuid,
                kind,
                self.clock(),
                launch_id=detail.get("launch_id"),
                outcome=Outcome.REFUSED,
                detail=info,
            )
        )

    def _limit_launches(
        self, host: Principal | None, pending: int, first_expiry: float | None
    ) -> None:
        """Refuse (429, Retry-After) a host over its launch rate or a VM with too many
        pending launches, before any cryptography or storage write."""
        rate = self.settings.host_launch_rate
        wait = self._host_rate.wait(rate, None if host is None else host.id)
        if wait > 0:
            raise TooManyRequests(
                "this host starts launches too fast",
                reasons=[f"host-launch-rate={rate}/s"],
                retry_after=int(wait) + 1,
            )
        bound = self.settings.max_pending_launches
        if bound > 0:
            now = self.clock()
            if pending >= bound:
                until = (first_expiry or now + self.settings.launch_ttl) - now
                raise TooManyRequests(
                    "the VM has too many pending launches",
                    reasons=[f"max-pending-launches={bound}"],
                    retry_after=int(until) + 1,
                )

    def _signed_cek(self, cpu_id: bytes | None, cek: bytes | None) -> SevCertificate:
        if cek is not None:
            return SevCertificate.unpack(cek)
        if cpu_id is None:
            raise CekRequired("give the signed CEK (cek) or the chip id (cpu-id)")
        return self.kds.get(CekStore.from_settings(self.settings), cpu_id)

    def _verify(
        self, chain: PlatformChain, cek: SevCertificate, pinned: SevCertificate | None
    ) -> VerifiedChain:
        """verify_chain, remembered per exact input bytes incl. the pinned OCA."""
        parts = [chain.pdh, chain.pek, chain.oca, chain.cek, cek]
        key = hashlib.sha256(
            b"".join(c.pack() for c in parts) + (pinned.pack() if pinned else b"")
        ).digest()
        found = self._chains.get(key)
        if found is not None:
            return found
        verified = verify_chain(chain, self.anchors(), signed_cek=cek, pinned_oca=pinned)
        self._chains.put(key, verified)
        return verified

    # -- /launch ------------------------------------------------------------------------

    def begin(
        self,
        uuid: str,
        *,
        pdh: bytes,
        cert_chain: bytes,
        cpu_id: bytes | None,
        cek: bytes | None,
        host: Principal | None = None,
        owner_id: int | None = None,
    ) -> LaunchSession:
        """Verify the platform and start a fresh launch session for VM ``uuid`` (of
        the owner of the base URL ``owner_id`` or of the host's token)."""
        vm, reg, pending, first_expiry = self._vm(uuid, named_owner(host, owner_id))
        self._limit_launches(host, pending, first_expiry)
        pdh_sha256 = _pdh_fingerprint(pdh)
        chip = cpu_id.hex() if cpu_id is not None else ""
        where = {"pdh_sha256": pdh_sha256, "chip_id": chip}
        try:
            if vm.max_launches is not None and vm.launches_used >= vm.max_launches:
                raise Conflict(
                    "the VM's launch budget is exhausted",
                    reasons=[f"max-launches={vm.max_launches}"],
                )
            chain = PlatformChain.from_export(pdh, cert_chain)
            pinned = SevCertificate.unpack(reg.cloud_cert) if reg.cloud_cert else None
            if cek is None:
                # everything that needs no AMD key is checked before AMD KDS is asked
                check_platform_links(chain, pinned)
            signed_cek = self._signed_cek(cpu_id, cek)
            verified = self._verify(chain, signed_cek, pinned)
            start = start_launch(verified.pdh_key(), reg.policy)
        except AttestdError as exc:
            self._refuse(vm, EventKind.LAUNCH, exc, **where)
            raise
        now = self.clock()
        launch = LaunchRecord(
            id=_secrets.token_urlsafe(24),
            vm_id=vm.id,
            vm_revision=vm.revision,
            state=LaunchStatus.PENDING,
            policy=start.policy,
            keys_enc=self.keyring.encrypt(start.keys.to_bytes()),
            chip_id=chip,
            pdh_sha256=pdh_sha256,
            generation=verified.generation,
            created_at=now,
            expires_at=now + self.settings.launch_ttl,
            finished_at=None,
        )
        event = Event(
            vm.owner_id,
            vm.uuid,
            EventKind.LAUNCH,
            now,
            launch_id=launch.id,
            outcome=Outcome.STARTED,
            detail={
                **where,
                "generation": verified.generation,
                "chain": list(verified.links),
                "policy": start.policy,
            },
        )
        if not self.repo.begin_launch(vm, launch, event=event):
            current = self.vm_repo.vm(vm.owner_id, uuid)
            refused: AttestdError
            if current is None or current.revision != vm.revision:
                refused = RegistrationChanged(
                    "the registration changed while the launch started",
                    reasons=["registration_changed"],
                )
            else:
                refused = Conflict(
                    "the VM's launch budget is exhausted",
                    reasons=[f"max-launches={vm.max_launches}"],
                )
            self._refuse(vm, EventKind.LAUNCH, refused, **where)
            raise refused
        logger.info(
            "launch %s for VM %s (owner_id=%d) on %s chip %s",
            launch.id,
            vm.uuid,
            vm.owner_id,
            verified.generation,
            chip or "-",
        )
        return LaunchSession(
            launch_id=launch.id,
            session=start.session,
            owner_cert=start.godh_cert,
            policy=start.policy,
            expires_at=launch.expires_at,
        )

    # -- /validate ----------------------------------------------------------------------

    def _end_launch(
        self,
        vm: VmRecord,
        launch_id: str,
        state: LaunchStatus,
        finished_at: float,
        *,
        event_at: float,
        outcome: Outcome,
        detail: dict[str, Any],
    ) -> None:
        """End a launch for good, recording its validate event in the same transaction."""
        self.repo.finish_launch(
            launch_id,
            state,
            finished_at,
            event=Event(
                vm.owner_id,
                vm.uuid,
                EventKind.VALIDATE,
                event_at,
                launch_id=launch_id,
                outcome=outcome,
                detail=detail,
            ),
        )

    def _claim(self, uuid: str, launch_id: str, owner: int | None) -> tuple[VmRecord, LaunchRecord]:
        """Claim the launch for the validate lease and read the VM as it is after the
        claim (one transaction). With an owner named (see :func:`named_owner`) only
        that owner's launches are claimed; another owner's launch id is unknown."""
        now = self.clock()
        claim = self.repo.claim_launch(
            uuid, launch_id, now, self.settings.validate_lease, owner_id=owner
        )
        vm, launch = claim.vm, claim.launch
        if (
            vm is None
            or (owner is not None and vm.owner_id != owner)
            or launch is None
            or launch.vm_id != vm.id
        ):
            # without a launch id of the VM the caller learns nothing about the VM
            raise NotFound("unknown launch", reasons=["unknown_launch"])
        if claim.claimed:
            return vm, launch
        if launch.state is LaunchStatus.PENDING:
            expired = Conflict("the launch session expired", reasons=["launch_expired"])
            self._end_launch(
                vm,
                launch_id,
                LaunchStatus.FAILED,
                now,
                event_at=now,
                outcome=Outcome.REFUSED,
                detail={"reason": "launch_expired"},
            )
            raise expired
        retry = None
        if launch.state is LaunchStatus.VALIDATING and launch.claimed_until:
            retry = max(1, int(launch.claimed_until - now) + 1)  # in progress, or its lease
        used = Conflict(
            f"the launch was already used ({launch.state.value})",
            reasons=["launch_used"],
            retry_after=retry,
        )
        self._refuse(vm, EventKind.VALIDATE, used, launch_id=launch_id)
        raise used

    def _give_back(self, vm: VmRecord, launch: LaunchRecord, exc: Exception) -> None:
        """After a retryable failure: the launch is pending again (the host retries the
        same launch id); if even that cannot be written, the claim's lease lapses."""
        try:
            back = self.repo.unclaim_launch(launch)
        except AttestdError:
            back = False
        logger.warning(
            "validate %s for VM %s failed for a retryable reason (%s): %s",
            launch.id,
            vm.uuid,
            exc.code if isinstance(exc, AttestdError) else type(exc).__name__,
            "the launch is pending again" if back else "its claim lapses after the lease",
        )

    def _digest_of(
        self, owner_id: int, firmware: str, inputs: Sequence[LaunchInputs]
    ) -> dict[LaunchInputs, bytes]:
        """Launch digests of the owner's uploaded firmware (remembered per owner,
        firmware and inputs)."""
        missing = [i for i in inputs if self._digests.get((owner_id, firmware, i)) is None]
        if missing:
            data = self.firmware.firmware(owner_id, firmware)
            if data is None:
                raise NotFound("is not uploaded; cannot compute its digest")
            for key, value in launch_digests(data, missing).items():
                self._digests.put((owner_id, firmware, key), value)
        out: dict[LaunchInputs, bytes] = {}
        for i in inputs:
            digest = self._digests.get((owner_id, firmware, i))
            if digest is not None:
                out[i] = digest
        return out

    def validate(
        self,
        uuid: str,
        req: ValidateRequest,
        *,
        host: Principal | None = None,
        owner_id: int | None = None,
    ) -> LaunchSecret:
        """Verify the launch measurement; release the secret table exactly once."""
        # the VM is read after the claim: a PUT that committed before it ends this launch
        vm, launch = self._claim(uuid, req.launch_id, named_owner(host, owner_id))
        now = self.clock()
        try:
            if vm.revision != launch.vm_revision:
                raise RegistrationChanged(
                    "the registration changed after the launch started",
                    reasons=[
                        "registration_changed",
                        f"launch revision {launch.vm_revision}, now {vm.revision}",
                    ],
                )
            reg = Registration.from_public(vm.registration)
            if launch.keys_enc is None:
                raise Conflict("the launch has no session keys", reasons=["launch_used"])
            keys = TransportKeys.from_bytes(self.keyring.decrypt(launch.keys_enc))
            owner_id = vm.owner_id
            found, tried = acceptance.candidates(
                reg, req, lambda fw, inputs: self._digest_of(owner_id, fw, inputs)
            )
            if not found:
                raise MeasurementMismatch("no accepted launch digest applies", reasons=tried)
            measurement = LaunchMeasurement.unpack(req.measurement)
            try:
                verified = verify_launch(
                    keys, measurement, req.version, launch.policy, [c.digest for c in found]
                )
            except MeasurementMismatch as exc:
                raise MeasurementMismatch(exc.message, reasons=[*tried, *exc.reasons]) from None
            # only now are policy, API version and build authenticated (API >= 0.17)
            refusals = acceptance.decide(reg, launch.policy, req, verified.version)
            if refusals:
                raise PolicyViolation("policy or firmware version not accepted", reasons=refusals)
            label = next(c.label for c in found if c.digest == verified.launch_digest)
            stored = self.vms.stored_secrets(vm)
            table = secret_table(
                reg.user_id or vm.uuid, stored, max_size=self.settings.secret_area_size
            )
            packet = verified.launch_secret(table)
            released = Event(
                vm.owner_id,
                vm.uuid,
                EventKind.VALIDATE,
                now,
                launch_id=launch.id,
                outcome=Outcome.RELEASED,
                detail={
                    "launch_digest": verified.launch_digest.hex(),
                    "matched": label,
                    "firmware": str(verified.version),
                    "table_size": len(table),
                },
            )
            # the packet leaves only if this commit (conditional on the registration
            # revision and on this claim) succeeded: a PUT or DELETE that committed
            # meanwhile wins
            if not self.repo.release_launch(launch, self.clock(), event=released):
                raise RegistrationChanged(
                    "the registration changed while the launch was validated",
                    reasons=["registration_changed"],
                )
        except Exception as exc:
            if _retryable(exc):
                self._give_back(vm, launch, exc)
                raise
            if isinstance(exc, AttestdError):
                detail = {"reason": exc.code, "message": exc.message, "tried": list(exc.reasons)}
            else:
                detail = {"reason": "internal_error"}
            self._end_launch(
                vm,
                launch.id,
                LaunchStatus.FAILED,
                self.clock(),
                event_at=now,
                outcome=Outcome.REFUSED,
                detail=detail,
            )
            logger.info("validate %s for VM %s refused: %s", launch.id, vm.uuid, detail["reason"])
            raise
        logger.info(
            "validate %s for VM %s: secret released (digest %s)",
            launch.id,
            vm.uuid,
            verified.launch_digest.hex(),
        )
        return packet
