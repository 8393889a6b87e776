"""Profile: what one launch+validate pair costs inside the service, without HTTP.

Runs ``--pairs`` complete launches (``--scheme amd-sev``, the default) or SEV-SNP
challenge+attest pairs (``--scheme amd-sev-snp``: bench_service.py's ``Workload``, a
guest whose report the software SNP platform signs between the two requests, the
ARK's CRL imported) through the Flask test client of
``create_app`` (SQLite, or PostgreSQL with ``--backend postgresql``), counts the
database transactions and statements of one pair (``Database.observe``), the
server CPU per pair (process CPU time minus the simulated firmware's share) and
the store's share of it, and prints the top functions of a cProfile run by
cumulative time. With ``--wsgi``
the requests are WSGI calls of the application with a hand-built environ (what
gunicorn hands it), not the test client, whose environ building and response
wrapping cost about as much as Flask's own request handling; ``--sort tottime``
orders the profile by time spent in each function itself.

    .venv/bin/python bench/profile_pair.py [--backend sqlite|postgresql] [--pairs 200] [--wsgi]
                                           [--scheme amd-sev|amd-sev-snp]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestd.api import create_app
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from attestd.sim.snp import SnpPlatform
from bench.bench_service import FIRMWARE, Workload, cpu_seconds, registration
from tests.api.simhost import Boot, launch_body, measure, validate_body
from tests.pgserver import PgServer
from tests.snpfix import GUEST_PIN, PUBLIC_URLS, Guest, import_crl

VM = "6f1d3a2c-9b8e-4f7a-8c6d-5e4b3a291807"


class WsgiAnswer:
    """The parts of a test-client response :func:`one_pair` reads."""

    def __init__(self, status: str, body: bytes) -> None:
        self.status_code = int(status.split(" ", 1)[0])
        self.text = body.decode()
        self.json = json.loads(body)


class WsgiClient:
    """POSTs as direct WSGI calls of ``app`` (the environ a WSGI server builds)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def post(self, path: str, *, json: Any, headers: dict[str, str] | None = None) -> WsgiAnswer:
        body = b"" if json is None else _dumps(json).encode()
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8080",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if json is not None:
            environ["CONTENT_TYPE"] = "application/json"
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        status: list[str] = []

        def start_response(line: str, _headers: Any, _exc: Any = None) -> None:
            status.append(line)

        result = self.app(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        return WsgiAnswer(status[0], data)


_dumps = json.dumps


class Counting:
    """Transactions and statements seen by ``Database.observe`` (Core and fast path)."""

    def __init__(self) -> None:
        self.transactions = 0
        self.statements: Counter[str] = Counter()

    def __call__(self, sql: str, _params: Any) -> None:
        if sql == "BEGIN":
            self.transactions += 1
        else:
            self.statements[" ".join(sql.split()[:3])] += 1

    def reset(self) -> None:
        self.transactions = 0
        self.statements.clear()


#: The store methods one pair calls (host tokens off: no host_by_token_hash here).
STORE_METHODS = ("vm_for_launch", "begin_launch", "claim_launch", "release_launch")
#: The store methods one SEV-SNP pair calls (the VM by UUID for each request).
SNP_STORE_METHODS = ("sole_vm", "add_challenge", "claim_challenge", "spend_attestation")


class StoreClock:
    """Process CPU time spent in the store's hot methods (wrapped on the instance)."""

    def __init__(self, store: Any, methods: tuple[str, ...] = STORE_METHODS) -> None:
        self.spent: Counter[str] = Counter()
        self.methods = methods
        for name in methods:
            setattr(store, name, self._timed(name, getattr(store, name)))

    def _timed(self, name: str, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[name] += time.process_time() - started

        return timed


class SimClock:
    """The ``sim_lock`` of :meth:`Workload.pair`, which holds it around the simulated
    platform's work between the two requests: here it notes that work's CPU time."""

    def __init__(self, sim_cpu: list[float]) -> None:
        self.sim_cpu = sim_cpu
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.process_time()

    def __exit__(self, *_exc: object) -> None:
        self.sim_cpu.append(time.process_time() - self.started)


class Guestside:
    """The ``conn`` of :meth:`Workload.pair` over a test or WSGI client: one guest key."""

    guest: Guest | None = None

    def __init__(self, client: Any) -> None:
        self.client = client

    def post(self, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        answer = self.client.post(path, json=body)
        return answer.status_code, answer.text.encode()


def one_snp_pair(workload: Workload, conn: Guestside, sim_cpu: list[float]) -> None:
    """/attest/challenge, the guest's report signed by the platform (its CPU time noted
    apart), /attest: bench_service.py's pair."""
    done = workload.pair(conn, VM, SimClock(sim_cpu))  # type: ignore[arg-type]
    assert not isinstance(done, str), done


def one_pair(client: Any, platform: SimulatedPlatform, sim_cpu: list[float]) -> None:
    """/launch, the simulated firmware (its CPU time noted apart), /validate."""
    grant = client.post(f"/v1/vm/{VM}/launch", json=launch_body(platform))
    assert grant.status_code == 200, grant.text
    t0 = time.process_time()
    _h, measurement = measure(platform, grant.json, Boot(firmware=FIRMWARE))
    body = validate_body(platform, grant.json, measurement, Boot(firmware=FIRMWARE))
    sim_cpu.append(time.process_time() - t0)
    answer = client.post(f"/v1/vm/{VM}/validate", json=body)
    assert answer.status_code == 200, answer.text


def profile(
    settings: Settings,
    platform: SimulatedPlatform | SnpPlatform,
    pairs: int,
    top: int,
    *,
    wsgi: bool = False,
    sort: str = "cumulative",
    postmaster: int | None = None,
) -> None:
    """Print statements per pair, server CPU per pair (and, given the ``postmaster`` pid
    of a PostgreSQL server, that server's CPU per pair) and the cProfile top."""
    app = create_app(settings)
    client: Any = WsgiClient(app) if wsgi else app.test_client()
    services = app.extensions["attestd"].services
    token = services.principals.create_owner("bench")
    sim_cpu: list[float] = []
    if isinstance(platform, SnpPlatform):
        workload = Workload("amd-sev-snp", platform)
        body, methods = workload.registration(), SNP_STORE_METHODS
        conn = Guestside(client)

        def run_pair() -> None:
            one_snp_pair(workload, conn, sim_cpu)
    else:
        body, methods = registration(), STORE_METHODS
        sev = platform

        def run_pair() -> None:
            one_pair(client, sev, sim_cpu)

    created = client.post(f"/v1/vm/{VM}", json=body, headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201, created.text
    counting = Counting()
    run_pair()  # warm the caches (chain, digests, anchors)
    with services.store.observe(counting):
        run_pair()
    print(f"database transactions per pair: {counting.transactions}")
    print(f"database statements per pair: {sum(counting.statements.values())}")
    for sql, count in sorted(counting.statements.items()):
        print(f"  {count} x {sql}")
    sim_cpu.clear()
    clock = StoreClock(services.store, methods)
    started = time.process_time()
    db_started = 0.0 if postmaster is None else cpu_seconds(postmaster)
    for _ in range(pairs):
        run_pair()
    cpu = (time.process_time() - started - sum(sim_cpu)) / pairs
    db_cpu = None if postmaster is None else (cpu_seconds(postmaster) - db_started) / pairs
    how = "WSGI calls" if wsgi else "test client"
    print(f"server CPU per pair (in process, no HTTP, {how}): {cpu * 1000:.2f} ms")
    shares = ", ".join(f"{name} {clock.spent[name] / pairs * 1000:.2f}" for name in methods)
    print(f"  of which storage: {sum(clock.spent.values()) / pairs * 1000:.2f} ms ({shares})")
    if db_cpu is not None:
        print(f"PostgreSQL server CPU per pair (its own processes): {db_cpu * 1000:.2f} ms")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(pairs):
        run_pair()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
    print(out.getvalue())
    services.store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--wsgi", action="store_true", help="direct WSGI calls instead of the test client"
    )
    parser.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime"])
    parser.add_argument(
        "--scheme",
        choices=["amd-sev", "amd-sev-snp"],
        default="amd-sev",
        help="launch+validate (SEV) or challenge+attest (SEV-SNP) pairs",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="attestd-profile-"))
    anchors = root / "anchors"
    data = root / "data"
    data.mkdir()
    platform: SimulatedPlatform | SnpPlatform
    if args.scheme == "amd-sev":
        platform = SimulatedPlatform.create(name="bench", rsa_bits=2048)
        platform.write_trust_anchor(anchors)
    else:
        platform = SnpPlatform.create(name="bench-snp")
        platform.write_anchor(anchors)
    # one anonymous host profiling pairs: the safe defaults (host tokens, flood bounds) off
    settings = Settings(
        data_dir=data,
        trust_anchors_dir=anchors,
        kds_offline=True,
        require_host_token=False,
        host_launch_rate=0,
        max_pending_launches=0,
        attest_vm_rate=0,
    )
    if isinstance(platform, SnpPlatform):
        # the guest's initdata names the service; its CRL imported as an operator would
        settings = settings.replace(public_urls=PUBLIC_URLS, guest_pin=GUEST_PIN)
        import_crl(settings, platform)
    pg: PgServer | None = None
    try:
        if args.backend == "postgresql":
            pg = PgServer.start()
            settings = settings.replace(database_url=pg.create_database())
        profile(
            settings,
            platform,
            args.pairs,
            args.top,
            wsgi=args.wsgi,
            sort=args.sort,
            postmaster=None if pg is None else pg.postmaster_pid(),
        )
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
