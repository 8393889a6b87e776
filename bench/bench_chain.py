"""Median cost of SEV platform chain verification on the real Naples and Rome chains.

Usage: ``.venv/bin/python -m bench.bench_chain [RUNS]`` (default 200 runs per case).
The full case parses PDH and PEK||OCA||CEK from bytes and verifies the whole chain
(ARK, ASK, CEK by ASK, OCA, PEK by OCA and CEK, PDH by PEK) against the pinned
roots, i.e. what the service does for every launch; the other lines break it down.
Both wall-clock and process CPU time are printed: on a busy shared machine the CPU
time is the steadier figure.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from attestd.sev.certs import AmdCaCertificate, SevCertificate
from attestd.sev.chain import PlatformChain, builtin_anchors, verify_chain

PLATFORM = Path(__file__).resolve().parents[1] / "tests" / "data" / "sev" / "platform"


def _timed(func: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    func()  # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        func()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return wall, cpu


def _report(name: str, func: Callable[[], object], runs: int) -> None:
    wall, cpu = _timed(func, runs)
    print(
        f"{name:<44} median wall {statistics.median(wall) * 1e3:7.3f} ms"
        f"   cpu {statistics.median(cpu) * 1e3:7.3f} ms   runs {runs}"
    )


def main(argv: list[str]) -> int:
    runs = int(argv[1]) if len(argv) > 1 else 200
    anchors = builtin_anchors()
    for gen in ("naples", "rome"):
        directory = PLATFORM / gen
        pdh = (directory / "pdh.cert").read_bytes()
        chain = b"".join((directory / n).read_bytes() for n in ("pek.cert", "oca.cert", "cek.cert"))
        parsed = PlatformChain.from_export(pdh, chain)
        anchor = next(a for a in anchors if a.name == gen)

        def full(pdh: bytes = pdh, chain: bytes = chain) -> object:
            return verify_chain(PlatformChain.from_export(pdh, chain), anchors)

        def parse(pdh: bytes = pdh, chain: bytes = chain) -> object:
            return PlatformChain.from_export(pdh, chain)

        def ecdsa(c: PlatformChain = parsed) -> object:
            return c.pdh.is_signed_by(c.pek)

        def cek_by_ask(
            c: SevCertificate = parsed.cek, ask: AmdCaCertificate = anchor.ask
        ) -> object:
            return c.is_signed_by(ask)

        _report(f"{gen}: verify_chain (parse + 7 links)", full, runs)
        _report(f"{gen}: parse PDH + PEK||OCA||CEK", parse, runs)
        _report(f"{gen}: one ECDSA P-384 link (PDH by PEK)", ecdsa, runs)
        _report(f"{gen}: CEK by ASK (RSA-PSS)", cek_by_ask, runs)
        _report(f"{gen}: ARK self + ASK by ARK", anchor.check, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
