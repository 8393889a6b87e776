"""The benchmarks in ``bench/`` run and print every per-operation cost the issue asks for.

Tiny run counts: this proves the scripts work (they are not type-checked by mypy, which
covers only ``attestd/``), not the figures themselves.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

LINE = re.compile(
    r"^(?P<name>.+?)\s+median wall\s+(?P<wall>[0-9.]+) ms\s+cpu\s+[0-9.]+ ms\s+runs 3$"
)


def _bench(module: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", module, "3"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures: dict[str, float] = {}
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        assert match, line
        figures[match["name"]] = float(match["wall"])
    return figures


@pytest.mark.parametrize(
    ("module", "operations"),
    [
        ("bench.bench_chain", ["naples: verify_chain", "rome: verify_chain"]),
        (
            "bench.bench_session",
            ["start_launch", "verify_measurement (1", "verify_measurement (8", "LAUNCH_SECRET"],
        ),
        ("bench.bench_snp", ["check_report", "accept + JWE", "challenge + attest pair"]),
    ],
)
def test_bench_prints_each_operation(module: str, operations: list[str]) -> None:
    figures = _bench(module)
    for operation in operations:
        (cost,) = [wall for name, wall in figures.items() if operation in name]
        assert cost > 0, operation
