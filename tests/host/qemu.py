"""Helpers: run a tiny real QEMU (TCG, paused, no disks) with a QMP monitor socket."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

QEMU = "/usr/bin/qemu-system-x86_64"
QBOOT = "/usr/share/qemu/qboot.rom"


@contextmanager
def paused_qemu(directory: Path) -> Iterator[str]:
    """Start ``qemu -S`` with its QMP monitor on ``<directory>/qmp.sock``; yield the path.

    As libvirt (and the wrapper) do, the listening socket is made here and passed
    to QEMU as an fd, so it accepts connections from the start.
    """
    path = directory / "qmp.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    fd = listener.fileno()
    proc = subprocess.Popen(
        [
            QEMU, "-S", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "pc,accel=tcg", "-m", "32", "-bios", QBOOT,
            "-chardev", f"socket,id=mon,fd={fd},server=on,wait=off",
            "-mon", "chardev=mon,mode=control",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(fd,),
    )  # fmt: skip
    listener.close()
    try:
        yield str(path)
    finally:
        proc.kill()
        proc.wait()
