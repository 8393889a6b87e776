"""The PostgreSQL fixture finds Debian's server binaries whatever the major version."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pgserver


def _server(base: Path, major: str) -> Path:
    bindir = base / major / "bin"
    bindir.mkdir(parents=True)
    (bindir / "initdb").write_bytes(b"")
    return bindir


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTESTD_PG_BIN", raising=False)


def test_debian_12_layout(tmp_path: Path) -> None:
    assert pgserver.find_bindir(tmp_path) is None
    assert pgserver.find_bindir(tmp_path / "missing") is None
    assert pgserver.find_bindir(_server(tmp_path, "15").parent.parent) == tmp_path / "15" / "bin"


def test_debian_13_layout_and_the_newest_server_wins(tmp_path: Path) -> None:
    (tmp_path / "16" / "lib").mkdir(parents=True)  # a client-only leftover: no initdb
    (tmp_path / "common").mkdir()
    _server(tmp_path, "9")
    expected = _server(tmp_path, "17")
    assert pgserver.find_bindir(tmp_path) == expected


def test_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTESTD_PG_BIN", "/opt/pg/bin")
    _server(tmp_path, "17")
    assert pgserver.find_bindir(tmp_path) == Path("/opt/pg/bin")


def test_this_machine_has_a_server() -> None:
    """tools/setup --dev installs postgresql: the suite's PostgreSQL tests must not be lost."""
    bindir = pgserver.find_bindir()
    assert bindir is not None and (bindir / "initdb").is_file()
