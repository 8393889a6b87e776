"""Issue 5 acceptance audit: regressions for defects found by trying to break the agent."""

from __future__ import annotations

import struct
from pathlib import Path

from attestd.guest import fs
from attestd.guest.payload import validate
from attestd.guest.runner import SubprocessRunner
from tests.guest.conftest import Guest
from tests.guest.helpers import payload_doc


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
