"""The decision to release a secret to an SEV / SEV-ES launch, and what it checks.

Pure: no I/O, no clock, no storage. The launch use-case
(:mod:`attestd.service.launches`) calls, in this order:

1. :func:`candidates`: the launch digests the owner accepts for this launch. The
   host's ``firmware-hash``, ``cpu-count`` and ``vcpu-type`` only *select* among the
   owner's registered inputs; the digests are computed by the service itself
   (``digest_of``, injected) or were registered precomputed.
2. ``verify_launch`` (``attestd.sev.secrets``): the firmware's HMAC under
   the TIK, which the host never sees, proves one candidate digest together with the
   launch policy and (firmware API >= 0.17) the API version and build.
3. :func:`decide`: every remaining reason to refuse, checked only on values the
   HMAC has just authenticated: the host's policy equals the launch's, the launch's
   policy equals the registered one, the firmware API is not below the policy's nor
   the owner's minimum, the build not below the owner's minimum.

Only if :func:`decide` returns no reason is the secret released. On firmware
API < 0.17 the version and build are not inside the HMAC (the host's claim): a
registration that sets a minimum API or build refuses such firmware; one that sets
none accepts it, and its version is then recorded as claimed; see docs/threat-model.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attestd.errors import AttestdError
from attestd.service.registration import Registration
from attestd.service.snp_registration import SnpRegistration
from attestd.sev.measure.digest import LaunchInputs, SevMode
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VmsaFlavour
from attestd.sev.policy import GuestPolicy
from attestd.sev.session import FirmwareVersion

#: The first firmware API whose measurement HMAC covers API version and build.
HMAC_COVERS_VERSION = (0, 17)

#: ``digest_of(firmware_sha256, inputs)``: the launch digest of each input for that
#: firmware (raises an ``AttestdError`` when it cannot, e.g. firmware not uploaded).
DigestSource = Callable[[str, Sequence[LaunchInputs]], dict[LaunchInputs, bytes]]


@dataclass(frozen=True, slots=True)
class HostClaims:
    """What the host reports at ``/validate`` (untrusted until the HMAC verified)."""

    api_major: int
    api_minor: int
    build_id: int
    policy: int
    firmware_hash: str | None = None
    cpu_count: int | None = None
    vcpu_type: str | None = None

    @property
    def version(self) -> FirmwareVersion:
        """The claimed firmware version."""
        return FirmwareVersion(self.api_major, self.api_minor, self.build_id)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One accepted launch digest and where it came from (for the audit event)."""

    digest: bytes
    label: str


def kernel_hashes(reg: Registration | SnpRegistration) -> KernelHashes | None:
    """The registered kernel/initrd/cmdline hashes of an SEV or SEV-SNP registration
    (None: kernel hashes off)."""
    if reg.kernel_hash is None:
        return None
    empty = KernelHashes.from_content(b"", None, None)
    return KernelHashes(
        kernel=bytes.fromhex(reg.kernel_hash),
        initrd=bytes.fromhex(reg.initrd_hash) if reg.initrd_hash else empty.initrd,
        cmdline=bytes.fromhex(reg.cmdline_hash) if reg.cmdline_hash else empty.cmdline,
    )


def candidates(
    reg: Registration, claims: HostClaims, digest_of: DigestSource
) -> tuple[list[Candidate], list[str]]:
    """The accepted launch digests for this launch, and what was tried (for reasons)."""
    tried: list[str] = []
    out = [Candidate(bytes.fromhex(d), f"launch-digest {d[:16]}") for d in reg.launch_digests]
    firmware = list(reg.firmware_hashes)
    if claims.firmware_hash is not None:
        if claims.firmware_hash not in firmware:
            tried.append(f"host firmware {claims.firmware_hash[:16]} is not an accepted firmware")
            firmware = []
        else:
            firmware = [claims.firmware_hash]
    if claims.cpu_count is not None and claims.cpu_count != reg.cpu_count:
        tried.append(f"host cpu-count {claims.cpu_count} != registered {reg.cpu_count}")
        firmware = []
    vcpu_types = list(reg.vcpu_types)
    if reg.es and claims.vcpu_type is not None:
        if claims.vcpu_type not in vcpu_types:
            tried.append(f"host vcpu-type {claims.vcpu_type} is not accepted")
            firmware = []
        vcpu_types = [claims.vcpu_type]
    hashes = kernel_hashes(reg)
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
        f", {reg.cpu_count} vCPU(s) of {'/'.join(vcpu_types)}, VMSA {'/'.join(reg.vmsa_flavours)}"
        if reg.es
        else ""
    )
    for fw in firmware:
        if mode is SevMode.SEV and hashes is None:
            # plain SEV without kernel hashes: the launch digest is the firmware's SHA-256
            out.append(Candidate(bytes.fromhex(fw), f"firmware {fw[:16]} ({what})"))
            tried.append(f"firmware {fw[:16]} ({what})")
            continue
        try:
            digests = digest_of(fw, inputs)
        except AttestdError as exc:
            tried.append(f"firmware {fw[:16]}: {exc.message}")
            continue
        out.extend(
            Candidate(digests[i], f"firmware {fw[:16]} ({what})") for i in inputs if i in digests
        )
        tried.append(f"firmware {fw[:16]} ({what})")
    tried.extend(f"precomputed launch-digest {d[:16]}" for d in reg.launch_digests)
    return out, tried


def decide(
    reg: Registration, launch_policy: int, claims: HostClaims, version: FirmwareVersion
) -> list[str]:
    """Every reason to refuse a launch whose measurement HMAC verified (empty: release).

    ``version`` must be the version the HMAC was verified with.
    """
    reasons: list[str] = []
    if claims.policy != launch_policy:
        reasons.append(f"host policy {claims.policy:#x} != launch policy {launch_policy:#x}")
    if launch_policy != reg.policy:
        reasons.append(f"launch policy {launch_policy:#x} != registered {reg.policy:#x}")
    policy = GuestPolicy.from_u32(launch_policy)
    api = (version.api_major, version.api_minor)
    if api < (policy.api_major, policy.api_minor):
        reasons.append(
            f"firmware API {api} below the policy's {policy.api_major}.{policy.api_minor}"
        )
    minimum = (reg.min_api_major or 0, reg.min_api_minor or 0)
    has_minimum = reg.min_api_major is not None or reg.min_api_minor is not None
    if (has_minimum or reg.min_build_id is not None) and api < HMAC_COVERS_VERSION:
        # below 0.17 the version and build are the host's unauthenticated claim: a
        # minimum could not be enforced, so a registration that sets one refuses
        reasons.append(
            f"firmware API {api[0]}.{api[1]} does not authenticate its version and build "
            f"(needs {HMAC_COVERS_VERSION[0]}.{HMAC_COVERS_VERSION[1]}); the registration "
            "sets minimum versions"
        )
    if has_minimum and api < minimum:
        reasons.append(f"firmware API {api[0]}.{api[1]} below {minimum[0]}.{minimum[1]}")
    if reg.min_build_id is not None and version.build_id < reg.min_build_id:
        reasons.append(f"firmware build {version.build_id} below {reg.min_build_id}")
    return reasons
