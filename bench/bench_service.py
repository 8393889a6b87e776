"""Benchmark: launch+validate pairs through gunicorn on SQLite and PostgreSQL.

For 1, 16 and 64 concurrent simulated VMs (one client thread per VM, each its
own registration), it measures pairs per second and the p50/p99 latency of one
pair (the two HTTP requests; the simulated firmware's own work is excluded from
the latency), next to the in-process cost of the same cryptography per pair
(chain verification, new session, measurement check, secret table and packet):
the floor. It prints the ratio pair latency / floor.

    .venv/bin/python bench/bench_service.py [--backends sqlite,postgresql] [--pairs 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestd.service.payload import secret_table
from attestd.service.registration import from_stored
from attestd.sev.certs import SevCertificate
from attestd.sev.chain import PlatformChain, verify_chain
from attestd.sev.secrets import build_launch_secret
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    compute_measure,
    start_launch,
    verify_measurement,
)
from attestd.sim.platform import SimulatedPlatform
from attestd.trust import load_anchors
from tests.api.simhost import Boot, launch_body, measure, validate_body
from tests.pgserver import PgServer

FIRMWARE = os.urandom(64 * 1024)  # plain SEV: the service only needs its hash
SECRETS = [
    {"type": "luks-passphrase", "passphrase": "bench-root"},
    {"type": "volume", "name": "data", "device": "virtio:data", "generate": True},
    {"type": "env", "name": "app.env", "values": {"MODE": "bench"}},
]


def registration() -> dict[str, Any]:
    """One VM's registration."""
    return {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": [hashlib.sha256(FIRMWARE).hexdigest()],
        "secrets": SECRETS,
    }


def crypto_floor(
    platform: SimulatedPlatform, anchors_dir: Path, rounds: int, *, chain: bool = True
) -> float:
    """Seconds of in-process service-side crypto per launch+validate pair.

    With ``chain=False`` the chain verification is left out (the service caches a
    verified chain per exact input bytes, so repeated launches on a host skip it).
    """
    anchors = load_anchors(anchors_dir)
    exp = platform.export()
    stored = [
        from_stored(dict(s, passphrase="x" * 43) if s.get("generate") else s) for s in SECRETS
    ]
    version = FirmwareVersion(platform.api_major, platform.api_minor, platform.build_id)
    digest = hashlib.sha256(FIRMWARE).digest()
    platform_chain = PlatformChain.from_export(exp.pdh, exp.cert_chain)
    cek = SevCertificate.unpack(exp.signed_cek)
    verified = verify_chain(platform_chain, anchors, signed_cek=cek)
    started = time.perf_counter()
    for _ in range(rounds):
        if chain:
            platform_chain = PlatformChain.from_export(exp.pdh, exp.cert_chain)
            verified = verify_chain(platform_chain, anchors, signed_cek=cek)
        start = start_launch(verified.pdh_key(), 1)
        mnonce = os.urandom(16)
        measurement = LaunchMeasurement(
            compute_measure(start.keys.tik, version, 1, digest, mnonce), mnonce
        )
        verify_measurement(start.keys.tik, measurement, version, 1, [digest])
        table = secret_table("bench", stored, max_size=3072)
        build_launch_secret(start.keys, measurement.measure, table, version=version)
    return (time.perf_counter() - started) / rounds


