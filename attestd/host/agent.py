"""The host agent on libvirt's public API (libvirt-python): the paused-start path.

For attestd domains that do not use the emulator wrapper, a start is
``virsh start --paused`` (or ``attestd-host start DOMAIN``, or the agent's own
autostart). The agent then does ``launchSecurityInfo()`` → ``/validate`` →
``setLaunchSecurityState()`` → ``resume()`` and destroys the domain on any
failure. In simulated SEV mode the simulator measures and takes the secret.

The hook (``start begin``) has already called ``/launch`` and left the launch
state; one launch is attested once (a lock file and a done marker per domain).
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attestd.errors import LaunchError
from attestd.host.client import LaunchSecret, ServiceClient
from attestd.host.config import HostSettings
from attestd.host.domain import parse_domain
from attestd.host.driver import PlatformReport, complete_launch
from attestd.host.sim import SIM_RESULT_SUFFIX, SimulatedLaunch
from attestd.host.state import PATH_AGENT, done_marker, read_state

logger = logging.getLogger(__name__)


def _libvirt() -> Any:
    import libvirt

    return libvirt


class LibvirtBackend:
    """Measurement and injection through libvirt's launch-security API."""

    def __init__(self, dom: Any) -> None:
        self.dom = dom

    def measure(self) -> PlatformReport:
        """``virDomainGetLaunchSecurityInfo``."""
        info = self.dom.launchSecurityInfo()
        try:
            return PlatformReport(
                measurement=base64.b64decode(info["sev-measurement"]),
                api_major=int(info["sev-api-major"]),
                api_minor=int(info["sev-api-minor"]),
                build_id=int(info["sev-build-id"]),
                policy=int(info["sev-policy"]),
            )
        except (KeyError, ValueError) as exc:
            raise LaunchError(f"launchSecurityInfo() incomplete: {exc}") from exc

    def inject(self, packet: LaunchSecret) -> None:
        """``virDomainSetLaunchSecurityState``."""
        lv = _libvirt()
        self.dom.setLaunchSecurityState(
            {
                lv.VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET_HEADER: base64.b64encode(
                    packet.header
                ).decode(),
                lv.VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET: base64.b64encode(packet.secret).decode(),
            },
            0,
        )

    def resume(self) -> None:
        """``virDomainResume``."""
        self.dom.resume()

    def abort(self, reason: str) -> None:
        """``virDomainDestroy``: the CPUs never ran."""
        del reason
        self.dom.destroy()


class SimLibvirtBackend(LibvirtBackend):
    """Simulated SEV: the simulator measures the firmware and takes the secret."""

    def __init__(self, dom: Any, launch: SimulatedLaunch) -> None:
        super().__init__(dom)
        self.launch = launch

    def measure(self) -> PlatformReport:
        """Check the domain is paused, then let the simulator measure."""
        if self.dom.state()[0] != _libvirt().VIR_DOMAIN_PAUSED:
            raise LaunchError("domain is not paused")
        return self.launch.measure()

    def inject(self, packet: LaunchSecret) -> None:
        """LAUNCH_SECRET in the simulator."""
        self.launch.inject(packet)

    def resume(self) -> None:
        """LAUNCH_FINISH in the simulator, then ``virDomainResume``."""
        self.launch.finish()
        self.dom.resume()


@contextmanager
def _domain_lock(settings: HostSettings, uuid: str) -> Iterator[bool]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / f"{uuid}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _done_marker(settings: HostSettings, uuid: str) -> Path:
    return done_marker(settings.state_dir, uuid)


def attest_domain(settings: HostSettings, dom: Any) -> bool:
    """Attest a paused agent-path domain once; True when this call resumed it.

    Raises LaunchError (after destroying the domain) when attestation fails.
    """
    uuid = dom.UUIDString()
    with _domain_lock(settings, uuid) as locked:
        if not locked:
            return False
        state = read_state(settings.state_dir, uuid)
        if state is None:
            meta = parse_domain(dom.XMLDesc(0)).metadata
            if meta is None:
                return False
            dom.destroy()
            raise LaunchError(
                f"{dom.name()}: no launch state; is the attestd hook installed? (domain destroyed)"
            )
        if state.path != PATH_AGENT:
            return False
        marker = _done_marker(settings, uuid)
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == state.launch_id:
            return False
        backend: LibvirtBackend
        if state.simulate:
            result = settings.state_dir / f"{uuid}{SIM_RESULT_SUFFIX}"
            backend = SimLibvirtBackend(dom, SimulatedLaunch(state, result))
        else:
            backend = LibvirtBackend(dom)
        marker.write_text(state.launch_id + "\n", encoding="utf-8")
        complete_launch(state, backend, ServiceClient(state.service, settings))
        return True


