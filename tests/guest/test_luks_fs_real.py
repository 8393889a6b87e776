"""Real cryptsetup, mkfs.ext4, e2fsck and resize2fs on files (no device-mapper needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attestd.guest import fs, luks
from attestd.guest.errors import CommandFailed
from attestd.guest.runner import KEY_FD, SubprocessRunner
from tests.guest.helpers import CHEAP_PBKDF, luks_format_file, sh

RUN = SubprocessRunner()


def _dump(path: Path) -> dict[str, object]:
    return json.loads(sh("cryptsetup", "luksDump", "--dump-json-metadata", str(path)))


def test_format_parameters(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    dev.write_bytes(bytes(32 << 20))
    assert not luks.is_luks(RUN, str(dev))
    luks.luks_format(RUN, str(dev), b"pass\nword", CHEAP_PBKDF)
    assert luks.is_luks2(RUN, str(dev))
    meta = _dump(dev)
    segment = meta["segments"]["0"]  # type: ignore[index]
    assert segment["encryption"] == "aes-xts-plain64"
    slot = meta["keyslots"]["0"]  # type: ignore[index]
    assert slot["key_size"] == 64 and slot["kdf"]["type"] == "argon2id"
    # the key is used byte-exact from stdin: the newline is part of it
    assert luks.test_passphrase(RUN, str(dev), b"pass\nword")
    assert not luks.test_passphrase(RUN, str(dev), b"pass")
    assert fs.signature(RUN, str(dev)) == "crypto_LUKS"


def test_luks1_is_not_luks2(tmp_path: Path) -> None:
    dev = tmp_path / "old.img"
    dev.write_bytes(bytes(16 << 20))
    sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--iter-time=1",
       "--key-file=-", str(dev), stdin=b"k")  # fmt: skip
    assert luks.is_luks(RUN, str(dev)) and not luks.is_luks2(RUN, str(dev))


def test_stale_keyslots_removed_keep_working_one(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    luks_format_file(dev, b"stale-1")
    for old, new in ((b"stale-1", b"boot"), (b"stale-1", b"stale-2")):
        luks.add_key(RUN, str(dev), old, new, CHEAP_PBKDF)
    assert luks.keyslots(RUN, str(dev)) == [0, 1, 2]
    removed, warnings = luks.remove_stale_keyslots(RUN, str(dev), b"boot")
    assert (removed, warnings) == ([0, 2], [])
    assert luks.keyslots(RUN, str(dev)) == [1]
    assert luks.test_passphrase(RUN, str(dev), b"boot")
    assert not luks.test_passphrase(RUN, str(dev), b"stale-1")


def test_stale_cleanup_never_removes_last_slot(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    luks_format_file(dev, b"other")
    removed, warnings = luks.remove_stale_keyslots(RUN, str(dev), b"boot")
    assert removed == [] and "nothing removed" in warnings[0]
    assert luks.keyslots(RUN, str(dev)) == [0]
    assert luks.test_passphrase(RUN, str(dev), b"other")


def test_kill_slot_needs_a_key_for_another_slot(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    luks_format_file(dev, b"a")
    luks.add_key(RUN, str(dev), b"a", b"b", CHEAP_PBKDF)
    for key in (b"wrong", b"b"):  # b opens only the slot being killed
        with pytest.raises(CommandFailed, match="luksKillSlot 1"):
            luks.kill_slot(RUN, str(dev), 1, key)
    assert luks.keyslots(RUN, str(dev)) == [0, 1]
    luks.kill_slot(RUN, str(dev), 1, b"a")
    assert luks.keyslots(RUN, str(dev)) == [0]


def test_add_key_rotation(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    luks_format_file(dev, b"old")
    with pytest.raises(CommandFailed, match="old passphrase opens no keyslot"):
        luks.add_key(RUN, str(dev), b"wrong", b"new", CHEAP_PBKDF)
    luks.add_key(RUN, str(dev), b"old", b"new\x00with nul and \n", CHEAP_PBKDF)
    assert luks.test_passphrase(RUN, str(dev), b"new\x00with nul and \n")
    assert luks.test_passphrase(RUN, str(dev), b"old")
    assert luks.keyslots(RUN, str(dev)) == [0, 1]


def test_keys_never_in_argv(tmp_path: Path) -> None:
    """The real runner puts keys on stdin and a pipe; argv only has the placeholder."""
    from tests.guest.helpers import RecordingRunner

    rec = RecordingRunner()
    luks.luks_format(rec, "/dev/x", b"K1", ())
    luks.add_key(rec, "/dev/x", b"K1", b"K2", ())
    luks.luks_open(rec, "/dev/x", "data", b"K1")
    luks.kill_slot(rec, "/dev/x", 3, b"K1")
    for argv, stdin, _key_fd in rec.calls:
        assert not any("K1" in a or "K2" in a for a in argv)
        assert stdin == b"K1"
    assert rec.calls[1][2] == b"K2" and f"--new-keyfile={KEY_FD}" in rec.calls[1][0]


def test_filesystem_check_and_grow(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    with img.open("wb") as fh:
        fh.truncate(16 << 20)
    assert fs.signature(RUN, str(img)) is None
    fs.mkfs(RUN, str(img), "data")
    assert fs.signature(RUN, str(img)) == "ext4"
    assert fs.fsck(RUN, str(img)) == 0
    assert not fs.resize(RUN, str(img))
    with img.open("r+b") as fh:
        fh.truncate(48 << 20)
    assert fs.resize(RUN, str(img))
    blocks = sh("dumpe2fs", "-h", str(img))
    count = int(next(ln for ln in blocks.splitlines() if ln.startswith("Block count:")).split()[-1])
    size = int(next(ln for ln in blocks.splitlines() if ln.startswith("Block size:")).split()[-1])
    assert count * size == 48 << 20


def test_fsck_repairs_and_fails(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    with img.open("wb") as fh:
        fh.truncate(8 << 20)
    fs.mkfs(RUN, str(img), "data")
    sh("debugfs", "-w", "-R", "ssv state 0", str(img))  # mark not cleanly unmounted
    sh("debugfs", "-w", "-R", "ssv free_blocks_count 1", str(img))
    assert fs.fsck(RUN, str(img)) in (1, 2)
    assert fs.fsck(RUN, str(img)) == 0
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"\x55" * (1 << 20))
    with pytest.raises(CommandFailed, match="e2fsck failed"):
        fs.fsck(RUN, str(garbage))


def test_mountinfo_parsing(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "23 22 253:0 / /data\\040disk rw - ext4 /dev/mapper/data rw\n"
    )
    assert fs.mounted_points(info) == {"/", "/data disk"}
    assert fs.is_mounted(info, Path("/data disk/"))
    assert not fs.is_mounted(info, Path("/data"))


NO_DEV_FD = """
import os, stat, subprocess, sys
from pathlib import Path
nodes = {p: os.stat(p) for p in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", DEVICE)}
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "minidev", "/dev"], check=True)
for path, st in nodes.items():
    kind = stat.S_IFBLK if stat.S_ISBLK(st.st_mode) else stat.S_IFCHR
    os.mknod(path, kind | 0o666, st.st_rdev)
assert not os.path.exists("/dev/fd") and not os.path.exists("/dev/fd/0")
from attestd.guest import luks
from attestd.guest.runner import SubprocessRunner
runner = SubprocessRunner(key_dir=Path(KEY_DIR))
luks.add_key(runner, DEVICE, b"old", b"new key", ("--pbkdf-memory=1024", "--pbkdf-parallel=1",
             "--pbkdf-force-iterations=4"))
print("added")
"""


def test_add_key_on_a_loop_device_without_dev_fd(tmp_path: Path) -> None:
    """A minimal guest has no /dev/fd: luksAddKey still gets its new key (private file)."""
    image = tmp_path / "disk.img"
    luks_format_file(image, b"old")
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    key_dir = tmp_path / "run"
    key_dir.mkdir(mode=0o700)
    try:
        code = NO_DEV_FD.replace("DEVICE", repr(loop)).replace("KEY_DIR", repr(str(key_dir)))
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip() == "added", out.stderr
        assert luks.test_passphrase(RUN, loop, b"new key")
        assert luks.keyslots(RUN, loop) == [0, 1]
        assert list(key_dir.iterdir()) == []  # the key file and its directory are gone
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
