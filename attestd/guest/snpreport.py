"""Where an SNP guest gets its attestation report: configfs-tsm, /dev/sev-guest, the simulator.

Each source takes the 64 bytes of REPORT_DATA and returns the signed 1184-byte report
and, when the platform has one, the extended-report certificate table (VCEK, ASK, ARK).
:func:`choose` picks one at run time. Standard library only (``ctypes``, ``fcntl``).

* configfs-tsm (Linux >= 6.7, ``Documentation/ABI/testing/configfs-tsm``): ``mkdir``
  an entry under ``/sys/kernel/config/tsm/report``, check ``provider`` is
  ``sev_guest``, write ``inblob`` (and ``privlevel``), read ``generation``, read
  ``outblob`` and ``auxblob``, read ``generation`` again (a changed value means another
  writer raced us: the outblob is not ours), ``rmdir``.
* ``/dev/sev-guest`` (``include/uapi/linux/sev-guest.h``): ``SNP_GET_EXT_REPORT``, and
  ``SNP_GET_REPORT`` when the host provides no certificates.
* the simulator: ``attestd-sim snp serve`` reached through a stream (a unix socket for
  host-side tests, a virtio-serial port in a test VM); the simulated PSP signs with
  its VCEK. Framing: ``b"SNPQ" + REPORT_DATA``; answer ``b"SNPA"``, u32 status, then
  u32 length + report, u32 length + certificate table (little-endian).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attestd.guest.errors import GuestError

REPORT_SIZE = 0x4A0
REPORT_DATA_SIZE = 64
HOST_DATA_OFFSET = 0xC0
HOST_DATA_SIZE = 32
REPORT_DATA_OFFSET = 0x50
TSM_DIR = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEV = Path("/dev/sev-guest")
SIM_PORT = Path("/dev/virtio-ports/org.attestd.snp-psp")
TSM_PROVIDER = "sev_guest"
MAX_TABLE = 64 * 1024
PAGE = 4096


class ReportError(GuestError):
    """No report could be obtained (source missing, refused, raced, malformed)."""

    code = "report_failed"


@dataclass(frozen=True, slots=True)
class Evidence:
    """A signed report and the certificate table that came with it (may be empty)."""

    report: bytes
    cert_table: bytes = b""

    def __post_init__(self) -> None:
        if len(self.report) != REPORT_SIZE:
            raise ReportError(f"report is {len(self.report)} bytes, not {REPORT_SIZE}")

    @property
    def host_data(self) -> bytes:
        """HOST_DATA (offset 0xC0, 32 bytes)."""
        return self.report[HOST_DATA_OFFSET : HOST_DATA_OFFSET + HOST_DATA_SIZE]

    @property
    def report_data(self) -> bytes:
        """REPORT_DATA (offset 0x50, 64 bytes)."""
        return self.report[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + REPORT_DATA_SIZE]


class ReportSource(Protocol):
    """Something that asks the (real or simulated) PSP for a report."""

    def describe(self) -> str: ...

    def get(self, report_data: bytes) -> Evidence: ...


def _check_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ReportError(f"REPORT_DATA must be {REPORT_DATA_SIZE} bytes")


def _checked(evidence: Evidence, report_data: bytes, where: str) -> Evidence:
    if evidence.report_data != report_data:
        raise ReportError(f"{where} returned a report for other REPORT_DATA")
    if len(evidence.cert_table) > MAX_TABLE:
        raise ReportError(f"{where}: certificate table larger than {MAX_TABLE} bytes")
    return evidence


# --------------------------------------------------------------------- configfs-tsm


class TsmFs(Protocol):
    """The four file operations configfs-tsm needs (tests give a fake kernel)."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path) -> bytes | None: ...

    def write(self, path: Path, data: bytes) -> None: ...


