"""Host-side use-cases: begin a launch (verify the platform, new session) and validate it.

``begin`` verifies the platform's certificate chain against the pinned AMD roots
(plus ``trust_anchors_dir``), the ASK-signed CEK and the owner's pinned OCA, then
starts a fresh session (new GODH, TEK, TIK) and stores the transport keys
encrypted. ``validate`` claims the launch exactly once, computes the expected
launch digests itself from the owner's accepted inputs (the host's fields only
select among them), verifies the measurement, policy and firmware version, and
only then builds the secret table and the LAUNCH_SECRET packet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets as _secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from attestd.errors import (
    AttestdError,
    CekUnavailable,
    Conflict,
    MeasurementMismatch,
    NotFound,
    PolicyViolation,
)
from attestd.kds import CekStore
from attestd.registration import Registration, secret_table
from attestd.service import Service, event_row
from attestd.sev.certs import SevCertificate
from attestd.sev.chain import PlatformChain, TrustAnchor, VerifiedChain, verify_chain
from attestd.sev.measure.digest import LaunchInputs, SevMode, launch_digests
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VmsaFlavour
from attestd.sev.measurement import FirmwareVersion, LaunchMeasurement, verify_measurement
from attestd.sev.policy import GuestPolicy
from attestd.sev.secrets import build_launch_secret
from attestd.sev.session import TransportKeys, start_launch
from attestd.storage.ports import LaunchRecord, LaunchState, VmRecord
from attestd.trust import load_anchors

logger = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class LaunchGrant:
    """What ``/launch`` returns to the host."""

    launch_id: str
    session: bytes
    owner_cert: bytes
    policy: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class ValidateRequest:
    """The host's report after LAUNCH_MEASURE."""

    launch_id: str
    api_major: int
    api_minor: int
    build_id: int
    policy: int
    measurement: bytes
    firmware_hash: str | None = None
    cpu_count: int | None = None
    vcpu_type: str | None = None


@dataclass(frozen=True, slots=True)
class ReleasedSecret:
    """What ``/validate`` returns: the LAUNCH_SECRET header and encrypted table."""

    header: bytes
    table: bytes


@dataclass(frozen=True, slots=True)
class _Candidate:
    digest: bytes
    label: str


