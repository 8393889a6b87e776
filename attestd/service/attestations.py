"""Guest use-cases of SEV-SNP attestation: issue a challenge, attest and release.

``challenge`` (``/attest/challenge``) stores a fresh single-use nonce for an SNP VM
(only its SHA-256; shared by every node through the database). ``attest``
(``/attest``), in this order:

1. claims the nonce: the first attest that presents it consumes it, whatever the
   outcome (one conditional ``UPDATE``); concurrent attests with one nonce get one
   answer and :class:`~attestd.errors.NonceRejected` for the others;
2. reads the registration again, in the claim's transaction (a ``PUT`` that committed
   before the claim wins);
3. verifies the evidence (:func:`attestd.sev.snp.verify.check_report`: signature,
   chain to a pinned or configured root with issuer names and validity dates at the
   service's clock, the ASK/ASVK against the ARK's CRL (:mod:`attestd.trust.crl`;
   without a current CRL refused only if ``snp_require_crl``, and the event says
   ``"revocation": "no-crl"``), REPORTED_TCB, chip id) with the VCEK or VLEK from the
   request or the VCEK store, and that REPORT_DATA binds the nonce and the guest's key;
4. only then consults the registration: asks the SNP core for every reason to refuse
   (:func:`attestd.sev.snp.verify.accept`: the owner's policy, minimum TCBs, VMPL,
   accepted measurements, HOST_DATA (the owner's pinned ``host-data``, else the SHA-256
   of the VM's stored initdata; a VM with neither is refused, ``host_data_unbound``),
   allow-lists). The caller has no token: until its report meets the registration it
   has not proven it is the VM, so a refusal here answers only ``not_accepted``
   (:class:`~attestd.errors.NotAccepted`) and the VM's event lists what failed; the
   budget (``max-launches``) is checked after that;
5. only from the resulting :class:`~attestd.sev.snp.verify.VerifiedAttestation`
   encrypts the guest payload (version 1, :mod:`attestd.service.payload`) to the
   guest's key, and spends one release of ``max-launches`` on the revision decided on,
   recording the event in the same transaction.

An SEV or SEV-ES VM is, to these endpoints, an unregistered one (404 ``unknown_vm``,
nothing written). Requests for one SNP VM beyond ``attest_vm_rate`` per second (per
service process) are refused 429 before anything is written.
Every attempt is an ``attest`` event listing the outcome and every check that failed of
those that ran: the evidence's, and the registration's only for evidence that verified.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import math
import secrets as _secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from attestd.config import Settings
from attestd.errors import (
    AttestdError,
    ChainInvalid,
    ChallengeLimit,
    Conflict,
    NonceRejected,
    NotAccepted,
    NotFound,
    ParseError,
    PolicyViolation,
    RegistrationChanged,
    TooManyRequests,
)
from attestd.ratelimit import PerKeyRate
from attestd.service.acceptance import kernel_hashes
from attestd.service.cache import Lru
from attestd.service.clock import Clock
from attestd.service.initdata import expected_host_data
from attestd.service.payload import payload_document
from attestd.service.snp_registration import SnpRegistration, is_snp
from attestd.service.vms import Vms
from attestd.sev.measure.digest import LaunchInputs, SevMode, launch_digests
from attestd.sev.snp.certs import SnpAnchor, SnpCrl
from attestd.sev.snp.report import AttestationReport, SigningKey
from attestd.sev.snp.verify import (
    TeeKey,
    VerifiedAttestation,
    VerifiedReport,
    accept,
    check_report,
    report_data_binding,
)
from attestd.storage.ports import (
    ChallengeRecord,
    ChallengeRepository,
    Event,
    EventKind,
    EventLog,
    FirmwareRepository,
    Outcome,
    VmRecord,
    VmRepository,
)
from attestd.trust.anchors import load_snp_anchors
from attestd.trust.crl import CrlStore
from attestd.trust.vcek import VcekKey, VcekStore

logger = logging.getLogger(__name__)

NONCE_BYTES = 32
#: HOST_DATA of this many initdata documents is remembered, by their SHA-256
HOST_DATA_MEMO_SIZE = 256


@dataclass(frozen=True, slots=True)
class Challenge:
    """The ``/attest/challenge`` answer."""

    nonce: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class AttestRequest:
    """The ``/attest`` request (all of it untrusted until verified)."""

    nonce: str
    tee_pubkey: Mapping[str, Any]
    report: bytes = field(repr=False)
    vcek: bytes | None = field(default=None, repr=False)
    cert_table: bytes | None = field(default=None, repr=False)


def nonce_sha256(nonce: str) -> str:
    """The stored form of a nonce."""
    return hashlib.sha256(nonce.encode("utf-8")).hexdigest()


def _unknown_vm(uuid: str) -> NotFound:
    """What a caller learns of a VM it may not see: the same as of an unregistered one."""
    return NotFound(f"no VM {uuid}", reasons=["unknown_vm"])


def _budget_exhausted(vm: VmRecord) -> Conflict:
    """To a caller whose report met the registration: the VM's ``max-launches`` is spent."""
    return Conflict(
        "the VM's attestation budget is exhausted", reasons=[f"max-launches={vm.max_launches}"]
    )


