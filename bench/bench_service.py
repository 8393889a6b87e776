"""Benchmark: launch+validate pairs through gunicorn on SQLite and PostgreSQL.

For 1, 16 and 64 concurrent simulated VMs (one client thread per VM, each its
own registration), it measures pairs per second and the p50/p99 latency of one
pair (the two HTTP requests, as the client sees them; the simulated firmware's own
work between them is excluded from the latency), next to the in-process cost of
the same cryptography per pair (chain verification, new session, measurement
check, secret table and packet): the floor. It prints the ratio pair latency /
floor, the server CPU per pair (user + system time of the gunicorn workers over
the level, divided by the pairs), on PostgreSQL the database server's CPU per pair
(its postmaster's children: the backends and background processes; on SQLite the
database work is inside the workers' figure) and the load generator's CPU per pair.
Each service first serves an unmeasured warm-up level (``--warmup`` pairs per VM, up to
16 VMs), so the figures are those of a running service, not of its first requests;
the CPU columns count from when every client is connected, after the level's
registrations.

The load generator spreads the VMs over ``--client-processes`` processes (default
one per 4 VMs), each VM on its own keep-alive ``http.client`` connection: one
Python process with a thread per VM made every measured latency include waiting
for the client's own interpreter lock (64 threads doing HTTP and the simulated
firmware), and ``requests`` cost the shared CPUs several times what
``http.client`` does.

``--configs 2x8,2x4,sync:4`` runs the same load against each gunicorn
configuration (gthread workers x threads, or sync workers) in one run;
``--trees before=/path/to/old/checkout,after=.`` against the service of each
source tree in turn (side by side in one run, same machine and load generator;
an old tree needs nothing of this one's server code); ``--prefill N`` first
stores N finished launches with their events (the "1 M finished launches" case).

``--scheme amd-sev-snp`` measures the SEV-SNP pair instead: ``POST /attest/challenge``
and ``POST /attest`` of a guest (one key per VM) whose report the software SNP platform
signs between the two (not counted in the latency), the ARK's CRL imported as an
operator would; its floor is ``check_report`` plus the accept and the JWE of the payload.

    .venv/bin/python bench/bench_service.py [--backends sqlite,postgresql] [--pairs 8]
    .venv/bin/python bench/bench_service.py --scheme amd-sev-snp
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestd.config import Settings
from attestd.service.payload import secret_table
from attestd.service.registration import from_stored
from attestd.sev.certs import SevCertificate
from attestd.sev.chain import PlatformChain, verify_chain
from attestd.sev.secrets import _seal_launch_secret
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    compute_measure,
    start_launch,
    verify_measurement,
)
from attestd.sev.snp.certs import SnpCrl
from attestd.sev.snp.verify import (
    SnpReferencePolicy,
    TeeKey,
    accept,
    check_report,
    report_data_binding,
)
from attestd.sim.platform import SimulatedPlatform
from attestd.sim.snp import ReportRequest, SnpPlatform
from attestd.trust import load_anchors
from tests.api.servers import free_port
from tests.api.simhost import Boot, launch_body, measure, validate_body
from tests.pgserver import PgServer
from tests.snpfix import (
    GUEST_PIN,
    PUBLIC_URLS,
    Guest,
    attest_body,
    import_crl,
    snp_registration,
)

ROOT = Path(__file__).resolve().parent.parent
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
    """CPU seconds of in-process service-side crypto per launch+validate pair.

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
    started = time.process_time()
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
        _seal_launch_secret(start.keys, measurement.measure, table, version=version)
    return (time.process_time() - started) / rounds


