"""Encryption at rest for secrets, generated passphrases and TEK/TIK.

The key file holds one URL-safe base64 Fernet key per line; the first line
encrypts, every line decrypts (``MultiFernet``). ``attestd keys rotate`` puts a
new key first and re-encrypts every stored value with it. A key ring read from a
file notices when the file was replaced (a rotation) and reloads it before its next
use, so running services keep working across ``keys rotate`` without a restart.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from attestd.errors import ParseError, StorageKeyError
from attestd.files import private_dir

logger = logging.getLogger(__name__)


class KeyRing:
    """A MultiFernet over the keys of one key file (reloaded when the file changes)."""

    def __init__(self, keys: Sequence[bytes], *, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp = _stamp(path) if path is not None else None
        self._multi = _multi(keys)

    def _current(self) -> MultiFernet:
        """The keys, re-read first if the key file was replaced since they were read."""
        if self._path is None:
            return self._multi
        stamp = _stamp(self._path)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._multi = _multi(_read_keys(self._path))
                    self._stamp = stamp
                    logger.info("storage key file %s changed; keys reloaded", self._path)
        return self._multi

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt with the primary key."""
        return self._current().encrypt(plaintext)

    def decrypt(self, token: bytes) -> bytes:
        """Decrypt with any key; fails closed."""
        try:
            return self._current().decrypt(token)
        except InvalidToken:
            raise StorageKeyError("stored value does not decrypt with the storage keys") from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` under the primary key."""
        try:
            return self._current().rotate(token)
        except InvalidToken:
            raise StorageKeyError("stored value does not decrypt with the storage keys") from None

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Read a key file (and follow later replacements of it)."""
        stamp = _stamp(path) if path.exists() else None  # before reading: never miss a change
        ring = cls(_read_keys(path), path=path)
        ring._stamp = stamp
        return ring

    @classmethod
    def snapshot(cls, path: Path) -> KeyRing:
        """The keys the file holds now, kept even after the file changes."""
        return cls(_read_keys(path))

    @classmethod
    def load_or_create(cls, path: Path) -> KeyRing:
        """Read ``path``; create it with one new key (mode 0600) when it does not exist."""
        if not path.exists():
            _create_key_file(path)
        return cls.from_file(path)


def _multi(keys: Sequence[bytes]) -> MultiFernet:
    if not keys:
        raise StorageKeyError("storage key file holds no key")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError):
        raise StorageKeyError("storage key file holds an invalid key") from None


def _stamp(path: Path) -> tuple[int, int, int]:
    """Identity of the key file's current version (it is only ever replaced atomically)."""
    try:
        info = path.stat()
    except OSError:
        raise StorageKeyError(f"storage key file {path} is not readable") from None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _read_keys(path: Path) -> list[bytes]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise StorageKeyError(f"storage key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError):
        raise StorageKeyError(f"storage key file {path} is not readable") from None
    keys = [line.strip().encode() for line in text.splitlines()]
    return [key for key in keys if key and not key.startswith(b"#")]


def _write_atomic(path: Path, lines: Sequence[bytes], *, exclusive: bool) -> bool:
    """Write ``lines`` to ``path`` (0600) atomically; with ``exclusive`` never replace."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".storage-key-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
        return True
    finally:
        if tmp:
            os.unlink(tmp)


def _create_key_file(path: Path) -> None:
    if _write_atomic(path, [Fernet.generate_key()], exclusive=True):
        logger.warning(
            "generated a development storage key at %s; configure storage_key_file "
            "and keep a backup of it in production",
            path,
        )


def add_primary_key(path: Path) -> None:
    """Put a freshly generated key first in the key file (old keys still decrypt)."""
    keys = _read_keys(path)
    if not keys:
        raise ParseError(f"storage key file {path} holds no key")
    _write_atomic(path, [Fernet.generate_key(), *keys], exclusive=False)


def retire_old_keys(path: Path) -> None:
    """Keep only the primary key (run after every stored value was rotated)."""
    keys = _read_keys(path)
    if not keys:
        raise ParseError(f"storage key file {path} holds no key")
    _write_atomic(path, keys[:1], exclusive=False)
