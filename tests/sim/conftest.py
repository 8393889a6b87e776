"""One minted simulated platform per test session; each test loads its own copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from attestd.sim.platform import SimulatedPlatform


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved platform (real RSA-4096 test ARK/ASK, like Rome and later)."""
    directory = tmp_path_factory.mktemp("sim") / "platform"
    SimulatedPlatform.create(name="simtest").save(directory)
    return directory


@pytest.fixture
def sim_copy(sim_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the saved platform directory."""
    target = tmp_path / "platform"
    shutil.copytree(sim_dir, target)
    return target


@pytest.fixture
def platform(sim_copy: Path) -> SimulatedPlatform:
    """A fresh in-memory platform with no guests."""
    return SimulatedPlatform.load(sim_copy)
