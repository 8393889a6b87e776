"""Host platform data (PDH, PEK‖OCA‖CEK chain, chip id) and its on-host cache.

Sources, in order of preference:

* ``/dev/sev`` ioctls (``SEV_PDH_CERT_EXPORT``, ``SEV_GET_ID2``/``SEV_GET_ID``),
  declared below after ``linux/psp-sev.h``;
* libvirt's ``virConnect.getSEVInfo()`` (never from a hook: it would deadlock);
* the software platform of ``attestd.sim`` (simulated SEV mode).

``attestd-host refresh-platform`` writes the cache; the hook only reads it.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from attestd.errors import LaunchError, ParseError
from attestd.sev.certs import CHIP_ID_SIZE, SEV_CERT_SIZE

# linux/psp-sev.h: enum sev_cmd (user API)
SEV_PDH_CERT_EXPORT = 5
SEV_GET_ID = 7
SEV_GET_ID2 = 8


class SevIssueCmd(ctypes.Structure):
    """``struct sev_issue_cmd`` (packed): the argument of ``SEV_ISSUE_CMD``."""

    _pack_ = 1
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("cmd", ctypes.c_uint32),
        ("data", ctypes.c_uint64),
        ("error", ctypes.c_uint32),
    ]


class SevUserDataPdhCertExport(ctypes.Structure):
    """``struct sev_user_data_pdh_cert_export`` (packed)."""

    _pack_ = 1
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("pdh_cert_address", ctypes.c_uint64),
        ("pdh_cert_len", ctypes.c_uint32),
        ("cert_chain_address", ctypes.c_uint64),
        ("cert_chain_len", ctypes.c_uint32),
    ]


class SevUserDataGetId(ctypes.Structure):
    """``struct sev_user_data_get_id`` (packed, deprecated GET_ID)."""

    _pack_ = 1
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("socket1", ctypes.c_uint8 * 64),
        ("socket2", ctypes.c_uint8 * 64),
    ]


class SevUserDataGetId2(ctypes.Structure):
    """``struct sev_user_data_get_id2`` (packed)."""

    _pack_ = 1
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("address", ctypes.c_uint64),
        ("length", ctypes.c_uint32),
    ]


assert ctypes.sizeof(SevIssueCmd) == 16
assert ctypes.sizeof(SevUserDataPdhCertExport) == 24
assert ctypes.sizeof(SevUserDataGetId) == 128
assert ctypes.sizeof(SevUserDataGetId2) == 12


def _iowr(kind: int, nr: int, size: int) -> int:
    """Linux ``_IOWR(type, nr, size)`` (asm-generic ioctl encoding)."""
    return (3 << 30) | (size << 16) | (kind << 8) | nr


SEV_ISSUE_CMD = _iowr(ord("S"), 0, ctypes.sizeof(SevIssueCmd))


@dataclass(frozen=True, slots=True)
class PlatformData:
    """What ``POST /launch`` needs from the host."""

    pdh: bytes
    cert_chain: bytes
    chip_id: bytes
    cek: bytes | None = None
    source: str = "unknown"

    def __post_init__(self) -> None:
        if len(self.pdh) != SEV_CERT_SIZE:
            raise ParseError(f"PDH is {len(self.pdh)} bytes, expected {SEV_CERT_SIZE}")
        if len(self.cert_chain) != 3 * SEV_CERT_SIZE:
            raise ParseError("cert chain must be PEK||OCA||CEK (3 * 0x824 bytes)")
        if not self.chip_id:
            raise ParseError("empty chip id")

    def to_json(self) -> str:
        """The cache file format (base64 values)."""
        doc: dict[str, str] = {
            "source": self.source,
            "pdh": base64.b64encode(self.pdh).decode(),
            "cert-chain": base64.b64encode(self.cert_chain).decode(),
            "cpu-id": base64.b64encode(self.chip_id).decode(),
        }
        if self.cek is not None:
            doc["cek"] = base64.b64encode(self.cek).decode()
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PlatformData:
        """Parse the cache file."""
        try:
            doc = json.loads(text)
            cek = doc.get("cek")
            return cls(
                pdh=base64.b64decode(doc["pdh"], validate=True),
                cert_chain=base64.b64decode(doc["cert-chain"], validate=True),
                chip_id=base64.b64decode(doc["cpu-id"], validate=True),
                cek=base64.b64decode(cek, validate=True) if cek else None,
                source=str(doc.get("source", "unknown")),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ParseError(f"platform cache does not parse: {exc}") from exc


def _issue(fd: int, cmd: int, data: ctypes.Structure) -> None:
    import fcntl

    arg = SevIssueCmd(cmd=cmd, data=ctypes.addressof(data), error=0)
    try:
        fcntl.ioctl(fd, SEV_ISSUE_CMD, arg, True)
    except OSError as exc:
        raise LaunchError(
            f"/dev/sev command {cmd} failed: {exc.strerror} (firmware error {arg.error:#x})"
        ) from exc


def read_dev_sev(path: Path = Path("/dev/sev")) -> PlatformData:
    """Export PDH, cert chain and chip id from the SEV firmware (needs root)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise LaunchError(
            f"cannot open {path}: {exc.strerror} (not an SEV host, or the kvm_amd/ccp "
            "modules are not loaded? --source sim for the simulator)"
        ) from None
    try:
        pdh = ctypes.create_string_buffer(SEV_CERT_SIZE)
        chain = ctypes.create_string_buffer(3 * SEV_CERT_SIZE)
        export = SevUserDataPdhCertExport(
            pdh_cert_address=ctypes.addressof(pdh),
            pdh_cert_len=SEV_CERT_SIZE,
            cert_chain_address=ctypes.addressof(chain),
            cert_chain_len=3 * SEV_CERT_SIZE,
        )
        _issue(fd, SEV_PDH_CERT_EXPORT, export)
        chip = ctypes.create_string_buffer(CHIP_ID_SIZE)
        get_id2 = SevUserDataGetId2(address=ctypes.addressof(chip), length=CHIP_ID_SIZE)
        try:
            _issue(fd, SEV_GET_ID2, get_id2)
            chip_id = chip.raw[: get_id2.length]
        except LaunchError:
            get_id = SevUserDataGetId()
            _issue(fd, SEV_GET_ID, get_id)
            chip_id = bytes(get_id.socket1)
        return PlatformData(
            pdh=pdh.raw[: export.pdh_cert_len],
            cert_chain=chain.raw[: export.cert_chain_len],
            chip_id=chip_id,
            source=str(path),
        )
    finally:
        os.close(fd)


def from_sev_info(info: dict[str, Any], source: str = "libvirt") -> PlatformData:
    """Build platform data from libvirt's ``getSEVInfo()`` typed parameters."""
    try:
        cpu0 = info.get("cpu0-id")
        if not cpu0:
            raise ParseError("libvirt reports no cpu0-id (needs libvirt >= 8.4, QEMU >= 7.1)")
        return PlatformData(
            pdh=base64.b64decode(info["pdh"]),
            cert_chain=base64.b64decode(info["cert-chain"]),
            chip_id=base64.b64decode(cpu0),
            source=source,
        )
    except (KeyError, ValueError, binascii.Error) as exc:
        raise ParseError(f"getSEVInfo() result does not parse: {exc}") from exc


def write_cache(path: Path, data: PlatformData) -> None:
    """Atomically replace the platform cache (public data, mode 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(data.to_json(), encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)


def read_cache(path: Path) -> PlatformData:
    """Read the cache; a missing cache is a clear launch error."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise LaunchError(
            f"no platform data at {path}: run 'attestd-host refresh-platform' first"
        ) from exc
    except OSError as exc:
        raise LaunchError(f"cannot read platform data {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ParseError(f"platform data {path} is not UTF-8 text") from None
    return PlatformData.from_json(text)
