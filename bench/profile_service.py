"""Profile: one launch+validate pair through the real stack (gunicorn, HTTP, Flask).

Starts ``attestd serve`` with one sync worker (requests run in the worker's main
thread, so one profiler sees gunicorn's HTTP parsing, the WSGI call and the
response) and a gunicorn ``-c`` file that enables cProfile in ``post_worker_init``
and dumps it in ``worker_exit``. One client runs ``--pairs`` pairs one after the
other; it prints the worker's CPU per pair (from ``/proc``, profiled and, in a
second service without the profiler, unprofiled), the profile's own time per pair
by package, and the top functions. Note that cProfile counts wall time: the
blocking ``recv``/``select`` of the worker waiting for the client show up too.

    .venv/bin/python bench/profile_service.py [--backend sqlite|postgresql] [--pairs 300]
"""

from __future__ import annotations

import argparse
import io
import pstats
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestd.sim.platform import SimulatedPlatform
from bench.bench_service import (
    ROOT,
    Gunicorn,
    Workload,
    cpu_seconds,
    create_owner,
    run_level,
    serve,
    service_env,
)
from tests.pgserver import PgServer

HOOKS = """import cProfile, os
_profile = cProfile.Profile()

def post_worker_init(worker):
    _profile.enable()

def worker_exit(server, worker):
    _profile.disable()
    _profile.dump_stats(os.environ["ATTESTD_BENCH_PROFILE"])
"""

#: Where a function's time is counted (first match of its file name)
GROUPS = [
    "gunicorn",
    "attestd/api",
    "attestd/storage",
    "attestd/service",
    "attestd/sev",
    "attestd/",
    "sqlalchemy",
    "psycopg",
    "flask",
    "werkzeug",
    "marshmallow",
    "cryptography",
    "json/",
    "logging",
]


def _group(func: tuple[str, int, str]) -> str:
    path, _line, name = func
    for key in GROUPS:
        if key in path:
            return key
    if path == "~":
        return "built-in " + name.split(" of ")[0].strip("<>{}")[:40]
    return Path(path).name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="attestd-profile-service-"))
    platform = SimulatedPlatform.create(name="bench", rsa_bits=2048)
    workload = Workload("amd-sev", platform)
    anchors = root / "anchors"
    platform.write_trust_anchor(anchors)
    hooks = root / "profile_hooks.py"
    hooks.write_text(HOOKS)
    out = root / "worker.prof"
    sync = Gunicorn("sync", 1, 1)
    pg: PgServer | None = None
    try:
        for profiled in (False, True):
            data = root / f"data-{profiled}"
            data.mkdir()
            url = None
            if args.backend == "postgresql":
                pg = pg or PgServer.start()
                url = pg.create_database()
            env = service_env(ROOT, data, anchors, url)
            env["ATTESTD_BENCH_PROFILE"] = str(out)
            owner = create_owner(env, ROOT)
            extra = ("-c", str(hooks)) if profiled else ()
            with serve(env, sync, ROOT, extra) as (url, master):
                run_level(url, owner, workload, 1, 5, 0, 1)  # warm the caches
                cpu0 = cpu_seconds(master)
                result = run_level(url, owner, workload, 1, args.pairs, 1, 1)
                cpu = (cpu_seconds(master) - cpu0) / result["pairs"]
            what = "profiled" if profiled else "not profiled"
            print(f"worker CPU per pair through gunicorn ({what}): {cpu * 1000:.2f} ms")
        stats = pstats.Stats(str(out))
        pairs = args.pairs + 5
        groups: Counter[str] = Counter()
        for func, (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
            groups[_group(func)] += tottime
        print(f"profiled time per pair by where it is spent ({pairs} pairs, wall time):")
        for name, seconds in groups.most_common(25):
            print(f"  {name:<40} {seconds * 1000 / pairs:7.3f} ms")
        text = io.StringIO()
        stats.stream = text
        stats.sort_stats("tottime").print_stats(args.top)
        print(text.getvalue())
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
