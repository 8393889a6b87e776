"""``attestd digest``: the expected launch digest of a guest, computed offline.

SHA-256 for sev and seves, SHA-384 for snp.

Guest owners run it on their own machine (no service needed) and register the
printed digest. The last line of the output is the digest in hex.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from attestd.console import plain, read_bytes
from attestd.errors import ParseError
from attestd.sev.measure.digest import LaunchInputs, SevMode, launch_digests, parse_mode
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VCPU_TYPES, VmsaFlavour


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``digest`` sub-command."""
    parser = subparsers.add_parser(
        "digest",
        help="compute the expected SEV/SEV-ES launch digest",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode", required=True, choices=[m.value for m in SevMode], help="SEV generation"
    )
    parser.add_argument("--firmware", required=True, type=Path, help="OVMF image file")
    parser.add_argument("--kernel", type=Path, help="kernel for measured direct boot")
    parser.add_argument("--initrd", type=Path, help="initrd (requires --kernel)")
    parser.add_argument("--cmdline", help="kernel command line (requires --kernel)")
    parser.add_argument("--vcpus", type=int, default=1, help="number of vCPUs (seves)")
    parser.add_argument(
        "--vcpu-type",
        default="EPYC-v4",
        metavar="T",
        help=f"QEMU vCPU model (seves): {', '.join(VCPU_TYPES)}",
    )
    parser.add_argument(
        "--vmsa-flavour",
        choices=[f.value for f in VmsaFlavour],
        default=VmsaFlavour.CURRENT.value,
        help="VMSA as built by host kernels >= 6.10 (current) or older ones (legacy)",
    )
    parser.add_argument(
        "--guest-features",
        type=lambda text: int(text, 0),
        default=0x1,
        metavar="VALUE",
        help="SEV_FEATURES of the VMSA (snp only; QEMU's default is 0x1)",
    )
    parser.set_defaults(func=run)


def _read(path: Path, what: str) -> bytes | None:
    try:
        return read_bytes(path, what)
    except ParseError as exc:
        print(f"attestd: error: {exc.message}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Compute and print the digest; 0 on success, 1 on attestd errors, 2 on usage errors."""
    mode = parse_mode(args.mode)
    if args.kernel is None and (args.initrd is not None or args.cmdline is not None):
        print("attestd: error: --initrd and --cmdline require --kernel", file=sys.stderr)
        return 2
    firmware = _read(args.firmware, "firmware")
    if firmware is None:
        return 2
    hashes: KernelHashes | None = None
    if args.kernel is not None:
        kernel = _read(args.kernel, "kernel")
        initrd = None if args.initrd is None else _read(args.initrd, "initrd")
        if kernel is None or (args.initrd is not None and initrd is None):
            return 2
        hashes = KernelHashes.from_content(kernel, initrd, args.cmdline)
    flavour = VmsaFlavour(args.vmsa_flavour)
    ovmf = Ovmf.from_bytes(firmware)
    inputs = LaunchInputs(
        mode, hashes, args.vcpus, args.vcpu_type, flavour, guest_features=args.guest_features
    )
    digest = launch_digests(ovmf, [inputs])[inputs]
    print(f"mode: {mode.value}")
    print(f"firmware: {args.firmware} ({len(firmware)} bytes)")
    if hashes is not None:
        print(f"kernel sha256: {hashes.kernel.hex()}")
        print(f"initrd sha256: {hashes.initrd.hex()}")
        print(f"cmdline sha256: {hashes.cmdline.hex()}")
    if mode is not SevMode.SEV:
        print(f"vcpus: {args.vcpus} x {args.vcpu_type}, VMSA flavour {flavour.value}")
    if mode is SevMode.SEV_SNP:
        print(f"guest features: {args.guest_features:#x}")
    print(digest.hex())
    return 0
