"""Benchmark: what the HTTP stack costs per request before attestd does anything.

gunicorn exactly as ``attestd serve`` runs it (the same :func:`gunicorn_argv`: gthread
workers and threads from the configuration defaults, the access log on, written to
``/dev/null`` as in bench_service.py) serves the stand-in applications of
``bench/stack_apps.py`` a ``POST /v1/vm/<uuid>/launch`` with a real launch body (14 KB of
JSON) and answers a JSON object the size of a launch session:

- ``bare``, a plain WSGI callable: gunicorn's own cost (HTTP parsing, its thread pool,
  the access log, the sockets);
- ``flask``, a minimal Flask view (routing, ``request.get_json``, a response): plus what
  Flask and werkzeug cost per request.

For each level (concurrent keep-alive connections, spread over one load-generator
process per 4) it prints requests/s, the server CPU per request (user + system time of
the workers over the level) and the load generator's CPU per request. A launch+validate
pair is two such requests on top of the service's own work: bench_service.py prints the
cryptography of a pair ("without chain verification"), profile_pair.py the rest.

``--servers gunicorn,granian`` adds granian (a Rust HTTP server with a WSGI interface)
for comparison, as ``granian --interface wsgi`` with the same workers, threads
(``--blocking-threads``) and access log; it runs only where the ``granian`` package is
installed (``pip install granian``): attestd does not depend on it.

    .venv/bin/python bench/bench_stack.py [--levels 1,16] [--requests 400]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestd.commands.server import gunicorn_argv
from attestd.config import Settings
from attestd.sim.platform import SimulatedPlatform
from bench.bench_service import cpu_seconds
from tests.api.servers import free_port
from tests.api.simhost import launch_body

ROOT = Path(__file__).resolve().parent.parent
PATH = "/v1/vm/6f1d3a2c-9b8e-4f7a-8c6d-5e4b3a291807/launch"
APPS = ("bare", "flask")


def server_argv(server: str, app: str, port: int, workers: int, threads: int) -> list[str]:
    """The command line of ``server`` serving ``bench.stack_apps:<app>`` on ``port``."""
    target = f"bench.stack_apps:{app}"
    if server == "gunicorn":
        settings = Settings(threads=threads, log_level="WARNING")
        argv = gunicorn_argv(
            settings, f"127.0.0.1:{port}", workers, ["--access-logfile", "/dev/null"]
        )
        return [*argv[:-1], target]
    return [
        *(sys.executable, "-m", "granian", "--interface", "wsgi", "--no-ws"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--blocking-threads", str(threads)),
        *("--log-level", "warning", "--access-log", target),
    ]


@contextmanager
def serve(server: str, app: str, workers: int, threads: int) -> Iterator[tuple[int, int]]:
    """Run the server on a free port until it answers; yields (port, master pid)."""
    port = free_port()
    proc = subprocess.Popen(
        server_argv(server, app, port, workers, threads),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server} serving {app} did not start") from None
                time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def client_process(port: int, body: bytes, conns: int, requests: int, start: Any, out: Any) -> None:
    """``conns`` keep-alive connections in threads, each sending ``requests`` POSTs;
    sends (errors, CPU seconds) to ``out``."""
    errors: list[int] = []
    ready = threading.Barrier(conns + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        ready.wait()
        for _ in range(requests):
            conn.request("POST", PATH, body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(resp.status)

    threads = [threading.Thread(target=client) for _ in range(conns)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    start.wait()
    ready.wait()
    for t in threads:
        t.join()
    out.put((errors, time.process_time() - cpu0))


def run_level(port: int, master: int, body: bytes, level: int, requests: int) -> list[str]:
    """One level: its row (requests/s, server CPU and client CPU per request)."""
    ctx = multiprocessing.get_context("fork")
    spread = [level // -(-level // 4)] * (-(-level // 4))
    spread[0] += level - sum(spread)
    start = ctx.Barrier(len(spread) + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=client_process, args=(port, body, n, requests, start, out))
        for n in spread
    ]
    for p in procs:
        p.start()
    cpu0 = cpu_seconds(master)
    started = time.monotonic()
    start.wait()
    results = [out.get() for _ in procs]
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(master) - cpu0
    for p in procs:
        p.join()
    errors = [e for errs, _ in results for e in errs]
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. HTTP {errors[0]}")
    total = level * requests
    client = sum(c for _, c in results)
    return [
        str(level),
        str(total),
        f"{total / elapsed:.0f}",
        f"{cpu / total * 1000:.3f}",
        f"{client / total * 1000:.3f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="gunicorn")
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--requests", type=int, default=400, help="per connection")
    parser.add_argument("--workers", type=int, default=Settings().workers)
    parser.add_argument("--threads", type=int, default=Settings().threads)
    args = parser.parse_args()
    servers = args.servers.split(",")
    for server in servers:
        if server not in ("gunicorn", "granian"):
            parser.error(f"unknown server {server!r} (gunicorn, granian)")
    if "granian" in servers and importlib.util.find_spec("granian") is None:
        print("granian is not installed: measuring gunicorn only (pip install granian)")
        servers.remove("granian")
    body = json.dumps(launch_body(SimulatedPlatform.create(name="bench", rsa_bits=2048))).encode()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.workers} workers x {args.threads} threads; {os.cpu_count()} CPUs")
    print(f"request body {len(body)} bytes; load average before: {load}")
    header = ["server", "app", "conns", "requests", "req/s", "CPU ms/req", "client ms/req"]
    print("{:<9} {:<6} {:>5} {:>9} {:>7} {:>11} {:>14}".format(*header))
    for server in servers:
        for app in APPS:
            with serve(server, app, args.workers, args.threads) as (port, master):
                for level in (int(x) for x in args.levels.split(",")):
                    row = [server, app, *run_level(port, master, body, level, args.requests)]
                    print("{:<9} {:<6} {:>5} {:>9} {:>7} {:>11} {:>14}".format(*row), flush=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after: {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
