"""Simulated SEV-SNP on the host: the hook runs the VM's simulated PSP, as libvirt runs swtpm.

A simulated-SNP domain (``prepare-domain --scheme amd-sev-snp --simulate``) has no
``<launchSecurity>`` (QEMU TCG cannot run an ``sev-snp-guest``); its guest asks for
reports through the virtio-serial port ``org.attestd.snp-psp``, whose unix socket the
PSP listens on and QEMU connects to. At ``start begin`` (before QEMU runs) the hook
starts ``attestd-sim snp serve`` for the domain with what the domain XML libvirt
passes says the VM is *really* started with: the firmware (the ``firmware`` of
``<attestd:snp>``, else ``<os><loader>``), ``<os><kernel>``, ``<initrd>``,
``<cmdline>``, ``<vcpu>``, and the policy and HOST_DATA of ``<attestd:snp>``. The owner's
registration plays no part: a VM started with another command line gets reports with
another measurement. At ``release end`` the hook stops it. The PSP's log is
``<state_dir>/<uuid>.psp.log``.

This is simulation only: the host holds the "PSP" signing key. Real SNP domains are
passed through untouched.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from uuid import UUID

from attestd.errors import LaunchError
from attestd.host.config import HostSettings
from attestd.host.domain import DomainInfo

#: How long the hook waits for the PSP to listen (it measures the launch files first).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
DEFAULT_VCPU_TYPE = "EPYC-v4"


def psp_socket(settings: HostSettings, uuid: UUID) -> Path:
    """Where a simulated-SNP domain's PSP listens (``prepare-domain`` writes it in the XML)."""
    return settings.state_dir / f"{uuid}.psp"


def _pid_file(settings: HostSettings, uuid: UUID) -> Path:
    return settings.state_dir / f"{uuid}.psp.pid"


def _log_file(settings: HostSettings, uuid: UUID) -> Path:
    return settings.state_dir / f"{uuid}.psp.log"


def serve_argv(settings: HostSettings, domain: DomainInfo) -> list[str]:
    """``attestd-sim snp serve`` for ``domain``, from its XML alone."""
    sim = domain.sim_snp
    if sim is None:
        raise LaunchError(f"domain {domain.name} is not a simulated-SNP domain")
    if domain.snp_psp_socket is None:
        raise LaunchError(
            f"domain {domain.name} has no simulated PSP channel (run prepare-domain again)"
        )
    firmware = sim.firmware or domain.loader
    if firmware is None:
        raise LaunchError(f"domain {domain.name}: no firmware to measure (<loader> or firmware=)")
    argv = [
        sys.executable, "-m", "attestd.sim.cli", "snp", "serve",
        "--dir", str(sim.sim_state or settings.sim_state_dir),
        "--socket", domain.snp_psp_socket,
        "--pid-file", str(_pid_file(settings, domain.uuid)),
        "--firmware", str(firmware),
        "--vcpus", str(domain.vcpus),
        "--vcpu-type", sim.vcpu_type or DEFAULT_VCPU_TYPE,
        "--policy", f"0x{sim.policy:x}",
        "--host-data", sim.host_data.hex(),
    ]  # fmt: skip
    if domain.kernel is not None:
        argv += ["--kernel", str(domain.kernel)]
        if domain.initrd is not None:
            argv += ["--initrd", str(domain.initrd)]
        if domain.cmdline is not None:
            argv += ["--cmdline", domain.cmdline]
    return argv


def start_psp(settings: HostSettings, domain: DomainInfo) -> int:
    """Start the domain's simulated PSP, detached; return its pid once it listens."""
    stop_psp(settings, domain.uuid)  # a PSP left from a launch libvirt never released
    argv = serve_argv(settings, domain)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(settings, domain.uuid)
    log = _log_file(settings, domain.uuid)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,  # outlives the hook, which libvirt waits for
        )
    finally:
        os.close(out)
    deadline = time.monotonic() + START_TIMEOUT
    while not pid_file.exists():
        if not _alive(pid):
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise LaunchError(f"the simulated PSP did not start: {tail[-1] if tail else pid}")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise LaunchError(f"the simulated PSP did not listen within {START_TIMEOUT:.0f} s")
        time.sleep(0.05)
    return pid


def stop_psp(settings: HostSettings, uuid: UUID) -> bool:
    """Stop the domain's simulated PSP if one runs; True when there was one."""
    pid_file = _pid_file(settings, uuid)
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return False
    if not _is_psp(pid, pid_file):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def _is_psp(pid: int, pid_file: Path) -> bool:
    """The pid still names the PSP that wrote ``pid_file`` (pids are reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and str(pid_file).encode() in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # our own child (tests start it in-process): reap it
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False
