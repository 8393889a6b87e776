"""``attestd-guest`` on bad input: a documented exit status, JSON on stdout, one log line."""

from __future__ import annotations

import json
from pathlib import Path

from attestd.guest import cli
from tests.consoledriver import run_script


def test_rotate_with_a_missing_request_file(tmp_path: Path) -> None:
    result = run_script("attestd-guest", "--run-dir", str(tmp_path), "rotate", "/nonexistent")
    assert result.returncode == cli.EXIT_INVALID and "Traceback" not in result.stderr
    assert json.loads(result.stdout) == {
        "status": "error",
        "code": "malformed_payload",
        "error": "cannot read request /nonexistent: No such file or directory",
    }
    assert result.stderr.strip().splitlines() == [
        "attestd-guest: ERROR cannot read request /nonexistent: No such file or directory"
    ]
    result = run_script("attestd-guest", "--run-dir", str(tmp_path), "rotate", str(tmp_path))
    assert result.returncode == cli.EXIT_INVALID
    assert json.loads(result.stdout)["error"] == f"request {tmp_path} is not a regular file"


def test_secret_table_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "table"
    os.mkfifo(fifo)
    argv = ["--run-dir", str(tmp_path), "bootstrap", "--secret-table", str(fifo)]
    result = run_script("attestd-guest", *argv)
    assert result.returncode == cli.EXIT_INVALID
    assert json.loads(result.stdout)["error"] == f"secret table {fifo} is not a regular file"
