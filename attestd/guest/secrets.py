"""Secret sources: the ``efi_secret`` securityfs directory, a directory of GUID-named
files, or one raw EFI secret table (layout: sev-protocol.md section 8, Linux
``drivers/virt/coco/efi_secret``)."""

from __future__ import annotations

import logging
import os
import stat
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from attestd.guest.errors import SecretSourceError

logger = logging.getLogger(__name__)

SECURITYFS_DIR = Path("/sys/kernel/security/secrets/coco")
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
