"""EFI secret table and LAUNCH_SECRET packet: sevctl known answers, limits, tampering."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import AttestationFailed, ParseError, SecretTooLarge, Unsupported
from attestd.sev.secrets import (
    FIRMWARE_SECRET_MAX,
    LUKS_KEY_GUID,
    SECRET_TABLE_GUID,
    LaunchSecret,
    SecretEntry,
    SecretHeader,
    _seal_launch_secret,
    build_secret_table,
    open_launch_secret,
    parse_secret_table,
)
from attestd.sev.session import FirmwareVersion, TransportKeys
from tests.sev.session_kat import b64, read, vectors

KEYS = TransportKeys(b"\x10" * 16, b"\x20" * 16)
MEASURE = b"\x30" * 32


def _packet_cases(testdata: Path) -> list[dict[str, Any]]:
    return [c for c in vectors(testdata, "secret") if "expected_header_b64" in c]


def test_sevctl_secret_packets_reproduce(testdata: Path) -> None:
    cases = _packet_cases(testdata)
    assert len(cases) == 2
    for case in cases:
        keys = TransportKeys(read(testdata, case["tek_file"]), read(testdata, case["tik_file"]))
        entries = [SecretEntry(UUID(s["guid"]), read(testdata, s["file"])) for s in case["secrets"]]
        table = build_secret_table(entries)
        assert len(table) == case["expected_table_len"]
        measure = b64(case["launch_measure_blob_b64"])[:32]
        packet = _seal_launch_secret(keys, measure, table, iv=b64(case["iv_b64"]))
        assert packet.header == b64(case["expected_header_b64"])
        assert packet.ciphertext == b64(case["expected_payload_b64"])
        assert SecretHeader.unpack(packet.header).flags == case["flags_u32"] == 0
        assert open_launch_secret(keys, measure, packet) == table
        assert parse_secret_table(table) == entries


def test_sevctl_size_limit_vector(testdata: Path) -> None:
    case = next(c for c in vectors(testdata, "secret") if "secrets_a" in c)
    for key in ("secrets_a", "secrets_b"):
        entries = [SecretEntry(UUID(s["guid"]), read(testdata, s["file"])) for s in case[key]]
        table = build_secret_table(entries)
        assert len(table) == 16384
        assert parse_secret_table(table) == entries
        with pytest.raises(SecretTooLarge):
            build_secret_table(entries, max_size=3072)


def test_table_layout() -> None:
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"abc")])
    assert (
        table[:16]
        == SECRET_TABLE_GUID.bytes_le
        == bytes.fromhex("42f5741edd71664d963eef4287ff173b")
    )
    assert struct.unpack_from("<I", table, 16)[0] == 20 + 20 + 3  # padding is not counted
    assert table[20:36] == LUKS_KEY_GUID.bytes_le
    assert struct.unpack_from("<I", table, 36)[0] == 23
    assert table[40:43] == b"abc" and table[43:] == bytes(5) and len(table) == 48


def test_table_refusals() -> None:
    with pytest.raises(ParseError):
        build_secret_table([SecretEntry(UUID(int=0), b"x")])
    with pytest.raises(ParseError):
        build_secret_table([SecretEntry(LUKS_KEY_GUID, b"x"), SecretEntry(LUKS_KEY_GUID, b"y")])
    with pytest.raises(SecretTooLarge):
        build_secret_table([SecretEntry(LUKS_KEY_GUID, bytes(FIRMWARE_SECRET_MAX))])
    exact = build_secret_table([SecretEntry(LUKS_KEY_GUID, bytes(3072 - 40))], max_size=3072)
    assert len(exact) == 3072
    with pytest.raises(SecretTooLarge):
        build_secret_table([SecretEntry(LUKS_KEY_GUID, bytes(3072 - 39))], max_size=3072)


def test_parse_refusals() -> None:
    good = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"abc")])
    with pytest.raises(ParseError):
        parse_secret_table(good[:19])
    with pytest.raises(ParseError):
        parse_secret_table(b"\x00" + good[1:])  # header GUID
    with pytest.raises(ParseError):
        parse_secret_table(good[:-1] + b"\x01")  # non-zero padding
    with pytest.raises(ParseError):
        parse_secret_table(good[:16] + struct.pack("<I", 200) + good[20:])  # total too big
    with pytest.raises(ParseError):
        parse_secret_table(good[:36] + struct.pack("<I", 19) + good[40:])  # entry too short


def test_packet_mac_covers_ciphertext_and_measure() -> None:
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"passphrase")])
    packet = _seal_launch_secret(KEYS, MEASURE, table)
    assert open_launch_secret(KEYS, MEASURE, packet) == table
    flipped = bytes([packet.ciphertext[0] ^ 1]) + packet.ciphertext[1:]
    for bad_keys, bad_measure, bad_packet in (
        (KEYS, MEASURE, LaunchSecret(packet.header, flipped)),
        (KEYS, b"\x31" + MEASURE[1:], packet),
        (TransportKeys(KEYS.tek, b"\x21" * 16), MEASURE, packet),
        (
            KEYS,
            MEASURE,
            LaunchSecret(packet.header[:-1] + bytes([packet.header[-1] ^ 1]), packet.ciphertext),
        ),
        (
            KEYS,
            MEASURE,
            LaunchSecret(packet.header[:4] + b"\x00" * 16 + packet.header[20:], packet.ciphertext),
        ),
    ):
        with pytest.raises(AttestationFailed, match="MAC"):
            open_launch_secret(bad_keys, bad_measure, bad_packet)


def test_wrong_tek_decrypts_to_garbage_not_the_table() -> None:
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"passphrase")])
    packet = _seal_launch_secret(KEYS, MEASURE, table)
    assert packet.ciphertext != table
    other = TransportKeys(b"\x11" * 16, KEYS.tik)
    assert open_launch_secret(other, MEASURE, packet) != table


def test_fresh_iv_per_packet() -> None:
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"k")])
    first, second = (_seal_launch_secret(KEYS, MEASURE, table) for _ in range(2))
    assert SecretHeader.unpack(first.header).iv != SecretHeader.unpack(second.header).iv
    assert first.ciphertext != second.ciphertext


def test_old_api_leaves_measure_out_of_the_mac() -> None:
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"k")])
    old = FirmwareVersion(0, 16, 0)
    packet = _seal_launch_secret(KEYS, MEASURE, table, version=old, iv=b"\x01" * 16)
    assert open_launch_secret(KEYS, b"\x00" * 32, packet, version=old) == table
    with pytest.raises(AttestationFailed):
        open_launch_secret(KEYS, MEASURE, packet, version=FirmwareVersion(1, 55, 0))


def test_packet_size_and_flag_checks() -> None:
    with pytest.raises(ParseError):
        _seal_launch_secret(KEYS, MEASURE, b"\x00" * 17)
    with pytest.raises(ParseError):
        _seal_launch_secret(KEYS, MEASURE, b"")
    with pytest.raises(SecretTooLarge):
        _seal_launch_secret(KEYS, MEASURE, bytes(FIRMWARE_SECRET_MAX + 16))
    with pytest.raises(SecretTooLarge):
        _seal_launch_secret(KEYS, MEASURE, bytes(4096 + 16), area_size=4096)
    assert len(_seal_launch_secret(KEYS, MEASURE, bytes(FIRMWARE_SECRET_MAX)).ciphertext) == 0x5000
    with pytest.raises(ParseError):
        _seal_launch_secret(KEYS, MEASURE, bytes(16), iv=b"\x00" * 8)
    packet = _seal_launch_secret(KEYS, MEASURE, bytes(32))
    compressed = LaunchSecret(b"\x01" + packet.header[1:], packet.ciphertext)
    with pytest.raises(Unsupported):
        open_launch_secret(KEYS, MEASURE, compressed)
    with pytest.raises(ParseError):
        open_launch_secret(KEYS, MEASURE, LaunchSecret(packet.header[:51], packet.ciphertext))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=128))
def test_table_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        parse_secret_table(SECRET_TABLE_GUID.bytes_le + data)
    except ParseError:
        pass


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.uuids(), st.binary(max_size=64)), max_size=5, unique_by=lambda t: t[0])
)
def test_table_round_trips(items: list[tuple[UUID, bytes]]) -> None:
    entries = [SecretEntry(g, d) for g, d in items if g.int != 0]
    table = build_secret_table(entries)
    assert len(table) % 16 == 0
    assert parse_secret_table(table) == entries


def test_truncated_or_extended_secret_header_names_the_size() -> None:
    """The exact-length check of attestd.sev._binary, with its one message."""
    for data in (bytes(51), bytes(53), b""):
        with pytest.raises(
            ParseError, match=f"^secret header: expected 52 bytes, got {len(data)}$"
        ):
            SecretHeader.unpack(data)
