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


def _run(*args: str) -> str:
    """Run ``python args...`` in the project; its standard output."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _bench(module: str) -> dict[str, float]:
    result = _run("-m", module, "3")
    figures: dict[str, float] = {}
    for line in result.splitlines():
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


def test_service_benchmark_prints_its_table() -> None:
    """bench_service on SQLite with tiny sizes: figures printed, no timing asserted."""
    out = _run(
        "bench/bench_service.py",
        *("--backends", "sqlite", "--levels", "1,2", "--pairs", "2", "--prefill", "50"),
        *("--configs", "1x2", "--client-processes", "2"),
    )
    rows = [line.split() for line in out.splitlines() if line.startswith("this ")]
    assert [(row[1], row[2], row[3], row[4]) for row in rows] == [
        ("gthread:1x2", "sqlite", "1", "2"),
        ("gthread:1x2", "sqlite", "2", "4"),
    ]
    for row in rows:
        assert row[10] == "-", row  # SQLite's work is inside the workers' CPU
        assert all(float(value) >= 0 for value in row[5:10] + row[11:]), row
    assert "load average before:" in out
    assert "warm-up: 4 pairs per VM" in out  # the first requests are not measured


def test_service_benchmark_counts_postgresql_cpu_apart() -> None:
    """On PostgreSQL the database server's own CPU per pair is printed beside the
    workers': it is spent on the same CPUs and was counted nowhere before."""
    out = _run(
        "bench/bench_service.py",
        *("--backends", "postgresql", "--levels", "2", "--pairs", "3", "--configs", "1x2"),
    )
    (header,) = [line for line in out.splitlines() if line.startswith("tree ")]
    columns = ["CPU", "ms/pair", "PG", "ms/pair", "client", "ms"]
    assert header.split("p50/floor", 1)[1].split() == columns
    (row,) = [line.split() for line in out.splitlines() if line.startswith("this ")]
    assert (row[1], row[2], row[3], row[4]) == ("gthread:1x2", "postgresql", "2", "6")
    assert len(row) == 12 and float(row[10]) > 0, row


def test_service_benchmark_of_snp_attestations() -> None:
    """bench_service --scheme amd-sev-snp: challenge+attest pairs through gunicorn (each
    must be released, or the benchmark exits non-zero)."""
    out = _run(
        "bench/bench_service.py",
        *("--scheme", "amd-sev-snp", "--backends", "sqlite", "--levels", "2", "--pairs", "2"),
        *("--configs", "1x2"),
    )
    assert "amd-sev-snp: in-process crypto floor" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("this ")]
    assert [(row[1], row[2], row[3], row[4]) for row in rows] == [
        ("gthread:1x2", "sqlite", "2", "4")
    ]


def test_stack_benchmark_prints_each_app() -> None:
    """bench_stack: gunicorn as ``attestd serve`` runs it around the stand-in apps; every
    request answered (or the benchmark exits non-zero), figures printed."""
    out = _run("bench/bench_stack.py", "--levels", "1,2", "--requests", "3", "--workers", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith("gunicorn ")]
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("bare", "1", "3"),
        ("bare", "2", "6"),
        ("flask", "1", "3"),
        ("flask", "2", "6"),
    ]
    for row in rows:
        assert all(float(value) >= 0 for value in row[4:]), row


def test_pair_profile_prints_statements_and_cpu() -> None:
    out = _run("bench/profile_pair.py", "--pairs", "3", "--top", "5")
    assert "database transactions per pair: 4" in out
    assert "database statements per pair: 9" in out  # 8 before the safe release lock
    assert "server CPU per pair" in out


def test_pair_profile_on_postgresql_prints_the_server_cpu() -> None:
    """On PostgreSQL the database server's own CPU per pair is printed (not in the
    process's CPU time)."""
    out = _run("bench/profile_pair.py", "--backend", "postgresql", "--pairs", "20", "--top", "3")
    assert "database transactions per pair: 4" in out
    (line,) = [x for x in out.splitlines() if x.startswith("PostgreSQL server CPU per pair")]
    assert float(line.split(":")[1].split()[0]) > 0, line


def test_pair_profile_through_wsgi_calls() -> None:
    out = _run("bench/profile_pair.py", "--pairs", "3", "--top", "5", "--wsgi", "--sort", "tottime")
    assert "server CPU per pair (in process, no HTTP, WSGI calls)" in out
    assert "Ordered by: internal time" in out


def test_pair_profile_of_the_snp_pair() -> None:
    """``--scheme amd-sev-snp``: bench_service.py's challenge+attest pair, in process."""
    out = _run("bench/profile_pair.py", "--scheme", "amd-sev-snp", "--pairs", "3", "--top", "5")
    assert "database transactions per pair: 5" in out  # 6 before the claim read the VM
    assert "database statements per pair: 10" in out
    assert "1 x UPDATE attest_challenges SET" in out
    assert "server CPU per pair (in process, no HTTP, test client)" in out
    assert "claim_challenge" in out.split("of which storage", 1)[1]
    out = _run(
        "bench/profile_pair.py", "--scheme", "amd-sev-snp", "--pairs", "2", "--top", "3", "--wsgi"
    )
    assert "server CPU per pair (in process, no HTTP, WSGI calls)" in out


def test_service_profile_through_gunicorn() -> None:
    out = _run("bench/profile_service.py", "--pairs", "2", "--top", "3")
    assert "worker CPU per pair through gunicorn (not profiled)" in out
    assert "worker CPU per pair through gunicorn (profiled)" in out
    assert "gunicorn" in out.split("by where it is spent", 1)[1]
