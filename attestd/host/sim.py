"""Simulated SEV mode: ``attestd.sim``'s software platform stands in for the
SEV commands of QEMU (LAUNCH_START/UPDATE_DATA/MEASURE/SECRET).

The platform's state directory is shared between the service side and the host
(``sim-state`` in the domain metadata, or ``sim_state_dir`` in the host config).
The firmware image measured is the domain's loader or the file named in its
metadata; QEMU itself runs without SEV.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attestd.errors import LaunchError
from attestd.host.client import LaunchSecret
from attestd.host.driver import PlatformReport
from attestd.host.platform import PlatformData
from attestd.host.state import LaunchState
from attestd.sim.platform import SimulatedPlatform

#: Next to the launch state: which simulator handle a launch used (public).
SIM_RESULT_SUFFIX = ".sim.json"
LOCK_NAME = ".attestd-host.lock"


def load_platform(directory: Path) -> SimulatedPlatform:
    """Load the simulator's persisted platform."""
    try:
        return SimulatedPlatform.load(directory)
    except FileNotFoundError as exc:
        raise LaunchError(f"no simulated platform in {directory}") from exc


def platform_data(directory: Path) -> PlatformData:
    """The simulated platform's export in the form ``/launch`` wants."""
    export = load_platform(directory).export()
    return PlatformData(
        pdh=export.pdh,
        cert_chain=export.cert_chain,
        chip_id=export.chip_id,
        cek=export.signed_cek,
        source=f"sim:{directory}",
    )


class SimulatedFirmware:
    """One simulated launch (LAUNCH_START … FINISH), persisted after every step.

    Every step loads the platform, acts and saves it under an exclusive lock on
    the state directory, so that other processes (the service's tests, a second
    launch) see each step.
    """

    def __init__(
        self,
        directory: Path,
        godh_cert: bytes,
        session: bytes,
        policy: int,
        firmware: Path,
        result_file: Path | None = None,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.result_file = result_file
        try:
            image = firmware.read_bytes()
        except OSError as exc:
            raise LaunchError(f"cannot read firmware {firmware}: {exc.strerror}") from exc
        with self._locked() as platform:
            self.handle = platform.launch_start(godh_cert, session, policy)
            platform.launch_update_data(self.handle, image)
        if result_file is not None:
            result_file.write_text(json.dumps({"handle": self.handle}) + "\n", encoding="utf-8")

    @contextmanager
    def _locked(self) -> Iterator[SimulatedPlatform]:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            platform = load_platform(self.directory)
            yield platform
            platform.save(self.directory)
        finally:
            os.close(fd)

    def measure(self) -> PlatformReport:
        """LAUNCH_MEASURE, reported like ``query-sev``/``launchSecurityInfo`` would."""
        with self._locked() as p:
            data = p.launch_measure(self.handle)
            return PlatformReport(data, p.api_major, p.api_minor, p.build_id, self.policy)

    def inject(self, packet: LaunchSecret) -> None:
        """LAUNCH_SECRET."""
        with self._locked() as p:
            p.launch_secret(self.handle, packet.header, packet.secret)

    def finish(self) -> None:
        """LAUNCH_FINISH (what QEMU does on the first ``cont``)."""
        with self._locked() as p:
            p.launch_finish(self.handle)


class SimulatedLaunch:
    """The simulator's part of a launch backend, driven by the hook's launch state."""

    def __init__(self, state: LaunchState, result_file: Path) -> None:
        self.state = state
        self.result_file = result_file
        self.firmware: SimulatedFirmware | None = None

    def measure(self) -> PlatformReport:
        """LAUNCH_START + LAUNCH_UPDATE_DATA(firmware) + LAUNCH_MEASURE."""
        if self.state.sim_state is None or self.state.firmware is None:
            raise LaunchError("launch state lacks simulator settings")
        godh, blob = self.state.sim_blobs()
        self.firmware = SimulatedFirmware(
            Path(self.state.sim_state),
            godh,
            blob,
            self.state.policy,
            Path(self.state.firmware),
            self.result_file,
        )
        return self.firmware.measure()

    def inject(self, packet: LaunchSecret) -> None:
        """LAUNCH_SECRET."""
        if self.firmware is None:
            raise LaunchError("inject before measure")
        self.firmware.inject(packet)

    def finish(self) -> None:
        """LAUNCH_FINISH (nothing when the launch never got measured)."""
        if self.firmware is not None:
            self.firmware.finish()
