"""Profile: what one launch+validate pair costs inside the service, without HTTP.

Runs ``--pairs`` complete launches through the Flask test client of
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
from bench.bench_service import FIRMWARE, registration
from tests.api.simhost import Boot, launch_body, measure, validate_body
from tests.pgserver import PgServer

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
        body = _dumps(json).encode()
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
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
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


class StoreClock:
    """Process CPU time spent in the store's hot methods (wrapped on the instance)."""

    def __init__(self, store: Any) -> None:
        self.spent: Counter[str] = Counter()
        for name in STORE_METHODS:
            setattr(store, name, self._timed(name, getattr(store, name)))

    def _timed(self, name: str, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[name] += time.process_time() - started

        return timed


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
    platform: SimulatedPlatform,
    pairs: int,
    top: int,
    *,
    wsgi: bool = False,
    sort: str = "cumulative",
) -> None:
    """Print statements per pair, server CPU per pair and the cProfile top."""
    app = create_app(settings)
    client: Any = WsgiClient(app) if wsgi else app.test_client()
    services = app.extensions["attestd"].services
    token = services.principals.create_owner("bench")
    created = client.post(
        f"/v1/vm/{VM}", json=registration(), headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    counting = Counting()
    sim_cpu: list[float] = []
    one_pair(client, platform, sim_cpu)  # warm the caches (chain, digests, anchors)
    with services.store.observe(counting):
        one_pair(client, platform, sim_cpu)
    print(f"database transactions per pair: {counting.transactions}")
    print(f"database statements per pair: {sum(counting.statements.values())}")
    for sql, count in sorted(counting.statements.items()):
        print(f"  {count} x {sql}")
    sim_cpu.clear()
    clock = StoreClock(services.store)
    started = time.process_time()
    for _ in range(pairs):
        one_pair(client, platform, sim_cpu)
    cpu = (time.process_time() - started - sum(sim_cpu)) / pairs
    how = "WSGI calls" if wsgi else "test client"
    print(f"server CPU per pair (in process, no HTTP, {how}): {cpu * 1000:.2f} ms")
    shares = ", ".join(f"{name} {clock.spent[name] / pairs * 1000:.2f}" for name in STORE_METHODS)
    print(f"  of which storage: {sum(clock.spent.values()) / pairs * 1000:.2f} ms ({shares})")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(pairs):
        one_pair(client, platform, sim_cpu)
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
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="attestd-profile-"))
    platform = SimulatedPlatform.create(name="bench", rsa_bits=2048)
    anchors = root / "anchors"
    platform.write_trust_anchor(anchors)
    data = root / "data"
    data.mkdir()
    # one anonymous host profiling pairs: the safe defaults (host tokens, flood bounds) off
    settings = Settings(
        data_dir=data,
        trust_anchors_dir=anchors,
        kds_offline=True,
        require_host_token=False,
        host_launch_rate=0,
        max_pending_launches=0,
    )
    pg: PgServer | None = None
    try:
        if args.backend == "postgresql":
            pg = PgServer.start()
            settings = settings.replace(database_url=pg.create_database())
        profile(settings, platform, args.pairs, args.top, wsgi=args.wsgi, sort=args.sort)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
