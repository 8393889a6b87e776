"""The one command runner: argv lists, keys on stdin or an inherited pipe, no shell.

Keys never appear in argv. A second key (``luksAddKey``'s new passphrase) travels
through a pipe whose ``/dev/fd/N`` path replaces the ``KEY_FD`` placeholder. The
argv of commands that carry key material is never logged.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

KEY_FD = "\x00key-fd\x00"
"""Placeholder in argv replaced by ``/dev/fd/N`` of a pipe holding ``key_fd`` bytes."""

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


def _loggable(argv: Sequence[str], secret: bool) -> str:
    if secret:
        return f"{argv[0]} {argv[1] if len(argv) > 1 else ''} <arguments withheld>"
    return " ".join(argv)


class SubprocessRunner:
    """The real runner: ``subprocess.run`` without a shell, with a timeout."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

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
        read_fd = -1
        real_argv = list(argv)
        try:
            if key_fd is not None:
                read_fd, write_fd = os.pipe()
                try:
                    if len(key_fd) >= 65536:
                        raise ValueError("key too large for a pipe")
                    os.write(write_fd, key_fd)
                finally:
                    os.close(write_fd)
                real_argv = [a.replace(KEY_FD, f"/dev/fd/{read_fd}") for a in argv]
            try:
                proc = subprocess.run(
                    real_argv,
                    input=stdin if stdin is not None else b"",
                    capture_output=True,
                    timeout=self.timeout,
                    check=False,
                    pass_fds=(read_fd,) if read_fd >= 0 else (),
                )
            except FileNotFoundError:
                return Completed(tuple(argv), 127, b"", f"{argv[0]}: not found".encode())
            except subprocess.TimeoutExpired:
                return Completed(tuple(argv), 124, b"", f"{argv[0]}: timed out".encode())
        finally:
            if read_fd >= 0:
                os.close(read_fd)
        if proc.returncode != 0:
            logger.debug("exit %d: %s", proc.returncode, _loggable(argv, secret))
        return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