class OsFs:
    """The real file system (configfs)."""

    def mkdir(self, path: Path) -> None:
        """``mkdir`` (configfs creates the entry's attributes)."""
        path.mkdir()

    def rmdir(self, path: Path) -> None:
        """``rmdir``."""
        path.rmdir()

    def read(self, path: Path) -> bytes | None:
        """The attribute's content; None if it does not exist."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: Path, data: bytes) -> None:
        """One ``write`` of ``data`` (configfs binary attributes take it whole)."""
        with path.open("wb", buffering=0) as handle:
            handle.write(data)


class TsmSource:
    """configfs-tsm (``/sys/kernel/config/tsm/report``)."""

    def __init__(
        self, root: Path = TSM_DIR, *, privlevel: int | None = None, fs: TsmFs | None = None
    ) -> None:
        self.root = root
        self.privlevel = privlevel
        self.fs: TsmFs = fs or OsFs()

    def describe(self) -> str:
        """Human-readable origin."""
        return f"configfs-tsm {self.root}"

    def _read(self, path: Path, *, required: bool = True) -> bytes:
        try:
            data = self.fs.read(path)
        except OSError as exc:
            raise ReportError(f"configfs-tsm: cannot read {path.name}: {exc.strerror}") from None
        if data is None and required:
            raise ReportError(f"configfs-tsm: {path.name} does not exist")
        return data or b""

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self.fs.write(path, data)
        except OSError as exc:
            raise ReportError(f"configfs-tsm: cannot write {path.name}: {exc.strerror}") from None

    def _generation(self, entry: Path) -> int:
        text = self._read(entry / "generation").decode("ascii", "replace").strip()
        if not text.isdigit():
            raise ReportError("configfs-tsm: generation is not a number")
        return int(text)

    def get(self, report_data: bytes) -> Evidence:
        """One report through a fresh entry (always removed afterwards)."""
        _check_data(report_data)
        entry = self.root / f"attestd-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.fs.mkdir(entry)
        except OSError as exc:
            raise ReportError(f"configfs-tsm: cannot create {entry}: {exc.strerror}") from None
        try:
            provider = self._read(entry / "provider").decode("ascii", "replace").strip()
            if provider != TSM_PROVIDER:
                raise ReportError(f"configfs-tsm provider is {provider!r}, not {TSM_PROVIDER!r}")
            if self.privlevel is not None:
                self._write(entry / "privlevel", str(self.privlevel).encode("ascii"))
            self._write(entry / "inblob", report_data)
            before = self._generation(entry)
            report = self._read(entry / "outblob")
            table = self._read(entry / "auxblob", required=False)
            if self._generation(entry) != before:
                raise ReportError("configfs-tsm: another writer changed the request (generation)")
        finally:
            with contextlib.suppress(OSError):
                self.fs.rmdir(entry)
        return _checked(Evidence(report, table), report_data, "configfs-tsm")


# --------------------------------------------------------------------- /dev/sev-guest


class SnpReportReq(ctypes.Structure):
    """``struct snp_report_req``: user_data[64], vmpl, rsvd[28] (96 bytes)."""

    _fields_ = (
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    )


class SnpReportResp(ctypes.Structure):
    """``struct snp_report_resp``: data[4000] (MSG_REPORT_RSP: status, size, rsvd, report)."""

    _fields_ = (("data", ctypes.c_uint8 * 4000),)


class SnpExtReportReq(ctypes.Structure):
    """``struct snp_ext_report_req``: data, certs_address (u64), certs_len (u32)."""

    _fields_ = (
        ("data", SnpReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    )


class SnpGuestRequestIoctl(ctypes.Structure):
    """``struct snp_guest_request_ioctl``: msg_version, req_data, resp_data, exitinfo2."""

    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


def _iowr(kind: int, nr: int, size: int) -> int:
    """``_IOWR(kind, nr, size)`` of asm-generic/ioctl.h."""
    return (3 << 30) | (size << 16) | (kind << 8) | nr


SNP_GET_REPORT = _iowr(ord("S"), 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr(ord("S"), 0x2, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
SNP_GUEST_VMM_ERR_BUSY = 2
_MSG_REPORT_RSP = struct.Struct("<II24x")


def parse_report_response(resp: bytes) -> bytes:
    """The report inside MSG_REPORT_RSP (status 0, size 0x4A0, then the report)."""
    status, size = _MSG_REPORT_RSP.unpack_from(resp)
    if status != 0:
        raise ReportError(f"the PSP refused the report request (status 0x{status:x})")
    if size != REPORT_SIZE or len(resp) < _MSG_REPORT_RSP.size + size:
        raise ReportError(f"the PSP returned a {size}-byte report, not {REPORT_SIZE}")
    return resp[_MSG_REPORT_RSP.size : _MSG_REPORT_RSP.size + size]


class SevGuestSource:
    """The ``/dev/sev-guest`` ioctls (kernels without configfs-tsm)."""

    def __init__(self, device: Path = SEV_GUEST_DEV, *, vmpl: int = 0) -> None:
        self.device = device
        self.vmpl = vmpl

    def describe(self) -> str:
        """Human-readable origin."""
        return f"{self.device} ioctl"

    def _ioctl(self, fd: int, request: int, req: ctypes.Structure, resp: SnpReportResp) -> int:
        guest = SnpGuestRequestIoctl(
            msg_version=1,
            req_data=ctypes.addressof(req),
            resp_data=ctypes.addressof(resp),
        )
        try:
            fcntl.ioctl(fd, request, guest)
        except OSError as exc:
            vmm_error = guest.exitinfo2 >> 32
            if vmm_error in (SNP_GUEST_VMM_ERR_INVALID_LEN, SNP_GUEST_VMM_ERR_BUSY):
                return int(vmm_error)
            raise ReportError(
                f"{self.device}: report request failed: {exc.strerror} "
                f"(firmware 0x{guest.exitinfo2 & 0xFFFFFFFF:x}, vmm 0x{vmm_error:x})"
            ) from None
        return 0

    def get(self, report_data: bytes) -> Evidence:
        """SNP_GET_EXT_REPORT (the table grown once if too small), else SNP_GET_REPORT."""
        _check_data(report_data)
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ReportError(f"cannot open {self.device}: {exc.strerror}") from None
        try:
            req = SnpReportReq(vmpl=self.vmpl)
            ctypes.memmove(req.user_data, report_data, REPORT_DATA_SIZE)
            resp = SnpReportResp()
            certs_len = 4 * PAGE
            for _ in range(3):
                buffer = ctypes.create_string_buffer(certs_len)
                ext = SnpExtReportReq(
                    data=req, certs_address=ctypes.addressof(buffer), certs_len=certs_len
                )
                result = self._ioctl(fd, SNP_GET_EXT_REPORT, ext, resp)
                if result == SNP_GUEST_VMM_ERR_INVALID_LEN and ext.certs_len > certs_len:
                    certs_len = min(int(ext.certs_len), MAX_TABLE)
                    continue
                if result == 0:
                    table = bytes(buffer.raw[: ext.certs_len])
                    if not table.strip(b"\0"):
                        table = b""  # the host has no certificates for this VM
                    report = parse_report_response(bytes(resp.data))
                    return _checked(Evidence(report, table), report_data, self.describe())
                break
            if self._ioctl(fd, SNP_GET_REPORT, req, resp) != 0:
                raise ReportError(f"{self.device}: the PSP is busy")
            report = parse_report_response(bytes(resp.data))
            return _checked(Evidence(report), report_data, self.describe())
        finally:
            os.close(fd)


# --------------------------------------------------------------------- simulator

SIM_REQUEST = b"SNPQ"
SIM_ANSWER = b"SNPA"


def _read_exact(read: _Reader, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = read(size - len(out))
        if not chunk:
            raise ReportError("the simulated PSP closed the connection early")
        out += chunk
    return bytes(out)


class _Reader(Protocol):
    def __call__(self, size: int, /) -> bytes: ...


def read_sim_answer(read: _Reader) -> Evidence:
    """Decode a simulated PSP's answer from a stream."""
    head = _read_exact(read, 8)
    if head[:4] != SIM_ANSWER:
        raise ReportError("the simulated PSP answered garbage")
    (status,) = struct.unpack("<I", head[4:])
    if status != 0:
        message = _read_exact(read, struct.unpack("<I", _read_exact(read, 4))[0] & 0xFFF)
        raise ReportError(f"the simulated PSP refused: {message.decode('utf-8', 'replace')}")
    (size,) = struct.unpack("<I", _read_exact(read, 4))
    if size != REPORT_SIZE:
        raise ReportError("the simulated PSP sent a report of the wrong size")
    report = _read_exact(read, size)
    (table_size,) = struct.unpack("<I", _read_exact(read, 4))
    if table_size > MAX_TABLE:
        raise ReportError("the simulated PSP sent an oversized certificate table")
    return Evidence(report, _read_exact(read, table_size))


