"""Expected launch digests: OVMF footer table, kernel hashes table, VMSA pages.

The public entry point is :func:`attestd.sev.measure.digest.launch_digest`.
"""

from __future__ import annotations

from attestd.sev.measure.digest import LaunchInputs, SevMode, launch_digest, launch_digests
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VmsaFlavour

__all__ = [
    "KernelHashes",
    "LaunchInputs",
    "Ovmf",
    "SevMode",
    "VmsaFlavour",
    "launch_digest",
    "launch_digests",
]
