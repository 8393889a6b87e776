"""QMP plumbing: a byte-exact JSON stream splitter, a small QMP client, and the relay
that sits between libvirt and QEMU's monitor and holds back the first ``cont``.

The relay forwards every byte unchanged in both directions (greeting,
capabilities negotiation, events, out-of-band commands and their replies in the
order QEMU emits them). Only while it holds libvirt's first ``cont`` does it
issue its own commands on the same connection (ids ``attestd-N``); their replies
are consumed, everything else still flows to libvirt. libvirt waits for the
``cont`` reply and sends nothing else meanwhile.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from attestd.errors import LaunchError

logger = logging.getLogger(__name__)

OWN_ID_PREFIX = "attestd-"


class JsonSplitter:
    """Incremental splitter of a stream of JSON objects into exact byte tokens.

    ``feed`` yields ``("obj", raw)`` for every complete top-level value and
    ``("ws", raw)`` for the bytes between values (line endings), in order.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._scan = 0

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        """Add bytes; yield the tokens completed by them."""
        self._buf += data
        i = self._scan
        while i < len(self._buf):
            c = self._buf[i]
            if self._depth == 0:
                if c in b"{[":
                    if i:
                        yield "ws", bytes(self._buf[:i])
                        del self._buf[:i]
                        i = 0
                    self._depth = 1
                i += 1
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self._in_string = False
            elif c == 0x22:
                self._in_string = True
            elif c in b"{[":
                self._depth += 1
            elif c in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    yield "obj", bytes(self._buf[: i + 1])
                    del self._buf[: i + 1]
                    i = 0
                    continue
            i += 1
        if self._depth == 0 and self._buf:
            yield "ws", bytes(self._buf)
            self._buf.clear()
            i = 0
        self._scan = i


def _recv_tokens(sock: socket.socket, initial: bytes = b"") -> Iterator[tuple[str, bytes]]:
    splitter = JsonSplitter()
    if initial:
        yield from splitter.feed(initial)
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield from splitter.feed(data)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class QmpError(LaunchError):
    """QEMU answered a command with an error."""


