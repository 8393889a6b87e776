"""Simulated SEV mode: ``attestd.sim``'s software platform stands in for the
SEV commands of QEMU (LAUNCH_START/UPDATE_DATA/MEASURE/SECRET).

The platform's state directory is shared between the service side and the host
(``sim-state`` in the domain metadata, or ``sim_state_dir`` in the host config).
The firmware image measured is the domain's loader or the file named in its
metadata; QEMU itself runs without SEV.

The secret the simulator decrypts at LAUNCH_SECRET (with the launch's TEK, from
the packet ``/validate`` returned, as the PSP would) is delivered into the guest
through the *simulated secret area*: a virtio-serial port (``<channel>`` added by
``prepare-domain --simulate``) whose unix socket QEMU listens on. The table goes
into the socket while the guest is still paused and waits there until the
guest's ``attestd-guest`` opens the port. This is simulation only: the host sees
the plaintext table, which on real SEV only the guest's memory ever holds.
"""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import select
import socket
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attestd.errors import LaunchError
from attestd.host.client import LaunchSecret
from attestd.host.driver import PlatformReport
from attestd.host.platform import PlatformData
from attestd.host.state import LaunchState
from attestd.sim.platform import SimulatedPlatform

logger = logging.getLogger(__name__)

#: How long the delivering side keeps the socket open for the guest to read the table.
DELIVERY_LINGER = 600.0

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

    def inject(self, packet: LaunchSecret) -> bytes:
        """LAUNCH_SECRET; returns the table the firmware decrypted into the guest."""
        with self._locked() as p:
            p.launch_secret(self.handle, packet.header, packet.secret)
            table = p.secret_table(self.handle)
        if table is None:  # pragma: no cover - launch_secret either stores it or raises
            raise LaunchError("simulated LAUNCH_SECRET left no secret table")
        return table

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
        """LAUNCH_SECRET, then the decrypted table into the simulated secret area."""
        if self.firmware is None:
            raise LaunchError("inject before measure")
        table = self.firmware.inject(packet)
        if self.state.sim_secret_socket is None:
            logger.warning(
                "domain=%s launch=%s: no simulated secret area channel (run prepare-domain "
                "--simulate again): the guest will not see its secret",
                self.state.domain,
                self.state.launch_id,
            )
            return
        deliver_secret_area(Path(self.state.sim_secret_socket), table)

    def finish(self) -> None:
        """LAUNCH_FINISH (nothing when the launch never got measured)."""
        if self.firmware is not None:
            self.firmware.finish()


def _unread(sock: socket.socket) -> int:
    """Bytes the peer has not read yet (``SIOCOUTQ``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


def _linger(sock: socket.socket, deadline: float) -> None:
    """Keep the connection until QEMU took the table (closing earlier would drop it)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP | select.POLLERR)
    try:
        while time.monotonic() < deadline and _unread(sock) > 0:
            if poller.poll(200):
                return  # QEMU went away: nothing more to hand over
    except OSError:
        return
    finally:
        sock.close()


def _hold_detached(sock: socket.socket, deadline: float) -> None:
    """Hand the connection to a detached process that lingers (double fork).

    The launching process may be a one-shot command (``attestd-host start``) that
    exits long before the guest opens its port. The holder keeps only this socket
    (stdin/stdout/stderr go to /dev/null and every other inherited descriptor is
    closed, so it holds no pipe, QMP or libvirt connection open) and exits once QEMU
    took the table, QEMU went away, or at ``deadline``.
    """
    fd = sock.fileno()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked children
        try:
            if os.fork() == 0:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):  # a caller waiting for our stdout must not wait for us
                    os.dup2(null, std)
                os.closerange(3, fd)
                os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
                _linger(sock, deadline)
        finally:
            os._exit(0)
    sock.close()
    os.waitpid(pid, 0)


def deliver_secret_area(path: Path, table: bytes, *, linger: float = DELIVERY_LINGER) -> None:
    """Write ``table`` into the simulated secret area's socket (QEMU's chardev).

    The guest reads it whenever it opens the port. Closing the connection before
    QEMU has taken the bytes would drop them, so a detached holder keeps it until
    then (at most ``linger`` seconds) and the caller returns at once.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10.0)
        sock.connect(str(path))
        sock.sendall(table)
    except OSError as exc:
        sock.close()
        raise LaunchError(f"cannot deliver the simulated secret area to {path}: {exc}") from exc
    _hold_detached(sock, time.monotonic() + linger)
