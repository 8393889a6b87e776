"""A private libvirtd (QEMU driver) for tests: its own mount namespace, own dirs, own socket.

``unshare -m`` gives libvirtd a private view in which ``/etc/libvirt``,
``/run/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt``,
``/var/log/libvirt`` and ``/etc/attestd`` are bind mounts of directories under
the test's tmp dir; nothing on the host changes (except creating empty mount
points). Hooks, the emulator wrapper and QEMU run inside that namespace too, so
they see the same paths as the daemon. qemu.conf gets the settings of
shared/reference/libvirt.md §8 that keep starts fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MOUNTS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
    "attestd": "/etc/attestd",
}
QEMU_CONF = """
user = "root"
group = "root"
stdio_handler = "file"
security_driver = "none"
"""


@dataclass
class Libvirtd:
    """A running private libvirtd."""

    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @property
    def hooks_dir(self) -> Path:
        return self.root / "etc" / "hooks" / "qemu.d"

    @contextmanager
    def without_hook(self) -> Iterator[None]:
        """The attestd hook removed (libvirt rescans qemu.d on every call): as if not installed."""
        hook = self.hooks_dir / "attestd"
        parked = self.root / "attestd-hook.parked"
        hook.rename(parked)
        try:
            yield
        finally:
            parked.rename(hook)

    def host_path(self, inside: str) -> Path:
        """Where a path seen inside the namespace lives on the host."""
        for name, mount in MOUNTS.items():
            if inside == mount or inside.startswith(mount + "/"):
                return self.root / name / inside[len(mount) + 1 :]
        return Path(inside)

    def virsh(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["virsh", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed: {result.stderr}")
        return result

    def restart(self) -> None:
        """Stop the daemon (domains keep running) and start a new one on the same dirs."""
        self.stop()
        self.proc = start_libvirtd(self.root).proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prepare_root(root: Path) -> None:
    """Create the private directories and a fast qemu.conf."""
    for name in MOUNTS:
        (root / name).mkdir(parents=True, exist_ok=True)
    etc = root / "etc"
    shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
    shutil.rmtree(etc / "qemu" / "networks" / "autostart", ignore_errors=True)
    shutil.rmtree(etc / "hooks", ignore_errors=True)
    (etc / "hooks" / "qemu.d").mkdir(parents=True)
    with (etc / "qemu.conf").open("a", encoding="utf-8") as conf:
        conf.write(QEMU_CONF)
    (root / "lib" / "qemu").mkdir(exist_ok=True)


def start_libvirtd(root: Path, *, path_env: str | None = None, timeout: float = 60) -> Libvirtd:
    """Start libvirtd in a private mount namespace; wait for its socket."""
    for mount in MOUNTS.values():
        os.makedirs(mount, exist_ok=True)
    binds = " && ".join(f"mount --bind {root / name} {mount}" for name, mount in MOUNTS.items())
    pidfile = root / "run" / "libvirtd.pid"  # /run/libvirtd.pid would clash with other daemons
    env = {"PATH": path_env or "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private",
         "sh", "-c", f"{binds} && exec /usr/sbin/libvirtd --pid-file {pidfile}"],
        env=env, stdin=subprocess.DEVNULL,
        stdout=open(root / "libvirtd.log", "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    sock = root / "run" / "libvirt-sock"
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("libvirtd did not start: " + (root / "libvirtd.log").read_text())
        time.sleep(0.05)
    return Libvirtd(root, proc)
