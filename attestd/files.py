"""Files that hold key material, secret tables or the database: owner-only modes.

A command that writes key material or a secret table uses :func:`write_private` (0600,
atomic); the storage key file has its own 0600 writer in :mod:`attestd.storage.keys`
(it can refuse to replace an existing key). The service's data directory is created
0700 (:func:`private_dir`), and :func:`attestd.storage.open_store` creates the SQLite
database empty with ``os.open(path, ..., 0o600)`` before SQLite opens it; SQLite
gives its ``-wal`` / ``-shm`` files the database file's mode. Public material (cached
AMD certificates) is written 0644 (:func:`write_public`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) mode 0700; an existing directory is left as is."""
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600 (never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0644 (public material: cached AMD
    certificates); the directory is created if missing, the temporary name is unique."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