class _Lru(Generic[K, V]):
    """A small thread-safe LRU map."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _kernel_hashes(reg: Registration) -> KernelHashes | None:
    if reg.kernel_hash is None:
        return None
    empty = KernelHashes.from_content(b"", None, None)
    return KernelHashes(
        kernel=bytes.fromhex(reg.kernel_hash),
        initrd=bytes.fromhex(reg.initrd_hash) if reg.initrd_hash else empty.initrd,
        cmdline=bytes.fromhex(reg.cmdline_hash) if reg.cmdline_hash else empty.cmdline,
    )


class LaunchService:
    """``/launch`` and ``/validate``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.db = service.db
        self._anchors: tuple[TrustAnchor, ...] | None = None
        # launch digests per (firmware hash, inputs); verified chains per exact input bytes
        self._digests: _Lru[tuple[str, LaunchInputs], bytes] = _Lru(512)
        self._chains: _Lru[bytes, VerifiedChain] = _Lru(256)

    # -- helpers ------------------------------------------------------------------------

    def anchors(self) -> tuple[TrustAnchor, ...]:
        """The pinned AMD roots plus the configured extra anchors (loaded once)."""
        if self._anchors is None:
            self._anchors = load_anchors(self.settings.trust_anchors_dir)
        return self._anchors

    def _vm(self, uuid: str) -> tuple[VmRecord, Registration]:
        vm = self.db.vm(uuid)
        if vm is None:
            raise NotFound(f"no VM {uuid}", reasons=["unknown_vm"])
        return vm, Registration.from_public(json.loads(vm.registration))

    def _refuse(self, vm: VmRecord, kind: str, exc: AttestdError, **detail: Any) -> None:
        now = self.service.clock()
        info = {"reason": exc.code, "message": exc.message, "tried": list(exc.reasons), **detail}
        self.db.add_event(
            event_row(
                vm.owner_id,
                vm.uuid,
                kind,
                now,
                outcome="refused",
                detail=info,
                launch_id=detail.get("launch_id"),
            )
        )

    def _signed_cek(self, cpu_id: bytes | None, cek: bytes | None) -> SevCertificate:
        if cek is not None:
            return SevCertificate.unpack(cek)
        if cpu_id is None:
            raise CekUnavailable("give the signed CEK (cek) or the chip id (cpu-id)")
        store = CekStore(
            self.settings.effective_cek_cache_dir,
            base_url=self.settings.kds_url,
            offline=self.settings.kds_offline,
        )
        return store.get(cpu_id)

    def _verify(
        self, chain: PlatformChain, cek: SevCertificate, pinned: SevCertificate | None
    ) -> VerifiedChain:
        """verify_chain, remembered per exact input bytes (the anchors never change)."""
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
        self, uuid: str, *, pdh: bytes, cert_chain: bytes, cpu_id: bytes | None, cek: bytes | None
    ) -> LaunchGrant:
        """Verify the platform and start a fresh launch session for VM ``uuid``."""
        vm, reg = self._vm(uuid)
        self.db.purge_expired_keys(self.service.clock())
        pdh_sha256 = hashlib.sha256(pdh).hexdigest()
        chip = cpu_id.hex() if cpu_id is not None else ""
        where = {"pdh_sha256": pdh_sha256, "chip_id": chip}
        try:
            if vm.max_launches is not None and vm.launches_used >= vm.max_launches:
                raise Conflict(
                    "the VM's launch budget is exhausted",
                    reasons=[f"max-launches={vm.max_launches}"],
                )
            chain = PlatformChain.from_export(pdh, cert_chain)
            signed_cek = self._signed_cek(cpu_id, cek)
            pinned = SevCertificate.unpack(reg.cloud_cert) if reg.cloud_cert else None
            verified = self._verify(chain, signed_cek, pinned)
            start = start_launch(verified.pdh_key(), reg.policy)
        except AttestdError as exc:
            self._refuse(vm, "launch", exc, **where)
            raise
        now = self.service.clock()
        launch = LaunchRecord(
            id=_secrets.token_urlsafe(24),
            vm_id=vm.id,
            vm_revision=vm.revision,
            state=LaunchState.PENDING,
            policy=start.policy,
            keys_enc=self.service.keyring.encrypt(start.keys.to_bytes()),
            chip_id=chip,
            pdh_sha256=pdh_sha256,
            generation=verified.generation,
            created_at=now,
            expires_at=now + self.settings.launch_ttl,
            finished_at=None,
        )
        event = event_row(
            vm.owner_id,
            vm.uuid,
            "launch",
            now,
            launch_id=launch.id,
            outcome="started",
            detail={
                **where,
                "generation": verified.generation,
                "chain": list(verified.links),
                "policy": start.policy,
            },
        )
        if not self.db.begin_launch(vm, launch, event=event):
            exhausted = Conflict(
                "the VM's launch budget is exhausted (or its registration changed)",
                reasons=[f"max-launches={vm.max_launches}"],
            )
            self._refuse(vm, "launch", exhausted, **where)
            raise exhausted
        logger.info(
            "launch %s for VM %s (owner_id=%d) on %s chip %s",
            launch.id,
            vm.uuid,
            vm.owner_id,
            verified.generation,
            chip or "-",
        )
        return LaunchGrant(
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
        state: LaunchState,
        finished_at: float,
        *,
        event_at: float,
        outcome: str,
        detail: dict[str, Any],
    ) -> None:
        """End a launch for good, recording its validate event in the same transaction."""
        self.db.finish_launch(
            launch_id,
            state,
            finished_at,
            event=event_row(
                vm.owner_id,
                vm.uuid,
                "validate",
                event_at,
                launch_id=launch_id,
                outcome=outcome,
                detail=detail,
            ),
        )

    def _claim(self, vm: VmRecord, launch_id: str) -> LaunchRecord:
        now = self.service.clock()
        known = self.db.launch(launch_id)
        if known is None or known.vm_id != vm.id:
            raise NotFound("unknown launch", reasons=["unknown_launch"])
        claimed = self.db.claim_launch(launch_id, vm.id, now)
        if claimed is not None:
            return claimed
        current = self.db.launch(launch_id)
        state = current.state if current is not None else LaunchState.FAILED
        if state is LaunchState.PENDING:
            expired = Conflict("the launch session expired", reasons=["launch_expired"])
            self._end_launch(
                vm,
                launch_id,
                LaunchState.FAILED,
                now,
                event_at=now,
                outcome="refused",
                detail={"reason": "launch_expired"},
            )
            raise expired
        used = Conflict(f"the launch was already used ({state.value})", reasons=["launch_used"])
        self._refuse(vm, "validate", used, launch_id=launch_id)
        raise used

    def _candidates(
        self, vm: VmRecord, reg: Registration, req: ValidateRequest
    ) -> tuple[list[_Candidate], list[str]]:
        tried: list[str] = []
        out = [_Candidate(bytes.fromhex(d), f"launch-digest {d[:16]}") for d in reg.launch_digests]
        firmware = list(reg.firmware_hashes)
        if req.firmware_hash is not None:
            if req.firmware_hash not in firmware:
                tried.append(f"host firmware {req.firmware_hash[:16]} is not an accepted firmware")
                firmware = []
            else:
                firmware = [req.firmware_hash]
        if req.cpu_count is not None and req.cpu_count != reg.cpu_count:
            tried.append(f"host cpu-count {req.cpu_count} != registered {reg.cpu_count}")
            firmware = []
        vcpu_types = list(reg.vcpu_types)
        if reg.es and req.vcpu_type is not None:
            if req.vcpu_type not in vcpu_types:
                tried.append(f"host vcpu-type {req.vcpu_type} is not accepted")
                firmware = []
            vcpu_types = [req.vcpu_type]
        hashes = _kernel_hashes(reg)
        mode = SevMode.SEV_ES if reg.es else SevMode.SEV
        if reg.es:
            inputs = [
                LaunchInputs(mode, hashes, reg.cpu_count, t, VmsaFlavour(f))
                for t in vcpu_types
                for f in reg.vmsa_flavours
            ]
        else:
            inputs = [LaunchInputs(mode, hashes)]
        what = f"{mode.value}, kernel hashes {'on' if hashes else 'off'}" + (
            f", {reg.cpu_count} vCPU(s) of {'/'.join(vcpu_types)},"
            f" VMSA {'/'.join(reg.vmsa_flavours)}"
            if reg.es
            else ""
        )
        for fw in firmware:
            if mode is SevMode.SEV and hashes is None:
                out.append(_Candidate(bytes.fromhex(fw), f"firmware {fw[:16]} ({what})"))
                tried.append(f"firmware {fw[:16]} ({what})")
                continue
            missing = [i for i in inputs if self._digests.get((fw, i)) is None]
            if missing:
                data = self.db.firmware(vm.owner_id, fw)
                if data is None:
                    tried.append(f"firmware {fw[:16]} is not uploaded; cannot compute its digest")
                    continue
                try:
                    for key, value in launch_digests(data, missing).items():
                        self._digests.put((fw, key), value)
                except AttestdError as exc:
                    tried.append(f"firmware {fw[:16]}: {exc.message}")
                    continue
            for i in inputs:
                digest = self._digests.get((fw, i))
                if digest is not None:
                    out.append(_Candidate(digest, f"firmware {fw[:16]} ({what})"))
            tried.append(f"firmware {fw[:16]} ({what})")
        for d in reg.launch_digests:
            tried.append(f"precomputed launch-digest {d[:16]}")
        return out, tried

    def validate(self, uuid: str, req: ValidateRequest) -> ReleasedSecret:
        """Verify the launch measurement; release the secret table exactly once."""
        vm, reg = self._vm(uuid)
        launch = self._claim(vm, req.launch_id)
        now = self.service.clock()
        digest_label = ""
        try:
            # read again after the claim: a PUT that committed before it ends this launch
            current = self.db.vm(uuid)
            if current is None or current.id != vm.id or current.revision != launch.vm_revision:
                now_revision = "deleted" if current is None else current.revision
                raise PolicyViolation(
                    "the registration changed after the launch started",
                    reasons=[f"launch revision {launch.vm_revision}, now {now_revision}"],
                )
            vm, reg = current, Registration.from_public(json.loads(current.registration))
            if launch.keys_enc is None:
                raise Conflict("the launch has no session keys", reasons=["launch_used"])
            keys = TransportKeys.from_bytes(self.service.keyring.decrypt(launch.keys_enc))
            version = FirmwareVersion(req.api_major, req.api_minor, req.build_id)
            self._check_policy(reg, launch, req, version)
            candidates, tried = self._candidates(vm, reg, req)
            if not candidates:
                raise MeasurementMismatch("no accepted launch digest applies", reasons=tried)
            measurement = LaunchMeasurement.unpack(req.measurement)
            try:
                digest = verify_measurement(
                    keys.tik, measurement, version, launch.policy, [c.digest for c in candidates]
                )
            except MeasurementMismatch as exc:
                raise MeasurementMismatch(exc.message, reasons=[*tried, *exc.reasons]) from None
            digest_label = next(c.label for c in candidates if c.digest == digest)
            stored = self.service.stored_secrets(vm)
            table = secret_table(
                reg.user_id or vm.uuid, stored, max_size=self.settings.secret_area_size
            )
            packet = build_launch_secret(keys, measurement.measure, table, version=version)
        except Exception as exc:
            if isinstance(exc, AttestdError):
                detail = {"reason": exc.code, "message": exc.message, "tried": list(exc.reasons)}
            else:
                detail = {"reason": "internal_error"}
            self._end_launch(
                vm,
                launch.id,
                LaunchState.FAILED,
                self.service.clock(),
                event_at=now,
                outcome="refused",
                detail=detail,
            )
            logger.info("validate %s for VM %s refused: %s", launch.id, vm.uuid, detail["reason"])
            raise
        self._end_launch(
            vm,
            launch.id,
            LaunchState.VALIDATED,
            self.service.clock(),
            event_at=now,
            outcome="released",
            detail={
                "launch_digest": digest.hex(),
                "matched": digest_label,
                "firmware": str(version),
                "table_size": len(table),
            },
        )
        logger.info(
            "validate %s for VM %s: secret released (digest %s)", launch.id, vm.uuid, digest.hex()
        )
        return ReleasedSecret(header=packet.header, table=packet.ciphertext)

    @staticmethod
    def _check_policy(
        reg: Registration, launch: LaunchRecord, req: ValidateRequest, version: FirmwareVersion
    ) -> None:
        reasons: list[str] = []
        if req.policy != launch.policy:
            reasons.append(f"host policy {req.policy:#x} != launch policy {launch.policy:#x}")
        if launch.policy != reg.policy:
            reasons.append(f"launch policy {launch.policy:#x} != registered {reg.policy:#x}")
        policy = GuestPolicy.from_u32(launch.policy)
        api = (version.api_major, version.api_minor)
        if api < (policy.api_major, policy.api_minor):
            reasons.append(
                f"firmware API {api} below the policy's {policy.api_major}.{policy.api_minor}"
            )
        minimum = (reg.min_api_major or 0, reg.min_api_minor or 0)
        if (reg.min_api_major is not None or reg.min_api_minor is not None) and api < minimum:
            reasons.append(f"firmware API {api[0]}.{api[1]} below {minimum[0]}.{minimum[1]}")
        if reg.min_build_id is not None and version.build_id < reg.min_build_id:
            reasons.append(f"firmware build {version.build_id} below {reg.min_build_id}")
        if reasons:
            raise PolicyViolation("policy or firmware version not accepted", reasons=reasons)
