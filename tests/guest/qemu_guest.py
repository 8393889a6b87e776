"""The guest end-to-end test's QEMU runner: the small guest of ``tools/guestimage.py``
(Debian's kernel, busybox initramfs, host ``/usr`` and the work dir over 9p) under
plain QEMU (TCG)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.guestimage import Kernel, build_initramfs, ensure_kernel

__all__ = ["BOOT_TIMEOUT", "Disk", "Kernel", "boot", "build_initramfs", "ensure_kernel"]
BOOT_TIMEOUT = 240.0


@dataclass(frozen=True)
class Disk:
    """A raw disk file and its virtio serial."""

    path: Path
    serial: str


def boot(kernel: Kernel, initrd: Path, disks: Sequence[Disk], work: Path) -> str:
    """Boot the guest once (it runs ``work/step.sh`` and powers off); return the serial log."""
    serial_log = work / "serial.log"
    argv = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "768",
        "-smp", "2", "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
        "-serial", f"file:{serial_log}",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]  # fmt: skip
    for i, disk in enumerate(disks):
        argv += [
            "-drive", f"file={disk.path},format=raw,if=none,id=d{i},cache=unsafe",
            "-device", f"virtio-blk-pci,drive=d{i},serial={disk.serial}",
        ]  # fmt: skip
    shares = (("hostusr", Path("/usr"), True), ("work", work, False))
    for i, (tag, path, readonly) in enumerate(shares):
        ro = ",readonly=on" if readonly else ""
        argv += [
            "-fsdev", f"local,id=fs{i},path={path},security_model=none{ro}",
            "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={tag}",
        ]  # fmt: skip
    subprocess.run(argv, check=True, timeout=BOOT_TIMEOUT, capture_output=True)
    return serial_log.read_text(errors="replace")
