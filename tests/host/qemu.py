"""Helpers: run a tiny real QEMU (TCG, paused, no disks) with a QMP unix socket."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QEMU = "/usr/bin/qemu-system-x86_64"
QBOOT = "/usr/share/qemu/qboot.rom"


@contextmanager
def paused_qemu(directory: Path) -> Iterator[str]:
    """Start ``qemu -S`` with its QMP server on ``<directory>/qmp.sock``; yield the path."""
    path = directory / "qmp.sock"
    proc = subprocess.Popen(
        [
            QEMU, "-S", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "pc,accel=tcg", "-m", "32", "-bios", QBOOT,
            "-qmp", f"unix:{path},server=on,wait=off",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"QEMU did not start: {proc.stderr.read() if proc.stderr else ''}"
                )
            time.sleep(0.02)
        yield str(path)
    finally:
        proc.kill()
        proc.wait()
