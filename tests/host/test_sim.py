"""Simulated SEV's secret area: the domain's virtio-serial channel and the delivery into it."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path
from uuid import UUID

import pytest

from attestd.errors import LaunchError
from attestd.guest.secrets import SIM_SECRET_PORT
from attestd.host.domain import AttestdMetadata, parse_domain, prepare_domain
from attestd.host.sim import deliver_secret_area
from tests.host.domains import domain_xml

VM = UUID("0f7c2c1e-3a52-4d0f-9f0e-1c7b9b4f7a11")


def test_prepare_simulate_adds_the_secret_area_channel_once() -> None:
    meta = AttestdMetadata(service="http://127.0.0.1:1/v1", vm_id=VM, simulate=True)
    once = prepare_domain(domain_xml("g", emulator="/usr/bin/qemu"), meta, emulator=None)
    twice = prepare_domain(once, meta, emulator=None)
    assert twice.count(f'name="{SIM_SECRET_PORT}"') == 1
    assert '<channel type="unix"><source mode="bind" />' in twice
    assert parse_domain(twice).sim_secret_socket is None  # libvirt picks the path at start
    live = twice.replace('<source mode="bind" />', '<source mode="bind" path="/run/x.sock"/>')
    assert parse_domain(live).sim_secret_socket == "/run/x.sock"
    real = AttestdMetadata(service="https://a.example/v1", vm_id=VM)
    sev = domain_xml("g", emulator="/usr/bin/qemu").replace(
        "</devices>", "</devices><launchSecurity type='sev'><policy>0x1</policy></launchSecurity>"
    )
    assert SIM_SECRET_PORT not in prepare_domain(sev, real, emulator=None)


def _wait_eof(conn: socket.socket, timeout: float) -> bool:
    conn.settimeout(timeout)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False


def test_delivery_waits_until_the_reader_took_the_table(tmp_path: Path) -> None:
    path = tmp_path / "channel.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    table = bytes(range(256)) * 12
    deliver_secret_area(path, table, linger=30)
    conn, _ = server.accept()
    time.sleep(0.5)  # the guest has not opened its port yet: the table waits in the socket
    assert conn.recv(len(table), socket.MSG_PEEK | socket.MSG_WAITALL) == table
    received = b""
    while len(received) < len(table):
        received += conn.recv(len(table) - len(received))
    assert received == table
    assert _wait_eof(conn, 5)  # taken: the host side lets go
    conn.close()
    server.close()


def test_delivery_gives_up_after_the_linger_time(tmp_path: Path) -> None:
    path = tmp_path / "channel.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    deliver_secret_area(path, b"t" * 64, linger=0.5)
    conn, _ = server.accept()
    assert conn.recv(64, socket.MSG_PEEK | socket.MSG_WAITALL) == b"t" * 64
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLRDHUP)
    assert poller.poll(5000)  # closed although nobody read the table
    assert conn.recv(64) == b"t" * 64 and conn.recv(1) == b""
    conn.close()
    server.close()


def test_delivery_without_a_listener_fails_the_launch(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="cannot deliver the simulated secret area"):
        deliver_secret_area(tmp_path / "absent.sock", b"t" * 64)
