"""Simulated SEV mode: ``attestd.sim``'s software platform stands in for the
SEV commands of QEMU (LAUNCH_START/UPDATE_DATA/MEASURE/SECRET).

The platform's state directory is shared between the service side and the host
(``sim-state`` in the domain metadata, or ``sim_state_dir`` in the host config).
The firmware image measured is the domain's loader or the file named in its
metadata; QEMU itself runs without SEV.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol

from attestd.errors import LaunchError
from attestd.host.client import SecretPacket
from attestd.host.platform import PlatformData

#: Next to the launch state: which simulator handle a launch used (public).
SIM_RESULT_SUFFIX = ".sim.json"


class _Platform(Protocol):
    api_major: int
    api_minor: int
    build_id: int

    def export(self) -> Any: ...
    def launch_start(self, godh_cert: bytes, session: bytes, policy: int) -> int: ...
    def launch_update_data(self, handle: int, data: bytes) -> None: ...
    def launch_measure(self, handle: int) -> bytes: ...
    def launch_secret(self, handle: int, header: bytes, ciphertext: bytes) -> None: ...
    def save(self, directory: Path) -> None: ...


def load_platform(directory: Path) -> _Platform:
    """Load the simulator's persisted platform."""
    try:
        module = importlib.import_module("attestd.sim.platform")
    except ImportError as exc:
        raise LaunchError("simulated SEV mode needs attestd.sim (not installed)") from exc
    try:
        platform: _Platform = module.SimulatedPlatform.load(directory)
    except FileNotFoundError as exc:
        raise LaunchError(f"no simulated platform in {directory} (run attestd-sim init)") from exc
    return platform


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
    """Measurement and injection by the simulator (used inside a LaunchBackend)."""

    def __init__(
        self, directory: Path, godh_cert: bytes, session: bytes, policy: int, firmware: Path
    ) -> None:
        self.directory = directory
        self.platform = load_platform(directory)
        self.handle = self.platform.launch_start(godh_cert, session, policy)
        try:
            image = firmware.read_bytes()
        except OSError as exc:
            raise LaunchError(f"cannot read firmware {firmware}: {exc.strerror}") from exc
        self.platform.launch_update_data(self.handle, image)
        self.policy = policy

    def measure(self) -> tuple[bytes, int, int, int, int]:
        """(measure||mnonce, api_major, api_minor, build_id, policy)."""
        data = self.platform.launch_measure(self.handle)
        p = self.platform
        return data, p.api_major, p.api_minor, p.build_id, self.policy

    def inject(self, packet: SecretPacket, result_file: Path | None) -> None:
        """LAUNCH_SECRET in the simulator; persist it so other processes can check."""
        self.platform.launch_secret(self.handle, packet.header, packet.secret)
        self.platform.save(self.directory)
        if result_file is not None:
            result_file.write_text(json.dumps({"handle": self.handle}) + "\n", encoding="utf-8")