class QmpClient:
    """A minimal synchronous QMP client (used by tests and tools, not by the relay)."""

    def __init__(self, sock: socket.socket, *, timeout: float = 10.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self._tokens = _recv_tokens(sock)
        self.events: list[dict[str, Any]] = []
        self.greeting = self.read()
        self._next = 0

    @classmethod
    def connect(cls, path: str, *, timeout: float = 10.0) -> QmpClient:
        """Connect to a unix-socket monitor and read the greeting."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock, timeout=timeout)

    def read(self) -> dict[str, Any]:
        """Next message (event, reply or greeting)."""
        for kind, raw in self._tokens:
            if kind == "obj":
                doc = _parse(raw)
                if doc is not None:
                    return doc
        raise LaunchError("QMP connection closed")

    def send(self, doc: dict[str, Any]) -> None:
        """Send one command object."""
        self.sock.sendall(json.dumps(doc).encode() + b"\r\n")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command; events seen meanwhile go to ``events``; errors raise QmpError."""
        self._next += 1
        ident = f"client-{self._next}"
        doc: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            doc["arguments"] = arguments
        self.send(doc)
        while True:
            reply = self.read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != ident:
                continue
            if "error" in reply:
                raise QmpError(f"QEMU {command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


@dataclass
class RelayController:
    """State shared by all connections of one relay (survives libvirt reconnecting).

    ``on_first_cont(session)`` runs the launch driver while ``cont`` is held; it
    raises to refuse. Once it failed, every later ``cont`` is refused too.
    """

    on_first_cont: Callable[[RelaySession], None] | None
    done: bool = False
    failure: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class RelaySession:
    """One libvirt connection relayed to one QEMU monitor connection."""

    def __init__(
        self,
        client: socket.socket,
        qemu: socket.socket,
        controller: RelayController,
        *,
        command_timeout: float = 60.0,
        initial: bytes = b"",
    ) -> None:
        self.initial = initial
        self.client = client
        self.qemu = qemu
        self.controller = controller
        self.command_timeout = command_timeout
        self._client_lock = threading.Lock()
        self._qemu_lock = threading.Lock()
        self._pending: dict[str, queue.Queue[dict[str, Any] | None]] = {}
        self._pending_lock = threading.Lock()
        self._counter = 0

    # -- writing -----------------------------------------------------------------
    def _to_client(self, raw: bytes) -> None:
        with self._client_lock:
            self.client.sendall(raw)

    def _to_qemu(self, raw: bytes) -> None:
        with self._qemu_lock:
            self.qemu.sendall(raw)

    # -- QEMU -> libvirt -----------------------------------------------------------
    def _pump_from_qemu(self) -> None:
        forward_ws = True
        try:
            for kind, raw in _recv_tokens(self.qemu, self.initial):
                if kind == "ws":
                    if forward_ws:
                        self._to_client(raw)
                    continue
                doc = _parse(raw)
                ident = doc.get("id") if doc is not None else None
                if isinstance(ident, str) and ident.startswith(OWN_ID_PREFIX):
                    with self._pending_lock:
                        waiter = self._pending.pop(ident, None)
                    if waiter is not None:
                        assert doc is not None
                        waiter.put(doc)
                        forward_ws = False
                        continue
                forward_ws = True
                self._to_client(raw)
        except OSError:
            pass
        finally:
            with self._pending_lock:
                for waiter in self._pending.values():
                    waiter.put(None)
                self._pending.clear()
            self._shutdown()

    # -- own commands (only while cont is held) -------------------------------------
    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command on QEMU on behalf of attestd; the reply is not forwarded."""
        self._counter += 1
        ident = f"{OWN_ID_PREFIX}{self._counter}"
        waiter: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1)
        with self._pending_lock:
            self._pending[ident] = waiter
        doc: dict[str, Any] = {"execute": name, "id": ident}
        if arguments:
            doc["arguments"] = arguments
        self._to_qemu(json.dumps(doc).encode() + b"\r\n")
        try:
            reply = waiter.get(timeout=self.command_timeout)
        except queue.Empty as exc:
            raise LaunchError(f"QEMU did not answer {name}") from exc
        if reply is None:
            raise LaunchError(f"QEMU monitor closed during {name}")
        if "error" in reply:
            error = reply["error"]
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise QmpError(f"QEMU {name}: {desc}")
        return reply.get("return")

    # -- libvirt -> QEMU -------------------------------------------------------------
    def _refuse(self, doc: dict[str, Any], reason: str) -> None:
        reply: dict[str, Any] = {"error": {"class": "GenericError", "desc": reason}}
        if "id" in doc:
            reply["id"] = doc["id"]
        self._to_client(json.dumps(reply).encode() + b"\r\n")

    def _handle_cont(self, doc: dict[str, Any], raw: bytes) -> None:
        ctl = self.controller
        with ctl.lock:
            if ctl.failure is not None:
                self._refuse(doc, ctl.failure)
                return
            if not ctl.done and ctl.on_first_cont is not None:
                logger.info("holding the first cont until the launch is attested")
                try:
                    ctl.on_first_cont(self)
                except Exception as exc:
                    ctl.failure = str(exc) or type(exc).__name__
                    logger.error("refusing cont: %s", ctl.failure)
                    self._refuse(doc, ctl.failure)
                    return
            ctl.done = True
        self._to_qemu(raw)

    def _pump_from_client(self) -> None:
        try:
            for kind, raw in _recv_tokens(self.client):
                if kind == "obj":
                    doc = _parse(raw)
                    if doc is not None and doc.get("execute") == "cont":
                        self._handle_cont(doc, raw)
                        continue
                self._to_qemu(raw)
        except OSError:
            pass
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for sock in (self.client, self.qemu):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        """Relay until either side closes."""
        reader = threading.Thread(target=self._pump_from_qemu, daemon=True)
        reader.start()
        self._pump_from_client()
        reader.join()
        self.client.close()
        self.qemu.close()


def connect_qemu(
    path: str, *, attempts: int = 50, delay: float = 0.1, greeting_timeout: float = 30.0
) -> tuple[socket.socket, bytes] | None:
    """Connect to QEMU's monitor and read the start of its greeting.

    QEMU serves one monitor client at a time and drops a connection it accepts
    before it has noticed the previous client left; such a connection is retried.
    Returns None when the socket is gone (QEMU exited).
    """
    for _ in range(attempts):
        qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            qemu.connect(path)
        except OSError as exc:
            logger.info("QEMU monitor gone (%s)", exc.strerror)
            qemu.close()
            return None
        qemu.settimeout(greeting_timeout)
        try:
            first = qemu.recv(65536)
        except OSError:
            first = b""
        if first:
            qemu.settimeout(None)
            return qemu, first
        qemu.close()
        time.sleep(delay)
    return None


def serve_relay(listener: socket.socket, qemu_path: str, controller: RelayController) -> None:
    """Accept libvirt connections forever; relay each to a fresh QEMU connection.

    Returns when QEMU's monitor socket is gone (QEMU exited).
    """
    while True:
        client, _ = listener.accept()
        connected = connect_qemu(qemu_path)
        if connected is None:
            client.close()
            logger.info("relay exits")
            return
        qemu, first = connected
        logger.debug("relaying a monitor connection")
        RelaySession(client, qemu, controller, initial=first).run()
