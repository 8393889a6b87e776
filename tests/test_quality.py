"""ruff and mypy --strict are part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent
#: Python code ruff checks (mypy's files are in setup.cfg)
CODE = ("attestd", "tests", "bench", "hooks", "tools")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)


def test_ruff_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = _run(str(BIN / "mypy"), "--config-file", "setup.cfg")
    assert result.returncode == 0, result.stdout + result.stderr


#: How a path into the team's shared folder outside the repository is spelled.
OUTSIDE = ("../" + "shared", "shared/" + "testdata", '"' + 'shared"')


def test_a_clone_is_enough() -> None:
    """No test, benchmark or tool reads data from outside the repository (``../shared``)."""
    tracked = _run("git", "ls-files", "tests", "bench", "tools", ".ci").stdout.split()
    offenders = [
        name
        for name in tracked
        if not name.startswith("tests/data/")
        and any(marker in (PROJECT_ROOT / name).read_text(errors="replace") for marker in OUTSIDE)
    ]
    assert offenders == []
