"""The simulated SNP PSP as a stream service: what a test guest's report source talks to.

A guest (or a host-side test) sends ``b"SNPQ"`` + 64 bytes of REPORT_DATA; the PSP
answers ``b"SNPA"``, u32 status 0, u32 length + the signed report, u32 length + the
VCEK certificate table; or a non-zero status, u32 length + a UTF-8 reason. The launch
side of the report (measurement, HOST_DATA, policy, VMPL) is fixed when the VM is
started, as on hardware: it is the :class:`~attestd.sim.snp.ReportRequest` template
given here, and only REPORT_DATA comes from the guest. The framing is the one
:mod:`attestd.guest.snpreport` reads.

One connection carries any number of requests, one after the other: a guest's
virtio-serial port is a single long-lived connection (QEMU's chardev connects once
when the VM starts), while a host-side client may connect once per request.
``attestd-sim snp serve`` runs :class:`UnixPsp` for one VM.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import threading
import time
from pathlib import Path

from attestd.errors import AttestdError
from attestd.sim.snp import ReportRequest, SnpPlatform

logger = logging.getLogger(__name__)

REQUEST = b"SNPQ"
ANSWER = b"SNPA"
REPORT_DATA_SIZE = 64


def answer(platform: SnpPlatform, launch: ReportRequest, request: bytes) -> bytes:
    """The answer to one request (a refusal is an answer too, never an exception)."""
    if len(request) != len(REQUEST) + REPORT_DATA_SIZE or not request.startswith(REQUEST):
        return _refusal("malformed request")
    report_data = request[len(REQUEST) :]
    try:
        report = platform.report(dataclasses.replace(launch, report_data=report_data))
    except AttestdError as exc:
        return _refusal(exc.message)
    table = platform.cert_table(launch.signing_key)
    return (
        ANSWER + struct.pack("<II", 0, len(report)) + report + struct.pack("<I", len(table)) + table
    )


def _refusal(reason: str) -> bytes:
    text = reason.encode("utf-8")[:4095]
    return ANSWER + struct.pack("<II", 1, len(text)) + text


class UnixPsp:
    """Serve ``platform`` on a unix socket in a thread until :meth:`close`.

    Each connection is served in its own thread until its peer closes it, so a
    guest's long-lived virtio-serial connection does not keep other clients waiting.
    """

    def __init__(self, path: Path, platform: SnpPlatform, launch: ReportRequest) -> None:
        self.path = path
        self.platform = platform
        self.launch = launch
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Answer requests on ``conn`` until the peer closes it (or sends garbage)."""
        size = len(REQUEST) + REPORT_DATA_SIZE
        with conn:
            conn.settimeout(0.5)
            while not self._stop.is_set():
                try:
                    request = _recv_request(conn, size, self._stop)
                    if not request:
                        return
                    with self._lock:
                        self.requests += 1
                    reply = answer(self.platform, self.launch, request)
                    conn.settimeout(10)
                    conn.sendall(reply)
                    conn.settimeout(0.5)
                except OSError as exc:
                    logger.warning("simulated PSP: %s", exc)
                    return
                if len(request) != size or not request.startswith(REQUEST):
                    return  # out of step with the peer: it must reconnect
                logger.info("simulated PSP: report %d signed", self.requests)

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> UnixPsp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recv_request(conn: socket.socket, size: int, stop: threading.Event) -> bytes:
    """Up to ``size`` bytes; b"" when the peer closed before sending anything.

    Waits for the first byte as long as the peer stays (a guest asks when it likes),
    then gives the rest 10 s.
    """
    out = bytearray()
    deadline: float | None = None
    while len(out) < size:
        try:
            chunk = conn.recv(size - len(out))
        except TimeoutError:
            if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                break
            continue
        if not chunk:
            break
        if deadline is None:
            deadline = time.monotonic() + 10
        out += chunk
    return bytes(out)
