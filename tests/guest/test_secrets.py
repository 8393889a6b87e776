"""Secret-table parsing (checked against sevctl's encrypted tables) and secret sources."""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
import tty
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from attestd.guest.errors import SecretSourceError
from attestd.guest.secrets import (
    SIM_SECRET_PORT,
    DirectorySource,
    SimulatedSecretArea,
    TableFileSource,
    TableHeader,
    find_sim_port,
    parse_table,
)
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


# -- the simulated secret area (simulated SEV: the table comes through a virtio-serial port)


@pytest.fixture
def port() -> Iterator[tuple[int, Path]]:
    """A character device standing in for /dev/vportNpM: a raw pty (master fd, slave path)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = Path(os.ttyname(slave))
    yield master, path
    os.close(master)
    os.close(slave)


def test_simulated_area_reads_exactly_one_table_even_when_it_comes_late(
    port: tuple[int, Path],
) -> None:
    master, path = port
    table = build_table([(GRUB_GUID, b"pw\0"), (uuid.UUID(int=7), b"x" * 300)])
    # the table arrives in two pieces after the agent started waiting; padding follows
    timer = threading.Timer(0.3, lambda: os.write(master, table[:10]))
    timer.start()
    threading.Timer(0.6, lambda: os.write(master, table[10:] + b"\0" * 16)).start()
    source = SimulatedSecretArea(path, timeout=10)
    assert source.read(GRUB_GUID) == b"pw\0"
    assert source.read(uuid.UUID(int=7)) == b"x" * 300
    source.consume(GRUB_GUID)
    assert source.read(GRUB_GUID) is None
    assert source.describe() == f"simulated secret area {path}"


def test_simulated_area_times_out_without_a_table(port: tuple[int, Path]) -> None:
    _, path = port
    with pytest.raises(SecretSourceError, match=r"no secret table .* within 0.2 s"):
        SimulatedSecretArea(path, timeout=0.2).read(GRUB_GUID)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (uuid.UUID(int=1).bytes_le + struct.pack("<I", 20), "unknown header GUID"),
        (HEADER_GUID.bytes_le + struct.pack("<I", 19), "out of range"),
        (HEADER_GUID.bytes_le + struct.pack("<I", (1 << 20) + 1), "out of range"),
    ],
)
def test_simulated_area_refuses_a_bad_header(
    port: tuple[int, Path], data: bytes, message: str
) -> None:
    master, path = port
    os.write(master, data)
    with pytest.raises(SecretSourceError, match=message):
        SimulatedSecretArea(path, timeout=2).read(GRUB_GUID)


def test_simulated_area_must_be_a_character_device(tmp_path: Path) -> None:
    table = tmp_path / "table.bin"
    table.write_bytes(build_table([(GRUB_GUID, b"pw\0")]))
    with pytest.raises(SecretSourceError, match="not a character device"):
        SimulatedSecretArea(table).read(GRUB_GUID)
    with pytest.raises(SecretSourceError, match="cannot open"):
        SimulatedSecretArea(tmp_path / "missing").read(GRUB_GUID)


def test_find_sim_port_by_udev_link_or_sysfs_name(tmp_path: Path) -> None:
    dev, ports = tmp_path / "dev", tmp_path / "sys"
    for name, port_name in (("vport1p1", "org.qemu.guest_agent.0"), ("vport2p1", SIM_SECRET_PORT)):
        (ports / name).mkdir(parents=True)
        (ports / name / "name").write_text(port_name + "\n")
    dev.mkdir()
    assert find_sim_port(dev, ports) is None  # sysfs names it, but there is no device node
    (dev / "vport2p1").touch()
    (dev / "vport1p1").touch()
    assert find_sim_port(dev, ports) == dev / "vport2p1"
    (dev / "virtio-ports").mkdir()
    (dev / "virtio-ports" / SIM_SECRET_PORT).symlink_to("../vport2p1")
    assert find_sim_port(dev, ports) == dev / "virtio-ports" / SIM_SECRET_PORT
    assert find_sim_port(tmp_path / "none", tmp_path / "none") is None


def test_cli_reads_the_simulated_area_only_when_told_or_without_efi_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from attestd.guest import cli

    vport = tmp_path / "vport2p1"
    monkeypatch.setattr(cli, "find_sim_port", lambda: vport)
    monkeypatch.setattr(cli, "SECURITYFS_DIR", tmp_path / "coco")
    default = cli.build_parser().parse_args(["bootstrap"])
    source = cli.source_from_args(default)
    assert isinstance(source, SimulatedSecretArea) and source.path == vport
    (tmp_path / "coco").mkdir()  # a real efi_secret: the simulated area is never read
    source = cli.source_from_args(default)
    assert isinstance(source, DirectorySource) and source.path == tmp_path / "coco"
    told = cli.build_parser().parse_args(["bootstrap", "--sim-secret-port", str(vport)])
    assert isinstance(cli.source_from_args(told), SimulatedSecretArea)
    other = cli.build_parser().parse_args(["bootstrap", "--secrets-dir", str(tmp_path)])
    assert isinstance(cli.source_from_args(other), DirectorySource)
