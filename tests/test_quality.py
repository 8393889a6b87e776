"""ruff and mypy --strict are part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)


def test_ruff_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", "attestd", "tests", "bench", "hooks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", "attestd", "tests", "bench", "hooks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = _run(str(BIN / "mypy"), "--config-file", "setup.cfg")
    assert result.returncode == 0, result.stdout + result.stderr
