"""Secret sources: the ``efi_secret`` securityfs directory, a directory of GUID-named
files, one raw EFI secret table (layout: sev-protocol.md section 8, Linux
``drivers/virt/coco/efi_secret``), or the *simulated* secret area of a simulated-SEV
guest (the same table, read from a virtio-serial port)."""

from __future__ import annotations

import logging
import os
import select
import stat
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from attestd.guest.errors import SecretSourceError

logger = logging.getLogger(__name__)

SECURITYFS_DIR = Path("/sys/kernel/security/secrets/coco")
#: virtio-serial port name of the *simulated* secret area (simulated SEV only, see
#: :class:`SimulatedSecretArea`); ``attestd-host prepare-domain --simulate`` adds it.
SIM_SECRET_PORT = "org.attestd.sim-secret.0"  # noqa: S105 - a port name
VIRTIO_PORTS_DIR = Path("/sys/class/virtio-ports")
TABLE_HEADER_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
MAX_ENTRIES = 64
MAX_TABLE_BYTES = 1 << 20
MAX_ENTRY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TableHeader:
    """``struct secret_header``: GUID (bytes_le) and total length."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<16sI")

    guid: uuid.UUID
    length: int

    @classmethod
    def unpack(cls, buf: bytes) -> TableHeader:
        """Decode exactly ``FORMAT.size`` bytes."""
        if len(buf) != cls.FORMAT.size:
            raise SecretSourceError(f"secret header needs {cls.FORMAT.size} bytes")
        raw_guid, length = cls.FORMAT.unpack(buf)
        return cls(uuid.UUID(bytes_le=raw_guid), length)

    def pack(self) -> bytes:
        """Encode as ``FORMAT``."""
        return self.FORMAT.pack(self.guid.bytes_le, self.length)


def parse_table(buf: bytes) -> dict[uuid.UUID, bytes]:
    """Entries of a secret table, as ``efi_secret`` would expose them.

    Same rules as the kernel: header GUID and ``20 <= len <= size``; entries while
    20 bytes remain, at most 64; an entry with ``len < 20`` or past the end is
    corruption; all-zero GUIDs are deleted entries. A GUID given twice is refused.
    """
    hsize = TableHeader.FORMAT.size
    if len(buf) < hsize:
        raise SecretSourceError("secret table is shorter than its header")
    header = TableHeader.unpack(buf[:hsize])
    if header.guid != TABLE_HEADER_GUID:
        raise SecretSourceError("secret table has an unknown header GUID")
    if not hsize <= header.length <= len(buf):
        raise SecretSourceError("secret table length field is out of range")
    entries: dict[uuid.UUID, bytes] = {}
    pos, end, count = hsize, header.length, 0
    while end - pos >= hsize:
        if count >= MAX_ENTRIES:
            raise SecretSourceError(f"secret table has more than {MAX_ENTRIES} entries")
        entry = TableHeader.unpack(buf[pos : pos + hsize])
        if entry.length < hsize or entry.length > end - pos:
            raise SecretSourceError("secret table is corrupted (bad entry length)")
        if entry.guid.int != 0:
            if entry.guid in entries:
                raise SecretSourceError(f"secret table has entry {entry.guid} twice")
            entries[entry.guid] = buf[pos + hsize : pos + entry.length]
        pos += entry.length
        count += 1
    return entries


class SecretSource(Protocol):
    """Where the agent finds its entries, and how it disposes of consumed ones."""

    def describe(self) -> str: ...

    def read(self, guid: uuid.UUID) -> bytes | None: ...

    def consume(self, guid: uuid.UUID) -> None: ...


class DirectorySource:
    """A directory of files named by lower-case GUID (securityfs ``coco`` by default).

    ``consume`` unlinks the file; on securityfs that zeroes the secret in guest memory.
    """

    def __init__(self, path: Path = SECURITYFS_DIR) -> None:
        self.path = path

    def describe(self) -> str:
        """Human-readable origin."""
        return f"directory {self.path}"

    def read(self, guid: uuid.UUID) -> bytes | None:
        """The entry's bytes, or None when absent."""
        if not self.path.is_dir():
            hint = (
                " (is efi_secret loaded and securityfs mounted?)"
                if self.path == SECURITYFS_DIR
                else ""
            )
            raise SecretSourceError(f"secret directory {self.path} does not exist{hint}")
        file = self.path / str(guid)
        try:
            # non-blocking open: a FIFO planted in place of the entry must not hang boot
            fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretSourceError(f"cannot read {file}: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SecretSourceError(f"secret entry {file} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(MAX_ENTRY_BYTES + 1)
        except OSError as exc:
            raise SecretSourceError(f"cannot read {file}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(data) > MAX_ENTRY_BYTES:
            raise SecretSourceError(f"secret entry {guid} is too large")
        return data

    def consume(self, guid: uuid.UUID) -> None:
        """Delete the entry (missing is fine)."""
        try:
            os.unlink(self.path / str(guid))
            logger.info("deleted consumed secret entry %s", guid)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SecretSourceError(f"cannot delete secret entry {guid}: {exc.strerror}") from exc


class TableFileSource:
    """One raw secret-table file (tests, other transports). It is left in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[uuid.UUID, bytes] | None = None

    def describe(self) -> str:
        """Human-readable origin."""
        return f"secret table {self.path}"

    def read(self, guid: uuid.UUID) -> bytes | None:
        """The entry's bytes, or None when absent."""
        if self._entries is None:
            try:
                with self.path.open("rb") as fh:
                    raw = fh.read(MAX_TABLE_BYTES + 1)
            except OSError as exc:
                raise SecretSourceError(f"cannot read {self.path}: {exc.strerror}") from exc
            if len(raw) > MAX_TABLE_BYTES:
                raise SecretSourceError(f"secret table {self.path} is too large")
            self._entries = parse_table(raw)
        return self._entries.get(guid)

    def consume(self, guid: uuid.UUID) -> None:
        """Forget the entry in memory; the file itself belongs to whoever supplied it."""
        if self._entries is not None:
            self._entries.pop(guid, None)


def find_sim_port(dev_dir: Path = Path("/dev"), ports_dir: Path = VIRTIO_PORTS_DIR) -> Path | None:
    """The character device of the simulated secret area's port, or None.

    ``/dev/virtio-ports/<name>`` where udev made it, else the ``vportNpM`` whose
    ``/sys/class/virtio-ports/*/name`` is :data:`SIM_SECRET_PORT` (no udev in an initramfs).
    """
    link = dev_dir / "virtio-ports" / SIM_SECRET_PORT
    if link.exists():
        return link
    try:
        ports = sorted(ports_dir.iterdir())
    except OSError:
        return None
    for port in ports:
        try:
            name = (port / "name").read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if name == SIM_SECRET_PORT and (dev_dir / port.name).exists():
            return dev_dir / port.name
    return None


class SimulatedSecretArea:
    """The secret table of a **simulated** SEV launch, read once from a virtio-serial port.

    On real SEV the firmware decrypts the owner's secret into the guest's memory
    (OVMF's secret area, ``efi_secret``). In simulated mode ``attestd.sim`` decrypts
    the same packet with its TEK and the host writes the resulting table into this
    port while the guest is still paused. The table's header gives its length, so
    the read ends there. Nothing protects it: the host can read and forge what comes
    through this port, so it is for development and tests only, never a stand-in for
    real SEV. The bytes are gone from the port once read; ``consume`` forgets them.
    """

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._entries: dict[uuid.UUID, bytes] | None = None

    def describe(self) -> str:
        """Human-readable origin."""
        return f"simulated secret area {self.path}"

    def _read_exactly(self, fd: int, size: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SecretSourceError(
                    f"no secret table on {self.path} within {self.timeout:g} s"
                    " (was the launch attested?)"
                )
            try:
                chunk = os.read(fd, size - len(out))
            except BlockingIOError:
                continue
            except OSError as exc:
                raise SecretSourceError(f"cannot read {self.path}: {exc.strerror}") from exc
            if not chunk:
                raise SecretSourceError(f"{self.path} closed before a whole secret table came")
            out += chunk
        return bytes(out)

    def _load(self) -> dict[uuid.UUID, bytes]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise SecretSourceError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            if not stat.S_ISCHR(os.fstat(fd).st_mode):
                raise SecretSourceError(f"{self.path} is not a character device")
            deadline = time.monotonic() + self.timeout
            hsize = TableHeader.FORMAT.size
            head = self._read_exactly(fd, hsize, deadline)
            header = TableHeader.unpack(head)
            if header.guid != TABLE_HEADER_GUID:
                raise SecretSourceError("simulated secret area has an unknown header GUID")
            if not hsize <= header.length <= MAX_TABLE_BYTES:
                raise SecretSourceError("simulated secret area length field is out of range")
            raw = head + self._read_exactly(fd, header.length - hsize, deadline)
        finally:
            os.close(fd)
        return parse_table(raw)

    def read(self, guid: uuid.UUID) -> bytes | None:
        """The entry's bytes, or None when absent (the port is read on first use)."""
        if self._entries is None:
            self._entries = self._load()
        return self._entries.get(guid)

    def consume(self, guid: uuid.UUID) -> None:
        """Forget the entry (the port holds nothing any more once read)."""
        if self._entries is not None:
            self._entries.pop(guid, None)
