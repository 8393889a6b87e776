"""Encryption at rest for secrets, generated passphrases and TEK/TIK.

The key file holds one URL-safe base64 Fernet key per line; the first line
encrypts, every line decrypts (``MultiFernet``). ``attestd keys rotate`` puts a
new key first and re-encrypts every stored value with it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from attestd.errors import AttestdError, ParseError

logger = logging.getLogger(__name__)


class StorageKeyError(AttestdError):
    """The storage key file is missing, unreadable or does not decrypt stored data."""

    code = "storage_key"


class KeyRing:
    """A MultiFernet over the keys of one key file."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise StorageKeyError("storage key file holds no key")
        try:
            self._fernets = [Fernet(key) for key in keys]
        except (ValueError, TypeError):
            raise StorageKeyError("storage key file holds an invalid key") from None
        self._multi = MultiFernet(self._fernets)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt with the primary key."""
        return self._multi.encrypt(plaintext)

    def decrypt(self, token: bytes) -> bytes:
        """Decrypt with any key; fails closed."""
        try:
            return self._multi.decrypt(token)
        except InvalidToken:
            raise StorageKeyError("stored value does not decrypt with the storage keys") from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` under the primary key."""
        try:
            return self._multi.rotate(token)
        except InvalidToken:
            raise StorageKeyError("stored value does not decrypt with the storage keys") from None

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Read a key file."""
        return cls(_read_keys(path))

    @classmethod
    def load_or_create(cls, path: Path) -> KeyRing:
        """Read ``path``; create it with one new key (mode 0600) when it does not exist."""
        if not path.exists():
            _create_key_file(path)
        return cls.from_file(path)


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
    path.parent.mkdir(parents=True, exist_ok=True)
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
