"""``attestd-sim`` on bad input: one line, exit 1 (or 2 for a bad argument), no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestd.errors import ParseError
from attestd.sim.platform import STATE_FILE, SimulatedPlatform
from tests.consoledriver import one_error_line, run_script


def test_status_on_a_binary_state_file(sim_copy: Path) -> None:
    (sim_copy / STATE_FILE).write_bytes(b"\xff\xfe\x00binary")
    line = one_error_line(run_script("attestd-sim", "status", "--dir", str(sim_copy)))
    assert line.startswith("attestd-sim: error [malformed_input]: simulator state in ")
    assert "does not parse" in line


@pytest.mark.parametrize("option", ["--api-major", "--api-minor", "--build-id"])
@pytest.mark.parametrize("value", ["-1", "256"])
def test_init_rejects_out_of_range_firmware_version(
    option: str, value: str, tmp_path: Path
) -> None:
    result = run_script("attestd-sim", "init", "--dir", str(tmp_path / "p"), option, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {option}: {value} is out of range (0..255)" in result.stderr
    assert not (tmp_path / "p").exists()


def test_create_checks_the_version_before_minting() -> None:
    with pytest.raises(ParseError, match="fit in one byte"):
        SimulatedPlatform.create(api_major=-1, rsa_bits=2048)


def test_missing_platform_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(run_script("attestd-sim", "export", "--dir", str(tmp_path)))
    assert line == f"attestd-sim: error [not_found]: no simulated platform in {tmp_path} " + (
        "(run attestd-sim init)"
    )
