"""The relay side of ``attestd-qemu``: launch backends on the held ``cont``.

Imported only by the forked relay process of an attestd launch.
"""

from __future__ import annotations

import base64
import logging
import socket

from attestd.errors import LaunchError
from attestd.host.client import LaunchSecret, ServiceClient
from attestd.host.config import HostSettings
from attestd.host.driver import PlatformReport, complete_launch
from attestd.host.qmp import RelayController, RelaySession, serve_relay
from attestd.host.sim import SIM_RESULT_SUFFIX, SimulatedLaunch
from attestd.host.state import LaunchState

logger = logging.getLogger("attestd.host.wrapper")


class QmpBackend:
    """Measurement and injection through QEMU's SEV QMP commands."""

    def __init__(self, session: RelaySession) -> None:
        self.session = session

    def measure(self) -> PlatformReport:
        """``query-sev-launch-measure`` + ``query-sev``."""
        measure = self.session.command("query-sev-launch-measure")
        info = self.session.command("query-sev")
        if not info.get("enabled"):
            raise LaunchError("QEMU reports SEV not enabled for this guest")
        return PlatformReport(
            measurement=base64.b64decode(measure["data"]),
            api_major=int(info["api-major"]),
            api_minor=int(info["api-minor"]),
            build_id=int(info["build-id"]),
            policy=int(info["policy"]),
        )

    def inject(self, packet: LaunchSecret) -> None:
        """``sev-inject-launch-secret`` (address from OVMF's secret GUID entry)."""
        self.session.command(
            "sev-inject-launch-secret",
            {
                "packet-header": base64.b64encode(packet.header).decode(),
                "secret": base64.b64encode(packet.secret).decode(),
            },
        )

    def resume(self) -> None:
        """Nothing: the relay forwards libvirt's held ``cont``."""

    def abort(self, reason: str) -> None:
        """Nothing: the relay refuses ``cont``; libvirt then stops QEMU."""


class SimQmpBackend(QmpBackend):
    """Simulated SEV: the simulator measures and takes the secret; QEMU only pauses."""

    def __init__(self, session: RelaySession, launch: SimulatedLaunch) -> None:
        super().__init__(session)
        self.launch = launch

    def measure(self) -> PlatformReport:
        """Check QEMU is still paused, then let the simulator measure the firmware."""
        if self.session.command("query-status").get("running"):
            raise LaunchError("guest CPUs already running before attestation")
        return self.launch.measure()

    def inject(self, packet: LaunchSecret) -> None:
        """LAUNCH_SECRET in the simulator."""
        self.launch.inject(packet)

    def resume(self) -> None:
        """LAUNCH_FINISH in the simulator; the relay then forwards ``cont``."""
        self.launch.finish()


def run_relay(
    settings: HostSettings, state: LaunchState, listener: socket.socket, qemu_path: str
) -> None:
    result_file = settings.state_dir / f"{state.domain_uuid}{SIM_RESULT_SUFFIX}"

    def attest(session: RelaySession) -> None:
        backend: QmpBackend
        if state.simulate:
            backend = SimQmpBackend(session, SimulatedLaunch(state, result_file))
        else:
            backend = QmpBackend(session)
        complete_launch(state, backend, ServiceClient(state.service, settings))

    serve_relay(listener, qemu_path, RelayController(on_first_cont=attest))