def start_domain(settings: HostSettings, conn: Any, name: str) -> None:
    """``attestd-host start DOMAIN``: start an attestd domain and return once it runs attested.

    A wrapped domain (``attestd-qemu``) is started normally: the hook and the wrapper
    validate and inject before its first ``cont``, so the start returns only after that
    (or fails with the service's reason). An agent-path domain is started paused, then
    attested and resumed here (destroyed on failure). LaunchError unless it ends running.
    """
    lv = _libvirt()
    dom = conn.lookupByName(name)
    info = parse_domain(dom.XMLDesc(0))
    if info.metadata is None:
        raise LaunchError(
            f"{name} is not an attestd domain: run 'attestd-host prepare-domain' first"
        )
    if info.uses_wrapper:
        dom.create()
    else:
        dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED)
        if not attest_domain(settings, dom):
            raise LaunchError(
                f"{name} was started paused but not attested by this command (no agent-path "
                "launch state, or another attestd-host is attesting it); it is still paused"
            )
    status = dom.state()[0]
    if status != lv.VIR_DOMAIN_RUNNING:
        raise LaunchError(f"{name} is not running after its start (libvirt state {status})")


class Agent:
    """The ``attestd-host run`` daemon: lifecycle events → attestation worker."""

    def __init__(self, settings: HostSettings, uri: str | None = None) -> None:
        self.settings = settings
        self.uri = uri or settings.libvirt_uri
        #: (domain UUID, whether the event was its start)
        self.work: queue.Queue[tuple[str, bool] | None] = queue.Queue()
        self.stopping = threading.Event()
        self.conn: Any = None

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        del conn, opaque
        lv = _libvirt()
        if (
            event == lv.VIR_DOMAIN_EVENT_SUSPENDED
            and detail == lv.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED
        ):
            self.work.put((dom.UUIDString(), False))
        elif event == lv.VIR_DOMAIN_EVENT_STARTED:
            self.work.put((dom.UUIDString(), True))

    def _unhooked_start(self, dom: Any) -> None:
        """A fresh start with no launch state: destroy it if it is an attestd domain."""
        if not dom.isActive() or parse_domain(dom.XMLDesc(0)).metadata is None:
            return
        logger.error(
            "domain=%s: attestd domain started without a launch state (is the attestd hook "
            "installed and libvirtd restarted?); destroying it",
            dom.name(),
        )
        dom.destroy()

    def _handle(self, uuid: str, started: bool) -> None:
        lv = _libvirt()
        dom = self.conn.lookupByUUIDString(uuid)
        state = read_state(self.settings.state_dir, uuid)
        if state is None and started:
            self._unhooked_start(dom)
            return
        if state is None or state.path != PATH_AGENT:
            return
        status = dom.state()[0]
        if status == lv.VIR_DOMAIN_RUNNING:
            marker = _done_marker(self.settings, uuid)
            done = marker.is_file() and marker.read_text(encoding="utf-8").strip()
            if done != state.launch_id:
                logger.error(
                    "domain=%s launch=%s: running without attestation (not started paused); "
                    "destroying it",
                    state.domain,
                    state.launch_id,
                )
                dom.destroy()
            return
        if status == lv.VIR_DOMAIN_PAUSED:
            attest_domain(self.settings, dom)

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            uuid, started = item
            try:
                self._handle(uuid, started)
            except Exception as exc:
                logger.error("domain %s: %s", uuid, exc)

    def autostart(self) -> None:
        """Start (paused, then attested) inactive attestd domains marked autostart."""
        lv = _libvirt()
        for dom in self.conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_INACTIVE):
            try:
                meta = parse_domain(dom.XMLDesc(0)).metadata
            except Exception as exc:
                logger.warning("skipping %s for autostart: %s", dom.name(), exc)
                continue
            if meta is not None and meta.autostart:
                logger.info("autostarting %s (paused)", dom.name())
                try:
                    dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED)
                except lv.libvirtError as exc:
                    logger.error("autostart of %s failed: %s", dom.name(), exc)
                    continue
                self.work.put((dom.UUIDString(), False))

    def run(self) -> None:
        """Serve until ``stop()``."""
        lv = _libvirt()
        lv.virEventRegisterDefaultImpl()
        self.conn = lv.open(self.uri)
        self.conn.domainEventRegisterAny(
            None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )
        worker = threading.Thread(target=self._worker, daemon=True)
        worker.start()
        for dom in self.conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_PAUSED):
            self.work.put((dom.UUIDString(), False))
        self.autostart()
        logger.info("attestd-host agent running on %s", self.uri)
        while not self.stopping.is_set():
            lv.virEventRunDefaultImpl()
        self.work.put(None)
        worker.join(timeout=30)
        self.conn.close()

    def stop(self) -> None:
        """Ask ``run`` to return (wakes the event loop with a timer)."""
        self.stopping.set()
        lv = _libvirt()
        lv.virEventAddTimeout(0, lambda timer, opaque: lv.virEventRemoveTimeout(timer), None)