@contextmanager
def serve(env: dict[str, str], workers: int, threads: int) -> Iterator[str]:
    """``attestd serve`` (gunicorn, gthread workers) on a free port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attestd.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--",
            "--threads",
            str(threads),
            "--access-logfile",
            "/dev/null",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def run_level(
    url: str,
    owner: dict[str, str],
    platform: SimulatedPlatform,
    vms: int,
    pairs_per_vm: int,
    level_id: int,
) -> dict[str, float]:
    """``vms`` client threads, each doing ``pairs_per_vm`` launch+validate pairs."""
    sim_lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    uuids = [f"00000000-0000-4000-8000-{level_id:04d}{i:08d}" for i in range(vms)]
    for uuid in uuids:
        resp = requests.post(f"{url}/v1/vm/{uuid}", json=registration(), headers=owner, timeout=60)
        assert resp.status_code == 201, resp.text
    barrier = threading.Barrier(vms + 1)

    def client(uuid: str) -> None:
        session = requests.Session()
        barrier.wait()
        for _ in range(pairs_per_vm):
            t0 = time.perf_counter()
            grant = session.post(
                f"{url}/v1/vm/{uuid}/launch", json=launch_body(platform), timeout=120
            )
            t1 = time.perf_counter()
            if grant.status_code != 200:
                with lock:
                    errors.append(grant.text)
                continue
            with sim_lock:
                _h, measurement = measure(platform, grant.json(), Boot(firmware=FIRMWARE))
            body = validate_body(platform, grant.json(), measurement, Boot(firmware=FIRMWARE))
            t2 = time.perf_counter()
            answer = session.post(f"{url}/v1/vm/{uuid}/validate", json=body, timeout=120)
            t3 = time.perf_counter()
            with lock:
                if answer.status_code == 200:
                    latencies.append((t1 - t0) + (t3 - t2))
                else:
                    errors.append(answer.text)

    threads = [threading.Thread(target=client, args=(u,)) for u in uuids]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} failed pairs, first: {errors[0][:300]}")
    ordered = sorted(latencies)
    return {
        "pairs": len(ordered),
        "pairs_per_s": len(ordered) / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per VM at each level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="attestd-bench-"))
    platform = SimulatedPlatform.create(name="bench", rsa_bits=2048)
    anchors = root / "anchors"
    platform.write_trust_anchor(anchors)
    floor = crypto_floor(platform, anchors, 50)
    cached = crypto_floor(platform, anchors, 50, chain=False)
    print(
        f"in-process crypto floor: {floor * 1000:.2f} ms per pair "
        f"({1 / floor:.0f} pairs/s on one core)"
    )
    print(f"  of which without chain verification (cached): {cached * 1000:.2f} ms per pair")
    print(f"gunicorn: {args.workers} workers x {args.threads} threads, {os.cpu_count()} CPUs")
    print(
        f"{'backend':<11} {'VMs':>4} {'pairs':>6} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p50/floor':>9}"
    )
    pg: PgServer | None = None
    try:
        for backend in args.backends.split(","):
            data = root / backend
            data.mkdir()
            env = dict(
                os.environ,
                ATTESTD_DATA_DIR=str(data),
                ATTESTD_TRUST_ANCHORS_DIR=str(anchors),
                ATTESTD_KDS_OFFLINE="1",
                ATTESTD_CONFIG="",
                ATTESTD_LOG_LEVEL="WARNING",
                # the load generator is one anonymous "host" starting launches as fast as
                # it can: the safe defaults (host tokens, launch-flood bounds) are off
                ATTESTD_REQUIRE_HOST_TOKEN="0",
                ATTESTD_HOST_LAUNCH_RATE="0",
                ATTESTD_MAX_PENDING_LAUNCHES="0",
            )
            if backend == "postgresql":
                pg = pg or PgServer.start()
                env["ATTESTD_DATABASE_URL"] = pg.create_database()
                env["ATTESTD_POOL_SIZE"] = str(args.threads)
            else:
                env.pop("ATTESTD_DATABASE_URL", None)
            created = subprocess.run(
                [sys.executable, "-m", "attestd.cli", "owner", "create", "bench"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            owner = {"Authorization": "Bearer " + created.stdout.strip().splitlines()[-1]}
            with serve(env, args.workers, args.threads) as url:
                for n, level in enumerate(int(v) for v in args.levels.split(",")):
                    r = run_level(url, owner, platform, level, args.pairs, n)
                    print(
                        f"{backend:<11} {level:>4} {r['pairs']:>6.0f} {r['pairs_per_s']:>8.1f} "
                        f"{r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} "
                        f"{r['p50'] / floor:>9.1f}",
                        flush=True,
                    )
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