def snp_inputs(reg: SnpRegistration) -> list[LaunchInputs]:
    """The launch inputs whose SNP digests the owner accepts (one per vCPU type)."""
    hashes = kernel_hashes(reg)
    return [
        LaunchInputs(
            SevMode.SEV_SNP,
            hashes,
            vcpus=reg.cpu_count,
            vcpu_type=vcpu_type,
            guest_features=reg.guest_features,
        )
        for vcpu_type in reg.vcpu_types
    ]


class _CrlLookup(Mapping[str, SnpCrl]):
    """The CRL of an anchor, asked of the store only for the anchor that signed the report."""

    def __init__(
        self, store: CrlStore, anchors: Sequence[SnpAnchor], at: datetime.datetime
    ) -> None:
        self._store = store
        self._anchors = {a.name: a for a in anchors}
        self._at = at

    def __getitem__(self, name: str) -> SnpCrl:
        crl = self._store.current(self._anchors[name], self._at)
        if crl is None:
            raise KeyError(name)
        return crl

    def __iter__(self) -> Iterator[str]:
        return iter(self._anchors)

    def __len__(self) -> int:
        return len(self._anchors)


class Attestations:
    """``/attest/challenge`` and ``/attest``."""

    def __init__(
        self,
        settings: Settings,
        *,
        vms: Vms,
        vm_repo: VmRepository,
        challenges: ChallengeRepository,
        events: EventLog,
        firmware: FirmwareRepository,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.vm_repo = vm_repo
        self.repo = challenges
        self.events = events
        self.firmware = firmware
        self.clock = clock
        self._anchors: tuple[SnpAnchor, ...] | None = None
        # per (owner, firmware hash, inputs): an owner reaches an entry only through its
        # own firmware link, so another owner's upload neither serves nor reveals it
        self._digests: Lru[tuple[int, str, LaunchInputs], bytes] = Lru(512)
        self._vceks: VcekStore | None = None
        self._crls: CrlStore | None = None
        # SHA-256 of an initdata document's exact bytes -> its HOST_DATA (a pure function
        # of those bytes: another document, even of another VM, has another key)
        self._initdata_host_data: Lru[bytes, bytes] = Lru(HOST_DATA_MEMO_SIZE)
        self._vm_rate = PerKeyRate()

    def crls(self) -> CrlStore:
        """The CRL store (next to the VCEKs; AMD KDS unless ``kds_offline``)."""
        if self._crls is None:
            self._crls = CrlStore.from_settings(self.settings)
        return self._crls

    def vceks(self) -> VcekStore:
        """The VCEK store (``vcek_store_dir``, AMD KDS unless ``kds_offline``)."""
        if self._vceks is None:
            self._vceks = VcekStore.from_settings(self.settings)
        return self._vceks

    def _leaf(self, req: AttestRequest) -> bytes | None:
        """The VCEK from the store when the request carries no certificate (VLEKs never)."""
        if req.vcek is not None or req.cert_table is not None:
            return req.vcek
        try:
            report = AttestationReport.unpack(req.report)
        except ParseError:
            return None  # check_report names the malformed report
        if report.key_info.signing_key is not SigningKey.VCEK:
            return None  # check_report: no certificate given (a VLEK comes with the request)
        return self.vceks().get(VcekKey.of_report(report))

    def anchors(self) -> tuple[SnpAnchor, ...]:
        """The pinned AMD SNP roots plus the configured extra anchors (loaded once)."""
        if self._anchors is None:
            self._anchors = load_snp_anchors(self.settings.trust_anchors_dir)
        return self._anchors

    def _vm(self, uuid: str, owner_id: int | None) -> VmRecord:
        """The VM ``uuid`` of the base URL's owner (at ``/v1``: of the only owner that
        has the UUID, else :class:`~attestd.errors.OwnerRequired`)."""
        vm = self.vm_repo.sole_vm(uuid) if owner_id is None else self.vm_repo.vm(owner_id, uuid)
        if vm is None:
            raise _unknown_vm(uuid)
        return vm

    # -- /attest/challenge -------------------------------------------------------------

    def _snp_vm(self, uuid: str, owner_id: int | None) -> VmRecord:
        """The SNP VM ``uuid``, within ``attest_vm_rate`` (429 with Retry-After over it).

        To these endpoints (no token) an SEV VM is an unregistered one, and nothing is
        written for it; the rate bounds how fast anyone makes a VM's endpoints write (a
        challenge, a claim, an event).
        """
        vm = self._vm(uuid, owner_id)
        if not is_snp(vm.registration):
            raise _unknown_vm(uuid)
        rate = self.settings.attest_vm_rate
        wait = self._vm_rate.wait(rate, vm.id)
        if wait > 0:
            raise TooManyRequests(
                "too many attestation requests for this VM",
                reasons=[f"attest-vm-rate={rate}/s"],
                retry_after=int(wait) + 1,
            )
        return vm

    def challenge(self, uuid: str, owner_id: int | None = None) -> Challenge:
        """A fresh single-use nonce for SNP VM ``uuid`` (of owner ``owner_id``)."""
        vm = self._snp_vm(uuid, owner_id)
        now = self.clock()
        nonce = base64.b64encode(_secrets.token_bytes(NONCE_BYTES)).decode("ascii")
        expires = math.floor(now) + self.settings.attest_nonce_ttl
        record = ChallengeRecord(nonce_sha256(nonce), vm.id, now, float(expires), None)
        if not self.repo.add_challenge(record, limit=self.settings.attest_max_challenges, now=now):
            raise ChallengeLimit(
                f"at most {self.settings.attest_max_challenges} live challenges per VM",
                reasons=["too_many_challenges"],
            )
        return Challenge(nonce, expires)

    # -- /attest -----------------------------------------------------------------------

    def _event(self, vm: VmRecord, at: float, outcome: Outcome, detail: dict[str, Any]) -> Event:
        return Event(vm.owner_id, vm.uuid, EventKind.ATTEST, at, outcome=outcome, detail=detail)

    def _claim(self, vm: VmRecord, nonce: str, now: float) -> VmRecord | None:
        """Claim ``nonce`` for ``vm``; the VM as it is after the claim (same transaction)."""
        found = self.repo.claim_challenge(nonce_sha256(nonce), vm, now)
        claimed = found.challenge
        if not found.claimed or claimed is None:
            if claimed is None:
                raise NonceRejected("unknown nonce", reasons=["nonce_unknown"])
            if claimed.vm_id != vm.id:
                raise NonceRejected(
                    "the nonce was issued for another VM", reasons=["nonce_other_vm"]
                )
            raise NonceRejected("the nonce was already used", reasons=["nonce_used"])
        if claimed.expires_at <= now:
            raise NonceRejected("the nonce expired", reasons=["nonce_expired"])
        return found.vm

    def host_data(self, vm: VmRecord, reg: SnpRegistration) -> bytes | None:
        """:func:`~attestd.service.initdata.expected_host_data`; the HOST_DATA of a stored
        initdata document (which parses it) is remembered by the SHA-256 of its exact bytes."""
        if reg.host_data is not None or vm.initdata is None:
            return expected_host_data(vm, reg)
        key = hashlib.sha256(vm.initdata).digest()
        found = self._initdata_host_data.get(key)
        if found is None:
            found = expected_host_data(vm, reg)
            if found is not None:
                self._initdata_host_data.put(key, found)
        return found

    def _digests_of(
        self, owner_id: int, firmware: str, inputs: Sequence[LaunchInputs]
    ) -> list[bytes]:
        missing = [i for i in inputs if self._digests.get((owner_id, firmware, i)) is None]
        if missing:
            data = self.firmware.firmware(owner_id, firmware)
            if data is None:
                return []
            for key, value in launch_digests(data, missing).items():
                self._digests.put((owner_id, firmware, key), value)
        found = (self._digests.get((owner_id, firmware, i)) for i in inputs)
        return [d for d in found if d is not None]

    def measurements(self, owner_id: int, reg: SnpRegistration) -> tuple[list[bytes], list[str]]:
        """The accepted SNP launch digests, and what was tried (for the event)."""
        out = [bytes.fromhex(d) for d in reg.launch_digests]
        tried = [f"launch-digest {d[:16]}" for d in reg.launch_digests]
        inputs = snp_inputs(reg)
        for fw in reg.firmware_hashes:
            try:
                found = self._digests_of(owner_id, fw, inputs)
            except AttestdError as exc:
                tried.append(f"firmware {fw[:16]}: {exc.message}")
                continue
            tried.append(
                f"firmware {fw[:16]} (snp, {reg.cpu_count} vCPU(s) of {'/'.join(reg.vcpu_types)}, "
                f"kernel hashes {'on' if reg.kernel_hash else 'off'})"
                + ("" if found else ": not uploaded")
            )
            out.extend(found)
        return out, tried

    def _accept(
        self,
        vm: VmRecord,
        reg: SnpRegistration,
        verified: VerifiedReport,
        nonce: str,
        key: TeeKey,
        detail: dict[str, Any],
    ) -> VerifiedAttestation:
        """The report against everything the registration requires (PolicyViolation
        listing every failed check)."""
        host_data = self.host_data(vm, reg)
        if host_data is None:
            raise PolicyViolation(
                "nothing binds this VM's HOST_DATA: it has no initdata and its "
                "registration pins no host-data",
                reasons=[
                    "host_data_unbound: no initdata (the service needs public_urls; then "
                    f"POST /v1/vm/{vm.uuid}/initdata) and no host-data in the registration"
                ],
            )
        measurements, tried = self.measurements(vm.owner_id, reg)
        detail["tried"] = tried
        reference = replace(reg.reference_policy(measurements), host_data=host_data)
        return accept(verified, reference, nonce=nonce, tee_key=key)

    def attest(self, uuid: str, req: AttestRequest, owner_id: int | None = None) -> str:
        """Verify an SNP report; the JWE of the guest payload, or raise (nothing released)."""
        vm = self._snp_vm(uuid, owner_id)
        now = self.clock()
        detail: dict[str, Any] = {}
        try:
            # the VM as read in the claim's transaction: a PUT that committed before it wins
            current = self._claim(vm, req.nonce, now)
            if current is None or current.id != vm.id or not is_snp(current.registration):
                raise _unknown_vm(uuid)
            vm = current
            reg = SnpRegistration.from_public(vm.registration)
            detail["revision"] = vm.revision
            key = TeeKey.parse(req.tee_pubkey)  # checked and converted once per attest
            at = datetime.datetime.fromtimestamp(now, datetime.UTC)
            anchors = self.anchors()
            checked = check_report(
                req.report,
                anchors,
                leaf=self._leaf(req),
                cert_table=req.cert_table,
                at=at,
                crls=_CrlLookup(self.crls(), anchors, at),
                require_crl=self.settings.snp_require_crl,
            )
            detail["links"] = list(checked.links)
            if not checked.ok or checked.verified is None:
                raise ChainInvalid(
                    checked.failure or "the report did not verify",
                    reasons=[f"{checked.code}: {checked.failure}"],
                )
            verified = checked.verified
            if verified.revocation != "checked":
                logger.warning(
                    "attest for VM %s: no current CRL of the %s ARK, ASK/ASVK revocation "
                    "not checked (%s)",
                    vm.uuid,
                    verified.anchor,
                    verified.revocation,
                )
            detail.update(
                revocation=verified.revocation,
                generation=verified.generation.value,
                signing_key=verified.signing_key.label,
                measurement=verified.report.measurement.hex(),
                vmpl=verified.report.vmpl,
            )
            if verified.report.report_data != report_data_binding(req.nonce, key.jwk):
                raise PolicyViolation(
                    "the report does not answer this challenge",
                    reasons=["report_data_mismatch: REPORT_DATA does not bind the nonce and key"],
                )
            # Only from here on is the registration consulted. Until the report meets it,
            # the caller has not proven it is the VM: it learns not_accepted, the VM's
            # events say what failed (with the registration's values).
            try:
                attestation = self._accept(vm, reg, verified, req.nonce, key, detail)
            except PolicyViolation as exc:
                raise NotAccepted(exc) from None
            if vm.max_launches is not None and vm.launches_used >= vm.max_launches:
                raise _budget_exhausted(vm)
            stored = self.vms.stored_secrets(vm)
            document = payload_document(reg.user_id or vm.uuid, stored)
            plaintext = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
            token = attestation.encrypt_payload(plaintext.encode("utf-8"), key)
            released = self._event(vm, now, Outcome.RELEASED, detail)
            if not self.repo.spend_attestation(vm, event=released):
                latest = self.vm_repo.vm(vm.owner_id, uuid)
                if latest is None or latest.revision != vm.revision:
                    raise RegistrationChanged(
                        "the registration changed during the attestation",
                        reasons=["registration_changed"],
                    )
                raise _budget_exhausted(vm)
        except Exception as exc:
            if isinstance(exc, AttestdError):
                why = exc.withheld if isinstance(exc, NotAccepted) else exc
                info = {"reason": why.code, "message": why.message, "failed": list(why.reasons)}
            else:
                info = {"reason": "internal_error"}
            self.events.add_event(self._event(vm, now, Outcome.REFUSED, {**detail, **info}))
            logger.info("attest for VM %s refused: %s", vm.uuid, info["reason"])
            if isinstance(exc, ValueError) and not isinstance(exc, AttestdError):
                raise ParseError("the attestation request is not valid") from None
            raise
        logger.info("attest for VM %s: payload released", vm.uuid)
        return token
