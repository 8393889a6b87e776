"""Shared fixtures of the service suites: one app per test on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from attestd.api import create_app
from attestd.config import Settings
from tests import pgserver

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg() -> Iterator[pgserver.PgServer]:
    """One PostgreSQL cluster per test process."""
    server = pgserver.PgServer.start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of the chosen backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'attestd.sqlite3'}"
    server: pgserver.PgServer = request.getfixturevalue("pg")
    return server.create_database()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings of a fresh service instance under ``tmp_path``."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    # the development opt-out: most suites drive /launch and /validate without a host
    # token; tests/api/test_safe_defaults.py checks the default (tokens required)
    return Settings(
        data_dir=data, database_url=database_url, kds_offline=True, require_host_token=False
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The application under test."""
    application = create_app(settings)
    yield application
    application.extensions["attestd"].store.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client."""
    return app.test_client()


def make_owner(app: Flask, name: str) -> dict[str, str]:
    """Create an owner; returns its Authorization header."""
    token = app.extensions["attestd"].services.principals.create_owner(name)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alice(app: Flask) -> dict[str, str]:
    """Authorization header of owner alice."""
    return make_owner(app, "alice")


@pytest.fixture
def bob(app: Flask) -> dict[str, str]:
    """Authorization header of owner bob."""
    return make_owner(app, "bob")


def sev_registration(**extra: Any) -> dict[str, Any]:
    """A minimal valid plain-SEV registration."""
    body: dict[str, Any] = {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": ["ab" * 32],
        "secrets": [{"type": "luks-passphrase", "passphrase": "correct horse battery"}],
    }
    body.update(extra)
    return body


@pytest.fixture(scope="session")
def platform() -> Any:
    """The simulated SEV platform the tests launch on (trusted via trust_anchors_dir)."""
    from attestd.sim.platform import SimulatedPlatform

    return SimulatedPlatform.create(name="sim-trusted", rsa_bits=2048)


@pytest.fixture(scope="session")
def rogue_platform() -> Any:
    """A simulated platform whose root nobody trusts."""
    from attestd.sim.platform import SimulatedPlatform

    return SimulatedPlatform.create(name="sim-rogue", rsa_bits=2048)


@pytest.fixture(scope="session")
def anchors_dir(tmp_path_factory: pytest.TempPathFactory, platform: Any) -> Path:
    """ATTESTD_TRUST_ANCHORS_DIR holding only the trusted simulator's ARK/ASK."""
    directory = tmp_path_factory.mktemp("anchors")
    platform.write_trust_anchor(directory)
    return directory


@pytest.fixture
def host_settings(settings: Settings, anchors_dir: Path) -> Settings:
    """Settings that trust the simulator."""
    return settings.replace(trust_anchors_dir=anchors_dir)


class Clock:
    """A settable clock for expiry tests."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """The clock of ``host_app``."""
    return Clock()


@pytest.fixture
def host_app(host_settings: Settings, clock: Clock) -> Iterator[Flask]:
    """An app that trusts the simulator, with a settable clock."""
    application = create_app(host_settings, clock=clock)
    yield application
    application.extensions["attestd"].store.dispose()


@pytest.fixture(scope="session")
def ovmf(testdata: Path) -> bytes:
    """The real OVMF AmdSev build (kernel hashes, SEV-ES reset block, secret area)."""
    return (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()


__all__ = [
    "alice",
    "anchors_dir",
    "app",
    "backend",
    "bob",
    "client",
    "clock",
    "database_url",
    "host_app",
    "host_settings",
    "ovmf",
    "pg",
    "platform",
    "rogue_platform",
    "settings",
]
