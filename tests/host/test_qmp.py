"""The QMP relay against QEMU's real monitor: greeting, negotiation, events, OOB, cont hold."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import LaunchError
from attestd.host.qmp import (
    JsonSplitter,
    QmpClient,
    QmpError,
    RelayController,
    RelaySession,
    serve_relay,
)
from tests.host.qemu import paused_qemu

MESSAGES = [
    b'{"QMP": {"version": {"qemu": {"micro": 0}}, "capabilities": ["oob"]}}',
    b'{"return": {}, "id": "x\\"}{"}',
    b'{"event": "STOP", "data": {"a": [1, {"b": "}"}]}}',
    b"[1, 2]",
]


@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
@settings(max_examples=60, deadline=None)
def test_splitter_is_byte_exact_under_any_chunking(cuts: list[int]) -> None:
    stream = b"\r\n".join(MESSAGES) + b"\r\n"
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    splitter = JsonSplitter()
    tokens: list[tuple[str, bytes]] = []
    for lo, hi in itertools.pairwise(bounds):
        tokens.extend(splitter.feed(stream[lo:hi]))
    assert b"".join(raw for _, raw in tokens) == stream
    assert [raw for kind, raw in tokens if kind == "obj"] == MESSAGES
    assert all(raw.strip() == b"" for kind, raw in tokens if kind == "ws")


class Relay:
    """serve_relay in a thread on a socket under tmp_path."""

    def __init__(
        self, directory: Path, qemu_path: str, hook: Callable[[RelaySession], None] | None
    ):
        self.path = str(directory / "relay.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.controller = RelayController(on_first_cont=hook)
        self.thread = threading.Thread(
            target=serve_relay, args=(self.listener, qemu_path, self.controller), daemon=True
        )
        self.thread.start()

    def client(self) -> QmpClient:
        return QmpClient.connect(self.path)


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[str]:
    with paused_qemu(tmp_path) as path:
        yield path


pytestmark = pytest.mark.slow


def test_greeting_negotiation_and_queries_pass_unchanged(tmp_path: Path, qemu: str) -> None:
    relay = Relay(tmp_path, qemu, None)
    c = relay.client()
    assert set(c.greeting["QMP"]) == {"version", "capabilities"}
    assert "oob" in c.greeting["QMP"]["capabilities"]
    with pytest.raises(QmpError, match="capabilities negotiation"):
        c.execute("query-status")  # QEMU itself enforces negotiation through the relay
    c.execute("qmp_capabilities")
    status = c.execute("query-status")
    assert status["status"] == "prelaunch" and status["running"] is False
    # QEMU 7.2 (Debian 12) also says "singlestep": false; QEMU 10 (Debian 13) dropped it.
    assert set(status) - {"singlestep"} == {"status", "running"}
    c.close()


def test_first_cont_is_held_while_the_hook_talks_to_qemu(tmp_path: Path, qemu: str) -> None:
    seen: list[object] = []

    def hook(session: RelaySession) -> None:
        seen.append(session.command("query-status")["status"])
        with pytest.raises(QmpError, match="SEV"):
            session.command("query-sev-launch-measure")
        seen.append(session.command("query-sev")["enabled"])

    relay = Relay(tmp_path, qemu, hook)
    c = relay.client()
    c.execute("qmp_capabilities")
    assert c.execute("cont") == {}
    # the hook ran while paused; its replies were not forwarded to the client
    assert seen == ["prelaunch", False]
    assert c.execute("query-status")["running"] is True
    assert any(e["event"] == "RESUME" for e in c.events) or c.read()["event"] == "RESUME"
    # later conts pass straight through
    c.execute("stop")
    c.execute("cont")
    assert len(seen) == 2
    c.close()


def test_failed_hook_refuses_cont_and_cpus_never_run(tmp_path: Path, qemu: str) -> None:
    def hook(session: RelaySession) -> None:
        raise LaunchError("service refused /validate: measurement_mismatch")

    relay = Relay(tmp_path, qemu, hook)
    c = relay.client()
    c.execute("qmp_capabilities")
    with pytest.raises(QmpError, match="measurement_mismatch"):
        c.execute("cont")
    assert c.execute("query-status")["status"] == "prelaunch"
    with pytest.raises(QmpError, match="measurement_mismatch"):
        c.execute("cont")  # fail closed: every later cont is refused too
    assert c.execute("query-status")["running"] is False
    assert not [e for e in c.events if e["event"] == "RESUME"]
    c.close()


def test_survives_reconnect_and_keeps_launch_state(tmp_path: Path, qemu: str) -> None:
    calls: list[int] = []
    relay = Relay(tmp_path, qemu, lambda s: calls.append(1))
    c = relay.client()
    c.execute("qmp_capabilities")
    c.close()
    c2 = relay.client()  # fresh greeting from QEMU for the new connection
    assert "QMP" in c2.greeting
    c2.execute("qmp_capabilities")
    c2.execute("cont")
    c2.close()
    c3 = relay.client()
    c3.execute("qmp_capabilities")
    c3.execute("stop")
    c3.execute("cont")
    assert calls == [1]
    assert c3.execute("query-status")["running"] is True
    c3.close()


def test_oob_commands_and_replies_keep_their_order(tmp_path: Path, qemu: str) -> None:
    relay = Relay(tmp_path, qemu, None)
    c = relay.client()
    c.execute("qmp_capabilities", {"enable": ["oob"]})
    # in-band and out-of-band commands in one write; ids must come back unchanged
    batch = [
        {"execute": "query-status", "id": "ib-1"},
        {"exec-oob": "migrate-pause", "id": "oob-1"},
        {"execute": "query-name", "id": "ib-2"},
    ]
    c.sock.sendall(b"".join(json.dumps(m).encode() + b"\r\n" for m in batch))
    replies = {}
    order = []
    while len(replies) < 3:
        msg = c.read()
        if "id" in msg:
            replies[msg["id"]] = msg
            order.append(msg["id"])
    assert replies["ib-1"]["return"]["status"] == "prelaunch"
    assert "error" in replies["oob-1"]  # not in postcopy: QEMU's own error
    assert "return" in replies["ib-2"]
    assert order.index("ib-1") < order.index("ib-2")  # in-band replies stay in order
    c.close()


def test_events_are_forwarded(tmp_path: Path, qemu: str) -> None:
    relay = Relay(tmp_path, qemu, None)
    c = relay.client()
    c.execute("qmp_capabilities")
    c.execute("cont")
    c.execute("stop")
    names = [e["event"] for e in c.events]
    while "STOP" not in names:
        names.append(c.read()["event"])
    assert "RESUME" in names and "STOP" in names
    c.close()


def test_real_sev_backend_fails_closed_on_qemu_without_sev(tmp_path: Path, qemu: str) -> None:
    """The production path (query-sev-launch-measure …) on a QEMU without SEV: no cont."""
    from attestd.host.client import ServiceClient
    from attestd.host.config import HostSettings
    from attestd.host.driver import complete_launch
    from attestd.host.relay import QmpBackend
    from attestd.host.state import LaunchState

    state = LaunchState(
        domain="g", domain_uuid=str(uuid.uuid4()), domain_id=1, vm_id=str(uuid.uuid4()),
        service="https://attest.invalid/v1", launch_id="L-no-sev-0001", policy=1,
        path="wrapper", simulate=False,
    )  # fmt: skip
    client = ServiceClient(state.service, HostSettings())  # never reached

    def attest(session: RelaySession) -> None:
        complete_launch(state, QmpBackend(session), client)

    relay = Relay(tmp_path, qemu, attest)
    c = relay.client()
    c.execute("qmp_capabilities")
    with pytest.raises(QmpError, match="SEV launch measurement is not available"):
        c.execute("cont")
    assert c.execute("query-status")["status"] == "prelaunch"
    c.close()
