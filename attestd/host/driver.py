"""The one launch driver shared by the hook, the emulator wrapper and the host agent.

``begin_launch`` (hook, ``start begin``): cached platform data (``attestd-host
refresh-platform``, also for the simulator) → ``POST /launch`` → the
per-launch GODH cert and session go into the files libvirt created for QEMU (or,
simulated, into the launch state) → launch state for the next step.

``complete_launch`` (wrapper before the first ``cont``, or agent on a paused
domain): measurement → ``POST /validate`` → inject → run. Fail-closed: on any
error the backend's ``abort`` runs and the guest's CPUs never start.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attestd.errors import AttestdError, LaunchError
from attestd.host.client import LaunchReport, LaunchSecret, LaunchSession, ServiceClient
from attestd.host.config import HostSettings
from attestd.host.domain import WRAPPER_NAME, DomainInfo
from attestd.host.platform import read_cache
from attestd.host.state import (
    MARKER_ENV,
    PATH_AGENT,
    PATH_WRAPPER,
    LaunchState,
    write_state,
)

logger = logging.getLogger(__name__)

ClientFactory = Callable[[str], ServiceClient]


@dataclass(frozen=True, slots=True)
class PlatformReport:
    """What the platform (QEMU, libvirt or the simulator) says about the launch."""

    measurement: bytes
    api_major: int
    api_minor: int
    build_id: int
    policy: int


class LaunchBackend(Protocol):
    """Where measurement comes from and where the secret goes."""

    def measure(self) -> PlatformReport:
        """Read the launch measurement and firmware version."""
        ...

    def inject(self, packet: LaunchSecret) -> None:
        """Hand the secret packet to the firmware (LAUNCH_SECRET)."""
        ...

    def resume(self) -> None:
        """Let the guest's CPUs run."""
        ...

    def abort(self, reason: str) -> None:
        """Make sure the CPUs never run (fail closed)."""
        ...


def launch_log(domain: str, launch_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry the domain and the launch id."""
    return logging.LoggerAdapter(logger, {"domain": domain, "launch_id": launch_id})


def _tag(domain: str, launch_id: str) -> str:
    return f"domain={domain} launch={launch_id}"


def sev_file_dir(settings: HostSettings, domain: DomainInfo) -> Path:
    """libvirt's per-domain ``libDir`` where ``dh_cert.base64``/``session.base64`` live."""
    return settings.libvirt_lib_dir / f"domain-{domain.short_name}"


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Replace a file's content keeping its inode, owner, mode and LSM label."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def firmware_file(domain: DomainInfo) -> Path | None:
    """The firmware that is (or, simulated, stands for what is) measured."""
    meta = domain.metadata
    if meta is not None and meta.firmware is not None:
        return meta.firmware
    return domain.loader


def _install_session(settings: HostSettings, domain: DomainInfo, session: LaunchSession) -> None:
    sev = domain.sev
    if sev is None or not (sev.has_dh_cert and sev.has_session):
        raise LaunchError(
            "domain lacks <dhCert>/<session> placeholders: run 'attestd-host prepare-domain'"
        )
    if sev.policy != session.policy:
        raise LaunchError(
            f"domain policy {sev.policy:#06x} differs from the registered policy "
            f"{session.policy:#06x}: fix <launchSecurity><policy>"
        )
    directory = sev_file_dir(settings, domain)
    for name, blob in (("dh_cert", session.godh_cert), ("session", session.session)):
        path = directory / f"{name}.base64"
        try:
            rewrite_in_place(path, base64.b64encode(blob))
        except OSError as exc:
            raise LaunchError(f"cannot rewrite {path}: {exc.strerror}") from exc


def begin_launch(
    settings: HostSettings, domain: DomainInfo, client_factory: ClientFactory
) -> LaunchState:
    """``start begin``: get a fresh session and put it where QEMU will read it."""
    meta = domain.metadata
    if meta is None:
        raise LaunchError(f"domain {domain.name} has no attestd metadata")
    if domain.id is None:
        raise LaunchError(f"domain {domain.name} has no id: not a live definition")
    if domain.uses_wrapper and domain.marker != str(meta.vm_id):
        raise LaunchError(
            f"domain {domain.name} uses {WRAPPER_NAME} without the matching "
            f"<qemu:env name='{MARKER_ENV}'> marker: run 'attestd-host prepare-domain'"
        )
    firmware = firmware_file(domain)
    if meta.simulate and (firmware is None or not firmware.is_file()):
        raise LaunchError(
            "simulated SEV needs the firmware to measure: <os><loader> or attestd firmware="
        )
    platform = read_cache(settings.platform_cache)
    client = client_factory(meta.service)
    session = client.launch(meta.vm_id, platform)
    log = launch_log(domain.name, session.launch_id)
    log.info(
        "%s: session from %s (policy %#x)",
        _tag(domain.name, session.launch_id),
        meta.service,
        session.policy,
    )
    if not meta.simulate:
        _install_session(settings, domain, session)
    state = LaunchState(
        domain=domain.name,
        domain_uuid=str(domain.uuid),
        domain_id=domain.id,
        vm_id=str(meta.vm_id),
        service=meta.service,
        launch_id=session.launch_id,
        policy=session.policy,
        path=PATH_WRAPPER if domain.uses_wrapper else PATH_AGENT,
        simulate=meta.simulate,
        firmware=str(firmware) if firmware is not None else None,
        sim_state=str(meta.sim_state or settings.sim_state_dir) if meta.simulate else None,
        cpu_count=domain.vcpus,
        vcpu_type=meta.vcpu_type or domain.cpu_model,
        godh_cert=base64.b64encode(session.godh_cert).decode() if meta.simulate else None,
        session=base64.b64encode(session.session).decode() if meta.simulate else None,
        sim_secret_socket=domain.sim_secret_socket if meta.simulate else None,
    )
    write_state(settings.state_dir, state)
    return state


def _firmware_hash(state: LaunchState) -> str | None:
    if state.firmware is None:
        return None
    try:
        return hashlib.sha256(Path(state.firmware).read_bytes()).hexdigest()
    except OSError as exc:
        raise LaunchError(f"cannot read firmware {state.firmware}: {exc.strerror}") from exc


def complete_launch(state: LaunchState, backend: LaunchBackend, client: ServiceClient) -> None:
    """Measurement → validate → inject → resume; on any failure abort and raise LaunchError."""
    tag = _tag(state.domain, state.launch_id)
    log = launch_log(state.domain, state.launch_id)
    try:
        report = backend.measure()
        log.info(
            "%s: measurement %s (api %d.%d build %d policy %#x)",
            tag,
            report.measurement.hex(),
            report.api_major,
            report.api_minor,
            report.build_id,
            report.policy,
        )
        packet = client.validate(
            state.vm_uuid,
            state.launch_id,
            LaunchReport(
                measurement=report.measurement,
                api_major=report.api_major,
                api_minor=report.api_minor,
                build_id=report.build_id,
                policy=report.policy,
                firmware_hash=_firmware_hash(state),
                cpu_count=state.cpu_count,
                vcpu_type=state.vcpu_type,
            ),
        )
        backend.inject(packet)
        log.info("%s: secret injected", tag)
    except Exception as exc:
        reason = exc.message if isinstance(exc, AttestdError) else f"{type(exc).__name__}: {exc}"
        log.error("%s: launch refused: %s", tag, reason)
        try:
            backend.abort(reason)
        except Exception:
            log.exception("%s: abort failed", tag)
        raise LaunchError(f"attestd: launch of {state.domain} refused: {reason}") from exc
    backend.resume()
    log.info("%s: guest running", tag)
