"""The one command runner: argv lists, keys on stdin or in a private file, no shell.

Keys never appear in argv. A second key (``luksAddKey``'s new passphrase) goes into a
0600 file in a fresh 0700 directory under the runner's ``key_dir`` (the agent's run
directory, a tmpfs under ``/run`` in a guest), whose path replaces the ``KEY_FD``
placeholder; the file is overwritten and removed as soon as the command ends. (A pipe's
``/dev/fd/N`` path needs ``/dev/fd``, which a minimal guest may not have.) The argv of
commands that carry key material is never logged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

KEY_FD = "\x00key-fd\x00"
"""Placeholder in argv replaced by the path of a private file holding ``key_fd`` bytes."""
MAX_KEY_FILE = 65536

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Completed:
    """The outcome of one command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0

    def stderr_text(self, limit: int = 2000) -> str:
        """Decoded, trimmed stderr (or stdout when stderr is empty) for error details."""
        raw = self.stderr.strip() or self.stdout.strip()
        return raw.decode("utf-8", "replace")[:limit]


class CommandRunner(Protocol):
    """Runs one command; ``stdin`` and ``key_fd`` may carry key material."""

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        key_fd: bytes | None = None,
    ) -> Completed: ...


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return path


def _remove_private(directory: Path) -> None:
    """Overwrite and unlink the key file(s), then remove the directory."""
    for path in directory.iterdir():
        try:
            size = path.stat().st_size
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.write(fd, bytes(size))
            finally:
                os.close(fd)
        finally:
            path.unlink()
    directory.rmdir()


def _loggable(argv: Sequence[str], secret: bool) -> str:
    if secret:
        return f"{argv[0]} {argv[1] if len(argv) > 1 else ''} <arguments withheld>"
    return " ".join(argv)


class SubprocessRunner:
    """The real runner: ``subprocess.run`` without a shell, with a timeout."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, key_dir: Path | None = None) -> None:
        self.timeout = timeout
        #: where the private directory for a second key is made (the temp dir when None
        #: or not yet created)
        self.key_dir = key_dir

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        key_fd: bytes | None = None,
    ) -> Completed:
        """Run ``argv``; ``stdin`` is written to the child's standard input."""
        secret = stdin is not None or key_fd is not None
        logger.debug("run: %s", _loggable(argv, secret))
        real_argv = list(argv)
        key_dir: Path | None = None
        try:
            if key_fd is not None:
                if len(key_fd) >= MAX_KEY_FILE:
                    raise ValueError("key too large")
                parent = self.key_dir if self.key_dir and self.key_dir.is_dir() else None
                key_dir = Path(tempfile.mkdtemp(prefix=".key-", dir=parent))  # mode 0700
                key_file = _write_private(key_dir / "key", key_fd)
                real_argv = [a.replace(KEY_FD, str(key_file)) for a in argv]
            try:
                proc = subprocess.run(
                    real_argv,
                    input=stdin if stdin is not None else b"",
                    capture_output=True,
                    timeout=self.timeout,
                    check=False,
                )
            except FileNotFoundError:
                return Completed(tuple(argv), 127, b"", f"{argv[0]}: not found".encode())
            except subprocess.TimeoutExpired:
                return Completed(tuple(argv), 124, b"", f"{argv[0]}: timed out".encode())
        finally:
            if key_dir is not None:
                _remove_private(key_dir)
        if proc.returncode != 0:
            logger.debug("exit %d: %s", proc.returncode, _loggable(argv, secret))
        return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
