"""Shared fixtures: paths to the project and to its real test data (``tests/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Real AMD certificates, platform chains, SNP reports, KATs and OVMF, with their
#: provenance (``tests/data/**/PROVENANCE.md``); a clone of the repository is enough.
TESTDATA = Path(os.environ.get("ATTESTD_TESTDATA", Path(__file__).resolve().parent / "data"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The real-data directory (AMD certs, platform chains, KATs, OVMF)."""
    if not TESTDATA.is_dir():
        raise RuntimeError(f"test data not found at {TESTDATA}; set ATTESTD_TESTDATA")
    return TESTDATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests marked ``hw`` (real SEV hardware) unless ATTESTD_HW_TESTS=1."""
    if os.environ.get("ATTESTD_HW_TESTS") == "1":
        return
    hardware = [item for item in items if item.get_closest_marker("hw")]
    if hardware:
        config.hook.pytest_deselected(items=hardware)
        items[:] = [item for item in items if not item.get_closest_marker("hw")]
