"""The kernel hashes table (sev-protocol.md §6.3)."""

from __future__ import annotations

import ctypes
import hashlib
import struct
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ParseError
from attestd.sev.measure.sev_hashes import (
    TABLE_SIZE,
    KernelHashes,
    PaddedSevHashTable,
    SevHashTable,
)

digests = st.binary(min_size=32, max_size=32)


def spec_table(kernel: bytes, initrd: bytes, cmdline: bytes) -> bytes:
    """The table written out from the byte layout in sev-protocol.md §6.3."""

    def entry(guid: str, digest: bytes) -> bytes:
        return UUID(guid).bytes_le + struct.pack("<H", 50) + digest

    body = (
        entry("97d02dd8-bd20-4c94-aa78-e7714d36ab2a", cmdline)
        + entry("44baf731-3a2f-4bd7-9af1-41e29169781d", initrd)
        + entry("4de79437-abd2-427f-b835-d5b172d2045b", kernel)
    )
    header = UUID("9438d606-4f22-4cc9-b479-a793d411fd21").bytes_le + struct.pack("<H", 168)
    return header + body + bytes(8)


def test_struct_sizes() -> None:
    assert ctypes.sizeof(SevHashTable) == 168
    assert ctypes.sizeof(PaddedSevHashTable) == TABLE_SIZE == 176


def test_table_matches_spec_layout() -> None:
    hashes = KernelHashes.from_content(b"kernel", b"initrd", "console=ttyS0")
    expected = spec_table(
        hashlib.sha256(b"kernel").digest(),
        hashlib.sha256(b"initrd").digest(),
        hashlib.sha256(b"console=ttyS0\0").digest(),
    )
    assert hashes.table() == expected


def test_missing_initrd_and_cmdline() -> None:
    hashes = KernelHashes.from_content(b"k", None, None)
    assert hashes.initrd == hashlib.sha256(b"").digest()
    assert hashes.cmdline == hashlib.sha256(b"\0").digest()
    # An empty cmdline is hashed the same way QEMU hashes an absent one.
    assert KernelHashes.from_content(b"k", b"", "") == hashes


def test_cmdline_is_not_trimmed() -> None:
    padded = KernelHashes.from_content(b"k", None, " quiet ")
    assert padded.cmdline == hashlib.sha256(b" quiet \0").digest()
    assert padded != KernelHashes.from_content(b"k", None, "quiet")


def test_digest_length_is_checked() -> None:
    with pytest.raises(ParseError, match="kernel"):
        KernelHashes(kernel=bytes(31), initrd=bytes(32), cmdline=bytes(32))
    with pytest.raises(ParseError, match="cmdline"):
        KernelHashes(kernel=bytes(32), initrd=bytes(32), cmdline=bytes(48))


@settings(max_examples=50, deadline=None)
@given(digests, digests, digests)
def test_round_trip(kernel: bytes, initrd: bytes, cmdline: bytes) -> None:
    hashes = KernelHashes(kernel=kernel, initrd=initrd, cmdline=cmdline)
    table = hashes.table()
    assert table == spec_table(kernel, initrd, cmdline)
    assert KernelHashes.from_table(table) == hashes


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0, "header GUID"),
        (16, "length"),
        (18, "cmdline entry has the wrong GUID"),
        (18 + 16, "cmdline entry has length"),
        (18 + 50, "initrd entry has the wrong GUID"),
        (18 + 100 + 16, "kernel entry has length"),
        (170, "padding"),
    ],
)
def test_from_table_rejects_any_layout_change(offset: int, message: str) -> None:
    table = bytearray(KernelHashes.from_content(b"k", b"i", "c").table())
    table[offset] ^= 0x01
    with pytest.raises(ParseError, match=message):
        KernelHashes.from_table(bytes(table))


@pytest.mark.parametrize("length", [0, 168, 175, 177])
def test_from_table_wrong_length(length: int) -> None:
    with pytest.raises(ParseError):
        KernelHashes.from_table(bytes(length))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=176, max_size=176))
def test_random_tables_raise_only_parse_error(data: bytes) -> None:
    try:
        KernelHashes.from_table(data)
    except ParseError:
        pass
