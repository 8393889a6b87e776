"""cryptsetup operations. Keys go on stdin (``--key-file=-``) or, for a second key, in a
private file (``KEY_FD``, see ``attestd.guest.runner``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from attestd.guest.errors import CommandFailed
from attestd.guest.runner import KEY_FD, CommandRunner

logger = logging.getLogger(__name__)

CRYPTSETUP = "cryptsetup"
FORMAT_ARGS = (
    "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512", "--pbkdf", "argon2id",
)  # fmt: skip
EXIT_WRONG_KEY = 2
"""cryptsetup's status for "No key available with this passphrase"."""


def is_luks(runner: CommandRunner, device: str) -> bool:
    """True when ``device`` carries any LUKS header."""
    return runner.run([CRYPTSETUP, "isLuks", device]).ok


def is_luks2(runner: CommandRunner, device: str) -> bool:
    """True when ``device`` carries a LUKS2 header."""
    return runner.run([CRYPTSETUP, "isLuks", "--type", "luks2", device]).ok


def luks_format(
    runner: CommandRunner, device: str, key: bytes, pbkdf_args: Sequence[str] = ()
) -> None:
    """``luksFormat`` as LUKS2, aes-xts-plain64, 512-bit key, argon2id."""
    argv = [CRYPTSETUP, "luksFormat", "--batch-mode", *FORMAT_ARGS, *pbkdf_args]
    result = runner.run([*argv, "--key-file=-", device], stdin=key)
    if not result.ok:
        raise CommandFailed("luksFormat failed", result.stderr_text())


def luks_open(runner: CommandRunner, device: str, name: str, key: bytes) -> None:
    """Activate ``device`` as ``/dev/mapper/<name>`` (its whole current size)."""
    result = runner.run(
        [CRYPTSETUP, "open", "--type", "luks2", "--key-file=-", device, name], stdin=key
    )
    if result.returncode == EXIT_WRONG_KEY:
        raise CommandFailed(
            "luksOpen failed: the passphrase opens no keyslot", result.stderr_text()
        )
    if not result.ok:
        raise CommandFailed("luksOpen failed", result.stderr_text())


def keyslots(runner: CommandRunner, device: str) -> list[int]:
    """The numbers of the LUKS2 keyslots in use."""
    result = runner.run([CRYPTSETUP, "luksDump", "--dump-json-metadata", device])
    if not result.ok:
        raise CommandFailed("luksDump failed", result.stderr_text())
    try:
        meta = json.loads(result.stdout)
        return sorted(int(slot) for slot in meta["keyslots"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandFailed("luksDump printed unexpected metadata") from exc


def test_passphrase(
    runner: CommandRunner, device: str, key: bytes, slot: int | None = None
) -> bool:
    """True when ``key`` opens ``device`` (or the given keyslot); False when it does not."""
    argv = [CRYPTSETUP, "open", "--test-passphrase", "--type", "luks2", "--key-file=-"]
    if slot is not None:
        argv.append(f"--key-slot={slot}")
    result = runner.run([*argv, device], stdin=key)
    if result.ok:
        return True
    if result.returncode == EXIT_WRONG_KEY:
        return False
    raise CommandFailed("passphrase test failed", result.stderr_text())


def kill_slot(runner: CommandRunner, device: str, slot: int, remaining_key: bytes) -> None:
    """``luksKillSlot`` without batch mode: cryptsetup checks ``remaining_key`` opens a
    slot other than ``slot``. It does NOT protect the last slot (it kills it anyway):
    callers must first prove another slot opens, as ``remove_stale_keyslots`` does."""
    result = runner.run(
        [CRYPTSETUP, "luksKillSlot", "--key-file=-", device, str(slot)], stdin=remaining_key
    )
    if not result.ok:
        raise CommandFailed(f"luksKillSlot {slot} failed", result.stderr_text())


def remove_stale_keyslots(
    runner: CommandRunner, device: str, key: bytes
) -> tuple[list[int], list[str]]:
    """Remove every keyslot ``key`` does not open (best effort).

    Returns (removed slots, warnings). Nothing is removed unless at least one slot
    has been proven to open with ``key``.
    """
    slots = keyslots(runner, device)
    good = [s for s in slots if test_passphrase(runner, device, key, s)]
    if not good:
        return [], ["no keyslot opens with the bootstrap passphrase; nothing removed"]
    removed: list[int] = []
    warnings: list[str] = []
    for slot in slots:
        if slot in good:
            continue
        try:
            kill_slot(runner, device, slot, key)
            removed.append(slot)
            logger.info("removed stale keyslot %d of %s", slot, device)
        except CommandFailed as exc:
            warnings.append(f"{exc.message}: {exc.detail}")
    return removed, warnings


def add_key(
    runner: CommandRunner,
    device: str,
    old_key: bytes,
    new_key: bytes,
    pbkdf_args: Sequence[str] = (),
) -> None:
    """``luksAddKey``: the old key on stdin, the new one in a private file (no /dev/fd)."""
    argv = [CRYPTSETUP, "luksAddKey", "--batch-mode", "--pbkdf", "argon2id", *pbkdf_args]
    result = runner.run(
        [*argv, "--key-file=-", f"--new-keyfile={KEY_FD}", device], stdin=old_key, key_fd=new_key
    )
    if result.returncode == EXIT_WRONG_KEY:
        raise CommandFailed("luksAddKey failed: the old passphrase opens no keyslot")
    if not result.ok:
        raise CommandFailed("luksAddKey failed", result.stderr_text())