def cpu_seconds(master: int) -> float:
    """User + system CPU seconds of the gunicorn workers (children of ``master``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return 0.0
    for pid in children:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def prefill(url: str, count: int) -> None:
    """Store ``count`` finished launches (and one event each) of a filler VM."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    now = time.time()
    with engine.begin() as conn:
        owner = conn.execute(text("SELECT id FROM owners ORDER BY id LIMIT 1")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO vms (uuid, owner_id, revision, registration, secrets_enc,"
                " launches_used, max_launches, created_at, updated_at) VALUES"
                " ('ffffffff-0000-4000-8000-000000000000', :o, 1, '{}', :s, :n, NULL, :t, :t)"
            ),
            {"o": owner, "s": b"x", "n": count, "t": now},
        )
        vm_id = conn.execute(
            text("SELECT id FROM vms WHERE uuid = 'ffffffff-0000-4000-8000-000000000000'")
        ).scalar_one()
    batch = 20000
    for start in range(0, count, batch):
        rows = range(start, min(count, start + batch))
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO launches (id, vm_id, vm_revision, state, policy, keys_enc,"
                    " chip_id, pdh_sha256, generation, created_at, expires_at, finished_at)"
                    " VALUES (:id, :vm, 1, :state, 1, NULL, '', :pdh, 'sim', :c, :e, :f)"
                ),
                [
                    {
                        "id": f"prefill-{n:012d}",
                        "vm": vm_id,
                        "state": "validated" if n % 10 else "failed",
                        "pdh": "0" * 64,
                        "c": now - 86400 + n * 1e-3,
                        "e": now - 86400 + 600 + n * 1e-3,
                        "f": now - 86400 + 1 + n * 1e-3,
                    }
                    for n in rows
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO events (owner_id, vm_uuid, ts, kind, launch_id, outcome, detail)"
                    " VALUES (:o, 'ffffffff-0000-4000-8000-000000000000', :t, 'validate', :id,"
                    " 'released', '{}')"
                ),
                [
                    {"o": owner, "t": now - 86400 + n * 1e-3, "id": f"prefill-{n:012d}"}
                    for n in rows
                ],
            )
    if engine.dialect.name == "postgresql":
        # a table that grew over months has been vacuumed and analysed by autovacuum;
        # right after a bulk load autovacuum (and the checkpoint writing the load) would
        # run during the measurement instead
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))
    engine.dispose()


def service_env(tree: Path, data: Path, anchors: Path, database_url: str | None) -> dict[str, str]:
    """The environment of an ``attestd`` command of source ``tree`` on ``data`` (SQLite
    there unless ``database_url``)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        ATTESTD_DATA_DIR=str(data),
        ATTESTD_TRUST_ANCHORS_DIR=str(anchors),
        ATTESTD_KDS_OFFLINE="1",
        ATTESTD_CONFIG="",
        ATTESTD_LOG_LEVEL="WARNING",
        # the load generator is one anonymous "host" starting launches as fast as it
        # can: the safe defaults (host tokens, launch-flood bounds) are off
        ATTESTD_REQUIRE_HOST_TOKEN="0",
        ATTESTD_HOST_LAUNCH_RATE="0",
        ATTESTD_ATTEST_VM_RATE="0",
        ATTESTD_MAX_PENDING_LAUNCHES="0",
    )
    if database_url is None:
        env.pop("ATTESTD_DATABASE_URL", None)
    else:
        env["ATTESTD_DATABASE_URL"] = database_url
    return env


def create_owner(env: dict[str, str], tree: Path) -> dict[str, str]:
    """Create owner ``bench`` with ``attestd owner create``; its Authorization header."""
    created = subprocess.run(
        [sys.executable, "-m", "attestd.cli", "owner", "create", "bench"],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return {"Authorization": "Bearer " + created.stdout.strip().splitlines()[-1]}


@dataclass(frozen=True)
class Gunicorn:
    """One gunicorn configuration: worker class, workers, threads per worker."""

    worker_class: str
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> Gunicorn:
        """``2x8`` (gthread, 2 workers x 8 threads), ``gthread:2x8`` or ``sync:4``."""
        kind, _, size = text.rpartition(":")
        kind = kind or "gthread"
        if kind == "sync":
            return cls("sync", int(size), 1)
        workers, _, threads = size.partition("x")
        return cls(kind, int(workers), int(threads or 1))

    @property
    def label(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"{self.worker_class}:{self.workers}x{self.threads}"

    def serve_args(self) -> list[str]:
        """``attestd serve`` arguments (options after ``--`` override its defaults)."""
        return [
            "--workers",
            str(self.workers),
            "--",
            "--worker-class",
            self.worker_class,
            "--threads",
            str(self.threads),
        ]


@contextmanager
def serve(
    env: dict[str, str], gunicorn: Gunicorn, tree: Path, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, int]]:
    """``attestd serve`` of source ``tree`` with the ``gunicorn`` configuration (and
    ``extra`` gunicorn options) on a free port (the access log is formatted as in
    production and thrown away)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attestd.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            *gunicorn.serve_args(),
            "--access-logfile",
            "/dev/null",
            *extra,
        ],
        env=env,
        cwd=tree,
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
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


