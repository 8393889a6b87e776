"""Regressions for defects found by trying to break the agent."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from attestd.guest import cli, fs
from attestd.guest.agent import Agent
from attestd.guest.errors import ConflictError, PayloadError, SecretSourceError
from attestd.guest.payload import PAYLOAD_GUID, RotateSpec, validate, validate_rotation
from attestd.guest.runner import SubprocessRunner
from attestd.guest.secrets import DirectorySource
from tests.guest.conftest import Guest
from tests.guest.helpers import RecordingRunner, luks_format_file, payload_bytes, payload_doc


def _two_volumes() -> dict[str, object]:
    return payload_doc(
        data={"device": "virtio:data", "passphrase": "pw-data"},
        logs={"device": "virtio:logs", "passphrase": "pw-logs"},
    )


def _write_mbr(disk: Path) -> None:
    """One Linux partition in an MBR: blkid reports PTTYPE, and no TYPE at all."""
    entry = struct.pack("<B3sB3sII", 0, bytes(3), 0x83, bytes(3), 2048, 8192)
    with disk.open("r+b") as fh:
        fh.seek(446)
        fh.write(entry)
        fh.seek(510)
        fh.write(b"\x55\xaa")


def test_partitioned_disk_is_never_formatted(guest: Guest) -> None:
    """A disk with a partition table but no filesystem signature is not blank."""
    data = guest.disk("data")
    guest.disk("logs")
    _write_mbr(data)
    before = data.read_bytes()[: 1 << 20]
    assert fs.signature(SubprocessRunner(), str(data)) == "dos partition table"
    result = guest.agent().bootstrap(validate(_two_volumes()))
    assert result.volumes["data"].error == (
        "device holds a dos partition table signature; refusing to format"
    )
    assert result.volumes["logs"].ok
    assert data.read_bytes()[: 1 << 20] == before
    assert not any("luksFormat" in c and str(data) in c for c in guest.runner.calls)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("mount_point", "/proc/sys"),
        ("mount_point", "/sys/kernel/security"),  # would hide the efi_secret entries
        ("mount_point", "/dev/mapper"),
        ("mount_point", "/dev/disk/by-id"),
        ("name", "control"),  # /dev/mapper/control is device-mapper's control node
    ],
)
def test_pseudo_filesystems_and_dm_control_refused(where: str, value: str) -> None:
    doc = _two_volumes()
    vols = doc["volumes"]
    assert isinstance(vols, dict)
    if where == "name":
        vols[value] = vols.pop("data")
    else:
        vols["data"]["mount_point"] = value
    with pytest.raises(PayloadError, match=r"pseudo filesystem|invalid volume name"):
        validate(doc)
    rotation = {"volumes": {"control": {"old_passphrase": "a", "new_passphrase": "b"}}}
    with pytest.raises(PayloadError, match="invalid volume name"):
        validate_rotation(rotation)


GOOD_VOLUME = {"device": "virtio:data", "mount_point": "/data"}


@pytest.mark.parametrize(
    "record",
    [
        {"version": 1, "volumes": {"x": {}}},
        {"version": 1, "user_id": "u", "fingerprint": "f", "volumes": []},
        {"version": 1, "user_id": "u", "fingerprint": "f", "volumes": {"x": {"mount_point": 5}}},
        {"version": 1, "user_id": "u", "fingerprint": "f",
         "volumes": {"x": {"device": "virtio:x", "mount_point": "/"}}},
        {"version": 1, "user_id": "u", "fingerprint": "f",
         "volumes": {"x": {"device": "/etc/shadow", "mount_point": "/x"}}},
        {"version": 1, "user_id": 7, "fingerprint": "f", "volumes": {"data": GOOD_VOLUME}},
        {"version": 1, "user_id": "u", "fingerprint": None, "volumes": {"data": GOOD_VOLUME}},
        {"version": 1, "user_id": "u", "fingerprint": "f", "volumes": {"data": GOOD_VOLUME},
         "passphrase": "x"},
        {"version": 1, "user_id": "u", "fingerprint": "f", "volumes": {"data": GOOD_VOLUME},
         "input_mac": "zz" * 32},
    ],
)  # fmt: skip
def test_tampered_state_record_is_ignored(guest: Guest, record: dict[str, object]) -> None:
    """A record edited on disk never crashes recovery or status, and never makes it ready."""
    guest.config.run_dir.mkdir(parents=True)
    (guest.config.run_dir / "bootstrap.json").write_text(json.dumps(record))
    # "/" and everything else is mounted in this mountinfo
    info = guest.root / "mountinfo"
    info.write_text("".join(f"1 0 0:1 / {p} rw - ext4 /dev/x rw\n" for p in ("/", "/x", "/data")))
    agent = Agent(replace(guest.config, mountinfo=info, mount_root=Path("/")), guest.runner)
    assert agent.load_record() is None
    assert not agent.recover() and agent.status == "bootstrap"
    assert agent.describe() == {"status": "bootstrap"}


def test_intact_state_record_still_recovers(guest: Guest) -> None:
    """The checks above accept what the agent itself writes."""
    guest.disk("data")
    guest.disk("logs")
    assert guest.agent().bootstrap(validate(_two_volumes())).ok
    agent = guest.agent()
    assert agent.recover() and agent.status == "ready"


def test_second_process_cannot_run_an_operation_meanwhile(guest: Guest) -> None:
    """``bootstrap`` from the unit and ``serve`` (or two CLIs) never both format a disk."""
    guest.disk("data")
    guest.disk("logs")
    guest.config.run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX);"
         " print('locked', flush=True); sys.stdin.read()",
         str(guest.config.run_dir / "lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        rec = RecordingRunner()
        with pytest.raises(ConflictError, match="another attestd-guest process"):
            Agent(guest.config, rec).bootstrap(validate(_two_volumes()))
        with pytest.raises(ConflictError, match="another attestd-guest process"):
            Agent(guest.config, rec).rotate({"data": RotateSpec("data", b"a", b"b")})
        assert rec.calls == []
    finally:
        holder.communicate("")
    assert guest.agent().bootstrap(validate(_two_volumes())).ok


def test_secret_entry_that_is_not_a_file_is_refused_without_hanging(tmp_path: Path) -> None:
    entry = tmp_path / PAYLOAD_GUID
    os.mkfifo(entry)
    with pytest.raises(SecretSourceError, match="not a regular file"):
        DirectorySource(tmp_path).read(uuid.UUID(PAYLOAD_GUID))
    entry.unlink()
    entry.mkdir()
    with pytest.raises(SecretSourceError):
        DirectorySource(tmp_path).read(uuid.UUID(PAYLOAD_GUID))
    entry.rmdir()
    (tmp_path / "unrelated").write_text("ignored")
    assert DirectorySource(tmp_path).read(uuid.UUID(PAYLOAD_GUID)) is None


def test_no_key_or_secret_value_in_logs_or_output(
    guest: Guest, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debug logging and the CLI's JSON, with a failing volume, carry no key material."""
    guest.disk("data")
    bad = guest.disk("logs")
    luks_format_file(bad, b"someone-else")
    doc = _two_volumes()
    doc["secret"] = {"db.env": {"DB_PASSWORD": "sekrit-value-9"}}
    (guest.secrets / PAYLOAD_GUID).write_bytes(payload_bytes(doc))
    caplog.set_level(logging.DEBUG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "config_from_args", lambda _args: guest.config)
        mp.setattr(cli, "SubprocessRunner", lambda **_kw: guest.runner)
        code = cli.main(["--log-level", "debug", "bootstrap", "--secrets-dir", str(guest.secrets)])
    assert code == cli.EXIT_VOLUMES_FAILED
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err
    assert "run: cryptsetup luksFormat <arguments withheld>" in caplog.text
    for secret in ("pw-data", "pw-logs", "sekrit-value-9"):
        assert secret not in text
    assert json.loads(out.out)["volumes"]["logs"]["status"] == "error"
