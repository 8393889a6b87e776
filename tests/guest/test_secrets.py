"""Secret-table parsing (checked against sevctl's encrypted tables) and secret sources."""

from __future__ import annotations

import base64
import json
import struct
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from attestd.guest.errors import SecretSourceError
from attestd.guest.secrets import DirectorySource, TableFileSource, TableHeader, parse_table
from tests.guest.helpers import HEADER_GUID, build_table

GRUB_GUID = uuid.UUID("736869e5-84f0-4973-92ec-06879ce3da0b")


def _sevctl_plaintext(testdata: Path, case: dict[str, object]) -> bytes:
    kat = testdata / "sev"
    tek = (kat / str(case["tek_file"])).read_bytes()
    iv = base64.b64decode(str(case["iv_b64"]))
    ciphertext = base64.b64decode(str(case["expected_payload_b64"]))
    dec = Cipher(algorithms.AES(tek), modes.CTR(iv)).decryptor()
    return dec.update(ciphertext) + dec.finalize()


@pytest.mark.parametrize("index", [0, 1])
def test_parse_sevctl_tables(testdata: Path, index: int) -> None:
    """sevctl's encrypted secret tables decrypt to tables we parse and rebuild byte-exactly."""
    vectors = json.loads((testdata / "sev" / "kat" / "vectors.json").read_text())
    case = vectors["secret"][index]
    plain = _sevctl_plaintext(testdata, case)
    assert len(plain) == case["expected_table_len"]
    entries = parse_table(plain)
    expected = [
        (uuid.UUID(s["guid"]), (testdata / "sev" / s["file"]).read_bytes()) for s in case["secrets"]
    ]
    assert list(entries.items()) == expected
    assert build_table(expected) == plain


def test_header_roundtrip() -> None:
    raw = HEADER_GUID.bytes_le + struct.pack("<I", 20)
    assert TableHeader.unpack(raw).pack() == raw
    with pytest.raises(SecretSourceError):
        TableHeader.unpack(raw[:-1])


def test_deleted_entries_skipped() -> None:
    table = build_table([(uuid.UUID(int=0), b"gone"), (GRUB_GUID, b"pw\0")])
    assert parse_table(table) == {GRUB_GUID: b"pw\0"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: b"\x00" * 16 + t[16:], "header GUID"),
        (lambda t: t[:16] + struct.pack("<I", 19) + t[20:], "length field"),
        (lambda t: t[:16] + struct.pack("<I", 4096) + t[20:], "length field"),
        (lambda t: t[:36] + struct.pack("<I", 19) + t[40:], "corrupted"),
        (lambda t: t[:36] + struct.pack("<I", 200) + t[40:], "corrupted"),
        (lambda t: t[:10], "shorter"),
    ],
)
def test_corrupt_tables_refused(mutate: object, message: str) -> None:
    table = build_table([(GRUB_GUID, b"secret")])
    with pytest.raises(SecretSourceError, match=message):
        parse_table(mutate(table))  # type: ignore[operator]


def test_duplicate_and_too_many_entries() -> None:
    with pytest.raises(SecretSourceError, match="twice"):
        parse_table(build_table([(GRUB_GUID, b"a"), (GRUB_GUID, b"b")]))
    many = [(uuid.UUID(int=i + 1), b"x") for i in range(65)]
    with pytest.raises(SecretSourceError, match="64"):
        parse_table(build_table(many))
    assert len(parse_table(build_table(many[:64]))) == 64


def test_directory_source_reads_and_consumes(tmp_path: Path) -> None:
    (tmp_path / str(GRUB_GUID)).write_bytes(b"pw")
    source = DirectorySource(tmp_path)
    assert source.read(GRUB_GUID) == b"pw"
    assert source.read(uuid.UUID(int=5)) is None
    source.consume(GRUB_GUID)
    assert not (tmp_path / str(GRUB_GUID)).exists()
    source.consume(GRUB_GUID)  # already gone is fine
    with pytest.raises(SecretSourceError, match="does not exist"):
        DirectorySource(tmp_path / "missing").read(GRUB_GUID)


def test_table_file_source(tmp_path: Path) -> None:
    path = tmp_path / "table.bin"
    path.write_bytes(build_table([(GRUB_GUID, b"pw")]))
    source = TableFileSource(path)
    assert source.read(GRUB_GUID) == b"pw"
    source.consume(GRUB_GUID)
    assert source.read(GRUB_GUID) is None
    assert path.exists()
    with pytest.raises(SecretSourceError, match="cannot read"):
        TableFileSource(tmp_path / "nope").read(GRUB_GUID)
