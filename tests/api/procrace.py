"""PUT / DELETE racing ``/validate`` on a real ``attestd serve`` (gunicorn, HTTP).

Shared by tests/api/test_proc_race.py (a few dozen rounds) and bench/race_put_validate.py
(the issue's 250 rounds). Each round registers a fresh VM whose raw secret names its
revision, starts a launch, measures it on the simulator, then sends the ``/validate``
and a PUT (new raw secret) or a DELETE at the same moment. The released LAUNCH_SECRET is
opened with the simulated platform's TEK (what the guest firmware would see), and the
audit log of the VM says in which order the release and the change committed (event
ids follow commit order: both write the VM row, or wait for its lock, before their
event). A round is wrong when the old revision's secrets were released after the PUT or
DELETE committed, or when the released secrets belong to no single revision.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
import uuid as _uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import create_engine, text

from attestd.sev.secrets import parse_secret_table
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import RAW_GUID, Boot, b64, launch_body, measure, sev, validate_body


def _registration(ovmf: bytes, raw: bytes) -> dict[str, Any]:
    body = sev(ovmf)
    body["secrets"] = [s for s in body["secrets"] if s["type"] != "raw"] + [
        {"type": "raw", "guid": RAW_GUID, "data": b64(raw)}
    ]
    return body


@dataclass
class RaceTally:
    """What the rounds did (counts by outcome) and every wrong round, described."""

    rounds: int = 0
    released_old: int = 0  # released before the change committed (allowed)
    refused: int = 0  # the change won: the validate was refused
    statuses: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)


class Racer:
    """Runs race rounds against one service as one owner and one host."""

    def __init__(
        self,
        url: str,
        owner: dict[str, str],
        host: dict[str, str],
        platform: SimulatedPlatform,
        ovmf: bytes,
    ) -> None:
        self.url = url
        self.owner = owner
        self.host = host
        self.platform = platform
        self.ovmf = ovmf
        self.sim = threading.Lock()  # the simulator is not thread-safe
        self.tally = RaceTally()

    def _open(self, handle: int, answer: dict[str, Any]) -> bytes | None:
        """The raw secret the guest would read from the released LAUNCH_SECRET."""
        with self.sim:
            self.platform.launch_secret(
                handle,
                base64.b64decode(answer["secret-header"]),
                base64.b64decode(answer["secret-table"]),
            )
            table = self.platform.secret_table(handle)
        assert table is not None
        raw = [e.data for e in parse_secret_table(table) if str(e.guid) == RAW_GUID]
        return raw[0] if len(raw) == 1 else None

    def round(self, index: int, *, delete: bool) -> None:
        """One launch whose validate races a PUT (or a DELETE)."""
        tally = self.tally
        vm = str(_uuid.uuid4())
        old, new = f"rev-1 of {vm}".encode(), f"rev-2 of {vm}".encode()
        made = requests.post(
            f"{self.url}/v1/vm/{vm}",
            json=_registration(self.ovmf, old),
            headers=self.owner,
            timeout=30,
        )
        assert made.status_code == 201, made.text
        grant = requests.post(
            f"{self.url}/v1/vm/{vm}/launch",
            json=launch_body(self.platform),
            headers=self.host,
            timeout=30,
        )
        assert grant.status_code == 200, grant.text
        with self.sim:
            handle, measurement = measure(self.platform, grant.json(), Boot(firmware=self.ovmf))
        body = validate_body(self.platform, grant.json(), measurement, Boot(firmware=self.ovmf))
        start = threading.Barrier(2)
        answers: dict[str, requests.Response] = {}

        def validate() -> None:
            start.wait()
            answers["validate"] = requests.post(
                f"{self.url}/v1/vm/{vm}/validate", json=body, headers=self.host, timeout=60
            )

        def change() -> None:
            start.wait()
            if delete:
                answers["change"] = requests.delete(
                    f"{self.url}/v1/vm/{vm}", headers=self.owner, timeout=60
                )
            else:
                answers["change"] = requests.put(
                    f"{self.url}/v1/vm/{vm}",
                    json=_registration(self.ovmf, new),
                    headers=self.owner,
                    timeout=60,
                )

        threads = [threading.Thread(target=validate), threading.Thread(target=change)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        tally.rounds += 1
        what = "DELETE" if delete else "PUT"
        answer, changed = answers["validate"], answers["change"]
        key = f"{what} {changed.status_code} / validate {answer.status_code}"
        tally.statuses[key] = tally.statuses.get(key, 0) + 1
        if changed.status_code not in (200, 204):
            tally.wrong.append(f"round {index}: {what} answered {changed.status_code}")
            return
        events = requests.get(
            f"{self.url}/v1/vm/{vm}/events?limit=1000", headers=self.owner, timeout=30
        )
        assert events.status_code == 200, events.text
        log = events.json()["events"]
        change_kind = "deleted" if delete else "replaced"
        change_ids = [e["id"] for e in log if e["kind"] == change_kind]
        released_ids = [
            e["id"] for e in log if e["kind"] == "validate" and e["outcome"] == "released"
        ]
        if len(change_ids) != 1:
            tally.wrong.append(f"round {index}: {len(change_ids)} {change_kind} events")
            return
        if answer.status_code != 200:
            if released_ids:
                tally.wrong.append(f"round {index}: refused, yet a release was logged")
            elif answer.status_code not in (404, 409):
                tally.wrong.append(f"round {index}: validate answered {answer.status_code}")
            else:
                tally.refused += 1
            return
        raw = self._open(handle, answer.json())
        if raw != old:
            tally.wrong.append(f"round {index}: released secrets of no single revision: {raw!r}")
        elif len(released_ids) != 1 or released_ids[0] > change_ids[0]:
            tally.wrong.append(
                f"round {index}: the old revision's secrets were released after the "
                f"{what} committed (events {released_ids} vs {change_ids})"
            )
        else:
            tally.released_old += 1


@contextmanager
def holding_lock(database_url: str) -> Iterator[Callable[[], bool]]:
    """Hold a lock the validate waits for; yields "is a validate waiting in the
    database?" (PostgreSQL: the VM row, which the release locks after the claim
    committed; SQLite: the write lock, which the claim itself waits for)."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1].split("?", 1)[0]
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield lambda: True
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.connect() as holder, engine.connect() as watcher:
            holder.execute(text("SELECT id FROM vms FOR UPDATE")).all()

            def waiting() -> bool:
                found = watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar_one()
                watcher.rollback()
                return bool(found)

            yield waiting
            holder.rollback()
    finally:
        engine.dispose()


def wait_until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