SNP_DIGEST = bytes(range(48))  # the launch digest every benchmark SNP VM reports


def snp_crypto_floor(platform: SnpPlatform, rounds: int) -> float:
    """CPU seconds of in-process SEV-SNP service crypto per attestation: ``check_report``
    (VCEK chain, CRL, signature, TCB, chip id) plus ``accept`` and the payload's JWE."""
    guest = Guest()
    crls = {platform.name: SnpCrl.from_der(platform.crl())}
    policy = SnpReferencePolicy(measurements=[SNP_DIGEST])
    nonce = base64.b64encode(bytes(32)).decode()
    raw = platform.report(ReportRequest(report_data_binding(nonce, guest.public), SNP_DIGEST))
    started = time.process_time()
    for _ in range(rounds):
        key = TeeKey.parse(guest.public)  # once per attest, as the service does
        verified = check_report(raw, (platform.anchor(),), leaf=platform.vcek, crls=crls).verified
        assert verified is not None
        accept(verified, policy, nonce=nonce, tee_key=key).encrypt_payload(b"x" * 1024, key)
    return (time.process_time() - started) / rounds


@dataclass
class Workload:
    """What one VM of the benchmark registers and what one of its pairs is."""

    scheme: str
    platform: Any  # SimulatedPlatform (SEV) or SnpPlatform (SEV-SNP)

    def registration(self) -> dict[str, Any]:
        if self.scheme == "amd-sev":
            return registration()
        return snp_registration(SNP_DIGEST)

    def pair(self, conn: Connection, uuid: str, sim_lock: threading.Lock) -> float | str:
        """One pair on ``conn``: its latency (the two requests), or the failed answer."""
        if self.scheme == "amd-sev":
            return self._sev_pair(conn, uuid, sim_lock)
        return self._snp_pair(conn, uuid, sim_lock)

    def _sev_pair(self, conn: Connection, uuid: str, sim_lock: threading.Lock) -> float | str:
        t0 = time.perf_counter()
        status, raw = conn.post(f"/v1/vm/{uuid}/launch", launch_body(self.platform))
        t1 = time.perf_counter()
        if status != 200:
            return raw.decode(errors="replace")
        grant = json.loads(raw)
        with sim_lock:
            _h, measurement = measure(self.platform, grant, Boot(firmware=FIRMWARE))
        body = validate_body(self.platform, grant, measurement, Boot(firmware=FIRMWARE))
        t2 = time.perf_counter()
        status, raw = conn.post(f"/v1/vm/{uuid}/validate", body)
        t3 = time.perf_counter()
        return (t1 - t0) + (t3 - t2) if status == 200 else raw.decode(errors="replace")

    def _snp_pair(self, conn: Connection, uuid: str, sim_lock: threading.Lock) -> float | str:
        guest = conn.guest = conn.guest or Guest()
        t0 = time.perf_counter()
        status, raw = conn.post(f"/v1/vm/{uuid}/attest/challenge", None)
        t1 = time.perf_counter()
        if status != 200:
            return raw.decode(errors="replace")
        nonce = json.loads(raw)["nonce"]
        with sim_lock:
            body = attest_body(self.platform, guest, nonce, SNP_DIGEST, vm=uuid, owner="bench")
        t2 = time.perf_counter()
        status, raw = conn.post(f"/v1/vm/{uuid}/attest", body)
        t3 = time.perf_counter()
        if status != 200 or "payload" not in json.loads(raw):
            return raw.decode(errors="replace")
        return (t1 - t0) + (t3 - t2)


