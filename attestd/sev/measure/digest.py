"""The launch digest a guest owner expects (sev-protocol.md §6.3).

The launch digest is SHA-256 over everything QEMU passes to LAUNCH_UPDATE_DATA
and LAUNCH_UPDATE_VMSA, in order:

* ``sev``:   firmware image || padded kernel hashes table (direct boot only)
* ``seves``: the same || VMSA(BSP) || VMSA(AP) * (vcpus - 1)

* ``snp``:   a SHA-384 page chain over firmware, metadata pages and VMSAs
  (48 bytes, see :mod:`attestd.sev.measure.snp`)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from attestd.errors import ParseError, Unsupported
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.snp import snp_launch_digest
from attestd.sev.measure.vmsa import VmsaFlavour, vcpu_signature, vmsa_pages

#: KVM_MAX_VCPUS on current x86 kernels.
MAX_VCPUS = 4096

DIGEST_SIZE = 32


class SevMode(StrEnum):
    """Which SEV flavour the guest is launched with."""

    SEV = "sev"
    SEV_ES = "seves"
    SEV_SNP = "snp"


def parse_mode(mode: str) -> SevMode:
    """Map ``"sev"`` / ``"seves"`` / ``"snp"`` to :class:`SevMode` (``ParseError`` otherwise)."""
    try:
        return SevMode(mode)
    except ValueError:
        raise ParseError(f"unknown SEV mode {mode!r} (expected sev, seves or snp)") from None


@dataclass(frozen=True, slots=True)
class LaunchInputs:
    """One combination of launch parameters that determines a launch digest.

    ``hashes`` is given for a direct kernel boot (``-kernel``, ``kernel-hashes=on``).
    ``vcpus``, ``vcpu_type`` (or an explicit CPUID ``vcpu_sig``) and ``flavour`` only
    matter for ``seves`` and ``snp``; ``guest_features`` (the VMSA SEV_FEATURES,
    QEMU's default 0x1) only for ``snp``.
    """

    mode: SevMode
    hashes: KernelHashes | None = None
    vcpus: int = 1
    vcpu_type: str = "EPYC-v4"
    flavour: VmsaFlavour = VmsaFlavour.CURRENT
    vcpu_sig: int | None = None
    guest_features: int = 0x1


def launch_digest(
    mode: str,
    firmware: bytes,
    *,
    hashes: KernelHashes | None = None,
    vcpus: int = 1,
    vcpu_type: str = "EPYC-v4",
    flavour: VmsaFlavour = VmsaFlavour.CURRENT,
    vcpu_sig: int | None = None,
    guest_features: int = 0x1,
) -> bytes:
    """The launch digest for a QEMU + OVMF guest (see :class:`LaunchInputs`).

    32 bytes (SHA-256) for ``sev`` and ``seves``, 48 bytes (SHA-384) for ``snp``.

    Raises ``Unsupported`` if ``hashes`` are given but the firmware has no kernel
    hashes area, or for ``seves`` on firmware without an SEV-ES reset block.
    """
    inputs = LaunchInputs(
        parse_mode(mode), hashes, vcpus, vcpu_type, flavour, vcpu_sig, guest_features
    )
    return launch_digests(firmware, [inputs])[inputs]


def launch_digests(
    firmware: bytes | Ovmf, candidates: Iterable[LaunchInputs]
) -> dict[LaunchInputs, bytes]:
    """Launch digests of several input combinations for one firmware image.

    The image is parsed and hashed once; use this to compute the candidates a
    measurement is checked against (e.g. both VMSA flavours).
    """
    ovmf = firmware if isinstance(firmware, Ovmf) else Ovmf.from_bytes(firmware)
    image_hash = hashlib.sha256(ovmf.data)
    return {inputs: _finish(image_hash.copy(), ovmf, inputs) for inputs in candidates}


def _vcpu_sig(inputs: LaunchInputs) -> int:
    if not 1 <= inputs.vcpus <= MAX_VCPUS:
        raise ParseError(f"vcpus must be between 1 and {MAX_VCPUS}, got {inputs.vcpus}")
    return vcpu_signature(inputs.vcpu_type) if inputs.vcpu_sig is None else inputs.vcpu_sig


def _finish(digest: hashlib._Hash, ovmf: Ovmf, inputs: LaunchInputs) -> bytes:
    if inputs.mode is SevMode.SEV_SNP:
        return snp_launch_digest(
            ovmf,
            hashes=inputs.hashes,
            vcpus=inputs.vcpus,
            vcpu_sig=_vcpu_sig(inputs),
            guest_features=inputs.guest_features,
            flavour=inputs.flavour,
        )
    if inputs.hashes is not None:
        if not ovmf.supports_kernel_hashes:
            raise Unsupported(
                "this firmware does not support measured direct boot: its kernel hashes "
                "area is missing or at address 0; boot without --kernel or use an "
                "OVMF AmdSev build"
            )
        digest.update(inputs.hashes.table())
    if inputs.mode is SevMode.SEV_ES:
        sig = _vcpu_sig(inputs)
        ap_eip = ovmf.sev_es_reset_eip
        if ap_eip is None:
            raise Unsupported("this firmware has no SEV-ES reset block; it cannot boot SEV-ES")
        for page in vmsa_pages(inputs.vcpus, ap_eip, sig, inputs.flavour):
            digest.update(page)
    return digest.digest()
