"""Race a PUT or DELETE against /validate on a real ``attestd serve`` (issue 10).

Starts gunicorn (``--workers``) on SQLite or on a throw-away PostgreSQL, runs
``--rounds`` rounds of tests/api/procrace.py (launch, then validate and a PUT changing
the secrets, every third round a DELETE, sent at the same moment) and prints how the
rounds ended and how many released the old revision's secrets after the change
committed (0 expected).

    .venv/bin/python bench/race_put_validate.py [--backend sqlite|postgresql] [--rounds 250]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestd.sim.platform import SimulatedPlatform
from tests.api.procrace import Racer
from tests.api.servers import Server, cli_token
from tests.pgserver import PgServer

OVMF = Path(__file__).resolve().parent.parent / "tests" / "data" / "ovmf" / "OVMF.amdsev.fd"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        platform = SimulatedPlatform.create(name="race", rsa_bits=2048)
        platform.write_trust_anchor(root / "anchors")
        pg: PgServer | None = None
        url = f"sqlite:///{root / 'attestd.sqlite3'}"
        if args.backend == "postgresql":
            pg = PgServer.start()
            url = pg.create_database()
        env = dict(os.environ)
        env.update(
            {
                "ATTESTD_DATA_DIR": str(root / "data"),
                "ATTESTD_DATABASE_URL": url,
                "ATTESTD_TRUST_ANCHORS_DIR": str(root / "anchors"),
                "ATTESTD_KDS_OFFLINE": "1",
                "ATTESTD_CONFIG": "",
                "ATTESTD_HOST_LAUNCH_RATE": "0",
            }
        )
        (root / "data").mkdir()
        server = Server(env, workers=args.workers)
        try:
            owner = cli_token(env, "owner", "create", "alice")
            host = cli_token(env, "host", "create", "node-1", "--owner", "alice")
            server.start()
            racer = Racer(server.url, owner, host, platform, OVMF.read_bytes())
            for index in range(args.rounds):
                racer.round(index, delete=index % 3 == 2)
        finally:
            server.stop()
            if pg is not None:
                pg.stop()
    tally = racer.tally
    print(f"backend {args.backend}, {args.workers} workers, {tally.rounds} rounds")
    for key, count in sorted(tally.statuses.items()):
        print(f"  {key}: {count}")
    print(f"  released before the change committed: {tally.released_old}")
    print(f"  refused (the change won): {tally.refused}")
    print(f"  wrong (old secrets after the change, or other): {len(tally.wrong)}")
    for line in tally.wrong[:20]:
        print("   ", line)
    return 1 if tally.wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
