"""Build the stdlib-only guest agent zipapp (attestd-guest.pyz) for the guest suites."""

from __future__ import annotations

import shutil
import zipapp
from pathlib import Path

import attestd
import attestd.guest

PACKAGE = Path(attestd.guest.__file__).parent


def build_zipapp(out: Path) -> Path:
    """``attestd-guest.pyz``: attestd/__init__.py plus attestd/guest, nothing else."""
    staging = out.parent / "pyz-staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "attestd").mkdir(parents=True)
    shutil.copy(Path(attestd.__file__), staging / "attestd" / "__init__.py")
    shutil.copytree(PACKAGE, staging / "attestd" / "guest",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    zipapp.create_archive(
        staging, out, interpreter="/usr/bin/env python3", main="attestd.guest.cli:run"
    )
    shutil.rmtree(staging)
    return out
