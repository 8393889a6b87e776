"""Service fixtures: the shared ones of ``tests/servicefix.py``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servicefix import *  # noqa: F403
from tests.snpfix import *  # noqa: F403


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the test runs as root in the CI container, which may mount)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)
