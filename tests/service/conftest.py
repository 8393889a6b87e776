"""Use-case fixtures: the services of ``build_services`` on SQLite and PostgreSQL, no Flask."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attestd.config import Settings
from attestd.service.factory import Services, build_services
from tests.servicefix import *  # noqa: F403
from tests.servicefix import Clock


@pytest.fixture
def services(host_settings: Settings, clock: Clock) -> Iterator[Services]:
    """The use-cases over a fresh database that trusts the simulator, with a settable clock."""
    built = build_services(host_settings, clock=clock)
    yield built
    built.store.dispose()
