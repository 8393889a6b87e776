"""The SEV kernel hashes table QEMU adds for measured direct boot.

With ``-kernel`` and ``kernel-hashes=on`` QEMU (``target/i386/sev.c``,
``sev_add_kernel_loader_hashes``) writes a GUIDed table of three SHA-256 hashes
(cmdline, initrd, kernel) into the firmware's hashes area and measures it,
padded to a multiple of 16 bytes. sev-protocol.md §6.3. All GUIDs are EFI
mixed-endian (``UUID.bytes_le``); lengths are u16.
"""

from __future__ import annotations

import ctypes
import hashlib
from ctypes import c_uint8, c_uint16
from dataclasses import dataclass
from typing import Self
from uuid import UUID

from attestd.errors import ParseError

SEV_HASH_TABLE_HEADER_GUID = UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
SEV_CMDLINE_ENTRY_GUID = UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
SEV_INITRD_ENTRY_GUID = UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
SEV_KERNEL_ENTRY_GUID = UUID("4de79437-abd2-427f-b835-d5b172d2045b")

DIGEST_SIZE = 32


class SevHashTableEntry(ctypes.LittleEndianStructure):
    """QEMU ``SevHashTableEntry``: GUID || u16 len (= 50) || SHA-256."""

    _pack_ = 1
    _fields_ = (
        ("guid", c_uint8 * 16),
        ("len", c_uint16),
        ("hash", c_uint8 * DIGEST_SIZE),
    )


class SevHashTable(ctypes.LittleEndianStructure):
    """QEMU ``SevHashTable``: header GUID || u16 len (= 168) || cmdline, initrd, kernel."""

    _pack_ = 1
    _fields_ = (
        ("guid", c_uint8 * 16),
        ("len", c_uint16),
        ("cmdline", SevHashTableEntry),
        ("initrd", SevHashTableEntry),
        ("kernel", SevHashTableEntry),
    )


class PaddedSevHashTable(ctypes.LittleEndianStructure):
    """QEMU ``PaddedSevHashTable``: the table zero-padded to a multiple of 16 bytes."""

    _pack_ = 1
    _fields_ = (
        ("ht", SevHashTable),
        ("padding", c_uint8 * (-ctypes.sizeof(SevHashTable) % 16)),
    )


assert ctypes.sizeof(SevHashTableEntry) == 50
assert ctypes.sizeof(SevHashTable) == 168
assert ctypes.sizeof(PaddedSevHashTable) == 176

TABLE_SIZE = ctypes.sizeof(PaddedSevHashTable)


def _guid(value: UUID) -> ctypes.Array[c_uint8]:
    return (c_uint8 * 16).from_buffer_copy(value.bytes_le)


def _entry(guid: UUID, digest: bytes) -> SevHashTableEntry:
    return SevHashTableEntry(
        guid=_guid(guid),
        len=ctypes.sizeof(SevHashTableEntry),
        hash=(c_uint8 * DIGEST_SIZE).from_buffer_copy(digest),
    )


def _check_entry(entry: SevHashTableEntry, guid: UUID, name: str) -> bytes:
    if bytes(entry.guid) != guid.bytes_le:
        raise ParseError(f"kernel hashes table: {name} entry has the wrong GUID")
    if entry.len != ctypes.sizeof(SevHashTableEntry):
        raise ParseError(f"kernel hashes table: {name} entry has length {entry.len}")
    return bytes(entry.hash)


def cmdline_digest(cmdline: str | None) -> bytes:
    """SHA-256 of the kernel command line as QEMU hashes it (NUL-terminated, not trimmed)."""
    return hashlib.sha256((cmdline or "").encode() + b"\0").digest()


@dataclass(frozen=True, slots=True)
class KernelHashes:
    """The three SHA-256 digests QEMU measures for a direct kernel boot."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    def __post_init__(self) -> None:
        for name in ("kernel", "initrd", "cmdline"):
            if len(getattr(self, name)) != DIGEST_SIZE:
                raise ParseError(f"{name} hash must be {DIGEST_SIZE} bytes (SHA-256)")

    @classmethod
    def from_content(cls, kernel: bytes, initrd: bytes | None, cmdline: str | None) -> Self:
        """Hash the kernel, initrd and cmdline the way QEMU does.

        No initrd hashes as the empty string; no cmdline hashes as ``b"\\0"``.
        """
        return cls(
            kernel=hashlib.sha256(kernel).digest(),
            initrd=hashlib.sha256(initrd or b"").digest(),
            cmdline=cmdline_digest(cmdline),
        )

    @classmethod
    def from_table(cls, table: bytes) -> Self:
        """Decode a padded 176-byte table (GUIDs, lengths and zero padding are checked)."""
        if len(table) != TABLE_SIZE:
            raise ParseError(f"kernel hashes table must be {TABLE_SIZE} bytes, got {len(table)}")
        padded = PaddedSevHashTable.from_buffer_copy(table)
        if bytes(padded.ht.guid) != SEV_HASH_TABLE_HEADER_GUID.bytes_le:
            raise ParseError("kernel hashes table has the wrong header GUID")
        if padded.ht.len != ctypes.sizeof(SevHashTable):
            raise ParseError(f"kernel hashes table has length {padded.ht.len}")
        if any(bytes(padded.padding)):
            raise ParseError("kernel hashes table padding is not zero")
        return cls(
            kernel=_check_entry(padded.ht.kernel, SEV_KERNEL_ENTRY_GUID, "kernel"),
            initrd=_check_entry(padded.ht.initrd, SEV_INITRD_ENTRY_GUID, "initrd"),
            cmdline=_check_entry(padded.ht.cmdline, SEV_CMDLINE_ENTRY_GUID, "cmdline"),
        )

    def table(self) -> bytes:
        """The padded table exactly as QEMU measures it (176 bytes)."""
        padded = PaddedSevHashTable(
            ht=SevHashTable(
                guid=_guid(SEV_HASH_TABLE_HEADER_GUID),
                len=ctypes.sizeof(SevHashTable),
                cmdline=_entry(SEV_CMDLINE_ENTRY_GUID, self.cmdline),
                initrd=_entry(SEV_INITRD_ENTRY_GUID, self.initrd),
                kernel=_entry(SEV_KERNEL_ENTRY_GUID, self.kernel),
            )
        )
        return bytes(padded)
