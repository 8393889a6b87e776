"""ext4 and mount operations, plus the mount table reader."""

from __future__ import annotations

import os
import re
from pathlib import Path

from attestd.guest.errors import CommandFailed
from attestd.guest.runner import CommandRunner

EXT_TYPES = frozenset({"ext2", "ext3", "ext4"})
BLKID_NOTHING_FOUND = 2
_OCTAL = re.compile(r"\\([0-7]{3})")


def signature(runner: CommandRunner, device: str) -> str | None:
    """The type of the signature (filesystem, LUKS, ...) or partition table on ``device``.

    None only when blkid finds neither: a partitioned disk reports no ``TYPE``, just
    ``PTTYPE``, and must never be taken for a blank one.
    """
    result = runner.run(["blkid", "-p", "-o", "export", device])
    if result.returncode == BLKID_NOTHING_FOUND:
        return None
    if not result.ok:
        raise CommandFailed("blkid failed", result.stderr_text())
    found = dict(
        line.split("=", 1)
        for line in result.stdout.decode("utf-8", "replace").splitlines()
        if "=" in line
    )
    if found.get("TYPE"):
        return found["TYPE"]
    if found.get("PTTYPE"):
        return f"{found['PTTYPE']} partition table"
    return None


def mkfs(runner: CommandRunner, device: str, label: str) -> None:
    """Create an ext4 filesystem."""
    result = runner.run(["mkfs.ext4", "-q", "-F", "-L", label[:16], device])
    if not result.ok:
        raise CommandFailed("mkfs.ext4 failed", result.stderr_text())


def fsck(runner: CommandRunner, device: str) -> int:
    """``e2fsck -fy``; returns its status (0 clean, 1 or 2 repaired); >= 4 raises."""
    result = runner.run(["e2fsck", "-f", "-y", device])
    if result.returncode >= 4 or result.returncode < 0:
        raise CommandFailed(f"e2fsck failed with status {result.returncode}", result.stderr_text())
    return result.returncode


def resize(runner: CommandRunner, device: str) -> bool:
    """``resize2fs`` to the device size; True when the filesystem grew."""
    result = runner.run(["resize2fs", device])
    if not result.ok:
        raise CommandFailed("resize2fs failed", result.stderr_text())
    return b"Nothing to do" not in result.stdout + result.stderr


def mount(runner: CommandRunner, device: str, mount_point: Path) -> None:
    """Create the mount point and mount ``device`` on it as ext4."""
    try:
        mount_point.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandFailed(f"cannot create mount point: {exc.strerror}") from exc
    result = runner.run(["mount", "-t", "ext4", device, str(mount_point)])
    if not result.ok:
        raise CommandFailed("mount failed", result.stderr_text())


def mounted_points(mountinfo: Path) -> set[str]:
    """Mount points listed in a ``/proc/self/mountinfo``-format file."""
    points: set[str] = set()
    with mountinfo.open(encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4:
                points.add(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def is_mounted(mountinfo: Path, mount_point: Path) -> bool:
    """True when ``mount_point`` is a mount point now."""
    return os.path.normpath(mount_point) in mounted_points(mountinfo)
