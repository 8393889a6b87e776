"""Median cost of SEV platform chain verification on the real Naples and Rome chains.

Usage: ``.venv/bin/python -m bench.bench_chain [RUNS]`` (default 200 runs per case).
Each run parses PDH and PEK||OCA||CEK from bytes and verifies the full chain
(ARK, ASK, CEK by ASK, OCA, PEK by OCA and CEK, PDH by PEK) against the pinned
roots, i.e. what the service does for every launch.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from attestd.sev.chain import PlatformChain, builtin_anchors, verify_chain

PLATFORM = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "sev" / "platform"


def _timed(func: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return samples


def _report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    print(
        f"{name:<44} median {statistics.median(samples) * 1e3:8.3f} ms"
        f"   p90 {p90 * 1e3:8.3f} ms   runs {len(samples)}"
    )


def main(argv: list[str]) -> int:
    runs = int(argv[1]) if len(argv) > 1 else 200
    anchors = builtin_anchors()
    for gen in ("naples", "rome"):
        read = lambda name, gen=gen: (PLATFORM / gen / name).read_bytes()  # noqa: E731
        pdh = read("pdh.cert")
        chain = read("pek.cert") + read("oca.cert") + read("cek.cert")

        def verify(pdh: bytes = pdh, chain: bytes = chain) -> object:
            return verify_chain(PlatformChain.from_export(pdh, chain), anchors)

        verify()  # warm-up
        _report(f"verify_chain ({gen}, parse + 7 links)", _timed(verify, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
