"""Median cost of the guest-owner protocol steps attestd runs for every launch.

Usage: ``.venv/bin/python -m bench.bench_session [RUNS]`` (default 500 runs per case).

* session creation: ``start_launch`` for the real Rome PDH (fresh GODH key, ECDH,
  KDF, TEK/TIK wrap, MACs, GODH certificate);
* measurement check: ``verify_measurement`` against 1 and 8 candidate digests;
* secret packet: ``build_secret_table`` + ``_seal_launch_secret`` for a LUKS key
  and a 1 KiB payload.
"""

from __future__ import annotations

import os
import sys

from attestd.sev.certs import SevCertificate
from attestd.sev.secrets import (
    ATTESTD_PAYLOAD_GUID,
    LUKS_KEY_GUID,
    SecretEntry,
    _seal_launch_secret,
    build_secret_table,
)
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    compute_measure,
    start_launch,
    verify_measurement,
)
from bench.bench_chain import PLATFORM, _report


def main(argv: list[str]) -> int:
    runs = int(argv[1]) if len(argv) > 1 else 500
    pdh = SevCertificate.unpack((PLATFORM / "rome" / "pdh.cert").read_bytes()).public_key()
    policy = 0x0001
    _report("start_launch (GODH, ECDH, KDF, wrap, cert)", lambda: start_launch(pdh, policy), runs)

    launch = start_launch(pdh, policy)
    version = FirmwareVersion(1, 55, 21)
    digests = [os.urandom(32) for _ in range(8)]
    mnonce = os.urandom(16)
    measure = compute_measure(launch.keys.tik, version, policy, digests[-1], mnonce)
    blob = LaunchMeasurement(measure, mnonce)
    for count in (1, 8):
        candidates = digests[-count:]

        def check(candidates: list[bytes] = candidates) -> object:
            return verify_measurement(launch.keys.tik, blob, version, policy, candidates)

        _report(f"verify_measurement ({count} candidate(s))", check, runs)

    entries = [
        SecretEntry(LUKS_KEY_GUID, os.urandom(64)),
        SecretEntry(ATTESTD_PAYLOAD_GUID, os.urandom(1024)),
    ]

    def packet() -> object:
        table = build_secret_table(entries, max_size=3072)
        return _seal_launch_secret(launch.keys, measure, table, version=version)

    _report("secret table + LAUNCH_SECRET packet (1.1 KiB)", packet, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