class SimulatorSource:
    """``attestd-sim snp serve``: a unix socket, or a character device (virtio-serial)."""

    def __init__(self, path: Path = SIM_PORT, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def describe(self) -> str:
        """Human-readable origin."""
        return f"simulated PSP at {self.path}"

    def get(self, report_data: bytes) -> Evidence:
        """One request and its answer."""
        _check_data(report_data)
        try:
            mode = self.path.stat().st_mode
        except OSError as exc:
            raise ReportError(f"no simulated PSP at {self.path}: {exc.strerror}") from None
        try:
            if stat.S_ISSOCK(mode):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(self.timeout)
                    sock.connect(str(self.path))
                    sock.sendall(SIM_REQUEST + report_data)
                    evidence = read_sim_answer(sock.recv)
            else:
                with self.path.open("r+b", buffering=0) as port:
                    port.write(SIM_REQUEST + report_data)
                    evidence = read_sim_answer(lambda n: port.read(n) or b"")
        except OSError as exc:
            raise ReportError(f"simulated PSP at {self.path}: {exc.strerror or exc}") from None
        return _checked(evidence, report_data, self.describe())


# --------------------------------------------------------------------- choice

SOURCES = ("auto", "tsm", "sev-guest", "sim")


def choose(
    kind: str = "auto",
    *,
    tsm_dir: Path = TSM_DIR,
    device: Path = SEV_GUEST_DEV,
    sim: Path = SIM_PORT,
) -> ReportSource:
    """The report source ``kind`` names; ``auto``: configfs-tsm, /dev/sev-guest, simulator."""
    if kind == "tsm":
        return TsmSource(tsm_dir)
    if kind == "sev-guest":
        return SevGuestSource(device)
    if kind == "sim":
        return SimulatorSource(sim)
    if kind != "auto":
        raise ReportError(f"unknown report source {kind!r} (one of {', '.join(SOURCES)})")
    if tsm_dir.is_dir():
        return TsmSource(tsm_dir)
    if device.exists():
        return SevGuestSource(device)
    if sim.exists():
        return SimulatorSource(sim)
    raise ReportError(
        f"no SNP report source: no {tsm_dir}, no {device}, no simulated PSP at {sim} "
        "(is this an SEV-SNP guest?)"
    )