class Connection:
    """One VM's keep-alive HTTP/1.1 connection (``http.client``: a fraction of the
    client CPU that ``requests`` costs, which the service would otherwise share)."""

    guest: Guest | None = None  # the SEV-SNP guest key of the VM on this connection

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def post(self, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Content-Length": str(len(data))}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, data, headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the service closed an idle keep-alive connection: open a new one
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def client_process(
    url: str,
    workload: Workload,
    uuids: list[str],
    pairs_per_vm: int,
    start: Any,
    results: Any,
) -> None:
    """One load-generator process: a thread per VM in ``uuids``, each doing
    ``pairs_per_vm`` pairs; sends (latencies, errors, CPU seconds) to ``results``."""
    sim_lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(len(uuids) + 1)

    def client(uuid: str) -> None:
        conn = Connection(url)
        ready.wait()
        for _ in range(pairs_per_vm):
            outcome = workload.pair(conn, uuid, sim_lock)
            with lock:
                if isinstance(outcome, float):
                    latencies.append(outcome)
                else:
                    errors.append(outcome)

    threads = [threading.Thread(target=client, args=(u,)) for u in uuids]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    start.wait()  # every process's threads are connected: go
    ready.wait()
    for t in threads:
        t.join()
    results.put((latencies, errors, time.process_time() - cpu0))


def run_level(
    url: str,
    owner: dict[str, str],
    workload: Workload,
    vms: int,
    pairs_per_vm: int,
    level_id: int,
    processes: int,
    pids: tuple[int, int | None] = (0, None),
) -> dict[str, float]:
    """``vms`` simulated VMs (a client thread each) spread over ``processes`` client
    processes, each VM doing ``pairs_per_vm`` pairs of ``workload``. ``pids`` are the
    gunicorn master's and the postmaster's (or None): the CPU of their children per
    pair, counted from when every client is connected (the registrations before are
    not part of a pair) to when the last pair ended."""
    uuids = [f"00000000-0000-4000-8000-{level_id:04d}{i:08d}" for i in range(vms)]
    for uuid in uuids:
        resp = requests.post(
            f"{url}/v1/vm/{uuid}", json=workload.registration(), headers=owner, timeout=60
        )
        assert resp.status_code == 201, resp.text
    ctx = multiprocessing.get_context("fork")
    processes = max(1, min(processes, vms))
    start = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=client_process,
            args=(url, workload, uuids[n::processes], pairs_per_vm, start, results),
        )
        for n in range(processes)
    ]
    for proc in procs:
        proc.start()
    master, postmaster = pids
    cpu0 = cpu_seconds(master) if master else 0.0
    db0 = cpu_seconds(postmaster) if postmaster else 0.0
    start.wait()
    started = time.perf_counter()
    latencies: list[float] = []
    errors: list[str] = []
    client_cpu = 0.0
    for _ in procs:
        got, failed, cpu = results.get()
        latencies += got
        errors += failed
        client_cpu += cpu
    wall = time.perf_counter() - started
    server_cpu = cpu_seconds(master) - cpu0 if master else 0.0
    db_cpu = cpu_seconds(postmaster) - db0 if postmaster else 0.0
    for proc in procs:
        proc.join()
    if errors:
        raise SystemExit(f"{len(errors)} failed pairs, first: {errors[0][:300]}")
    ordered = sorted(latencies)
    return {
        "pairs": len(ordered),
        "pairs_per_s": len(ordered) / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "client_cpu": client_cpu / len(ordered),
        "cpu": server_cpu / len(ordered),
        "db_cpu": db_cpu / len(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per VM at each level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--configs",
        default="",
        help="gunicorn configurations side by side, e.g. 2x8,2x4,3x4,sync:4 "
        "(default: --workers x --threads, gthread)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=0,
        help="load-generator processes the VMs are spread over (default: one per 4 VMs)",
    )
    parser.add_argument(
        "--trees", default=f"this={ROOT}", help="name=path,...: service source trees to compare"
    )
    parser.add_argument("--prefill", type=int, default=0, help="finished launches stored first")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="pairs per VM of an unmeasured first level (up to 16 VMs) on each service (0: none)",
    )
    parser.add_argument(
        "--scheme",
        choices=["amd-sev", "amd-sev-snp"],
        default="amd-sev",
        help="launch+validate (SEV) or challenge+attest (SEV-SNP) pairs",
    )
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    trees = [(n, Path(p).resolve()) for n, p in (t.split("=", 1) for t in args.trees.split(","))]
    configs = [
        Gunicorn.parse(c) for c in (args.configs or f"{args.workers}x{args.threads}").split(",")
    ]

    root = Path(tempfile.mkdtemp(prefix="attestd-bench-"))
    anchors = root / "anchors"
    if args.scheme == "amd-sev":
        platform: Any = SimulatedPlatform.create(name="bench", rsa_bits=2048)
        platform.write_trust_anchor(anchors)
        floor = crypto_floor(platform, anchors, 50)
        cached = crypto_floor(platform, anchors, 50, chain=False)
    else:
        platform = SnpPlatform.create(name="bench-snp")
        platform.write_anchor(anchors)
        floor = snp_crypto_floor(platform, 50)
    workload = Workload(args.scheme, platform)
    print(
        f"{args.scheme}: in-process crypto floor: {floor * 1000:.2f} ms CPU per pair "
        f"({1 / floor:.0f} pairs/s on one core)"
    )
    if args.scheme == "amd-sev":
        print(f"  of which without chain verification (cached): {cached * 1000:.2f} ms per pair")
    print(f"gunicorn: {', '.join(c.label for c in configs)}; {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"prefilled finished launches: {args.prefill}")
    if args.warmup:
        print(
            f"warm-up: {args.warmup} pairs per VM, up to 16 VMs, on each service before "
            "the levels (not counted)"
        )
    print(
        f"{'tree':<8} {'gunicorn':<13} {'backend':<11} {'VMs':>4} {'pairs':>6} {'pairs/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p50/floor':>9} {'CPU ms/pair':>11} {'PG ms/pair':>10} "
        f"{'client ms':>9}"
    )
    pg: PgServer | None = None
    try:
        for backend in args.backends.split(","):
            for config in configs:
                for tree_name, tree in trees:
                    data = root / f"{tree_name}-{config.label.replace(':', '-')}-{backend}"
                    data.mkdir()
                    url = None
                    postmaster = None
                    if backend == "postgresql":
                        pg = pg or PgServer.start()
                        url = pg.create_database()
                        postmaster = pg.postmaster_pid()
                    env = service_env(tree, data, anchors, url)
                    if args.scheme == "amd-sev-snp":
                        env["ATTESTD_PUBLIC_URLS"] = ",".join(PUBLIC_URLS)
                        env["ATTESTD_GUEST_PIN"] = GUEST_PIN
                        import_crl(Settings(data_dir=data), platform)
                    if url is not None:
                        env["ATTESTD_POOL_SIZE"] = str(config.threads)
                    owner = create_owner(env, tree)
                    if args.prefill:
                        db_url = env.get(
                            "ATTESTD_DATABASE_URL", f"sqlite:///{data / 'attestd.sqlite3'}"
                        )
                        prefill(db_url, args.prefill)
                    with serve(env, config, tree) as (url, master):
                        if args.warmup:
                            # every worker thread's first requests (connections, caches,
                            # the first chain verification) are not a steady-state pair
                            vms = min(levels[-1], 16)
                            processes = args.client_processes or (vms + 3) // 4
                            run_level(url, owner, workload, vms, args.warmup, 9999, processes)
                        for n, level in enumerate(levels):
                            processes = args.client_processes or (level + 3) // 4
                            r = run_level(
                                url,
                                owner,
                                workload,
                                level,
                                args.pairs,
                                n,
                                processes,
                                (master, postmaster),
                            )
                            cpu = r["cpu"]
                            db = f"{r['db_cpu'] * 1000:.2f}" if postmaster else "-"
                            print(
                                f"{tree_name:<8} {config.label:<13} {backend:<11} {level:>4} "
                                f"{r['pairs']:>6.0f} {r['pairs_per_s']:>8.1f} "
                                f"{r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} "
                                f"{r['p50'] / floor:>9.1f} {cpu * 1000:>11.2f} {db:>10} "
                                f"{r['client_cpu'] * 1000:>9.2f}",
                                flush=True,
                            )
    finally:
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"data directories kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
