"""``attestd owner create`` / ``host create`` / ``db upgrade`` / ``db maintain`` / ``openapi``."""

from __future__ import annotations

from pathlib import Path

import pytest

from attestd import cli
from attestd.api import create_app
from attestd.config import Settings


def test_owner_and_host_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATTESTD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ATTESTD_DATABASE_URL", raising=False)
    monkeypatch.delenv("ATTESTD_CONFIG", raising=False)
    assert cli.main(["db", "upgrade"]) == 0
    assert cli.main(["owner", "create", "alice"]) == 0
    owner_token = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["host", "create", "node-1"]) == 0
    host_token = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["owner", "create", "alice"]) == 1
    assert "conflict" in capsys.readouterr().err
    assert cli.main(["owner", "create", "bad name"]) == 1

    app = create_app(Settings(data_dir=tmp_path, require_host_token=True))
    client = app.test_client()
    assert (
        client.get("/v1/vm", headers={"Authorization": f"Bearer {owner_token}"}).status_code == 200
    )
    assert (
        client.get("/v1/vm", headers={"Authorization": f"Bearer {host_token}"}).status_code == 401
    )
    service = app.extensions["attestd"].services.principals
    assert service.authenticate_host(host_token).name == "node-1"
    stored = (tmp_path / "attestd.sqlite3").read_bytes()
    assert owner_token.encode() not in stored and host_token.encode() not in stored


def test_db_maintain_applies_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from attestd.service.factory import build_services
    from attestd.storage.ports import Event, EventKind

    monkeypatch.setenv("ATTESTD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATTESTD_RETENTION_EVENT_DAYS", "1")
    monkeypatch.delenv("ATTESTD_DATABASE_URL", raising=False)
    monkeypatch.delenv("ATTESTD_CONFIG", raising=False)
    services = build_services(Settings(data_dir=tmp_path))
    owner = services.store.create_owner("alice", "0" * 64, 1.0)
    old = Event(owner, "00000000-0000-4000-8000-000000000001", EventKind.DELETED, 1.0)
    services.store.add_event(old)
    services.store.dispose()
    assert cli.main(["db", "maintain"]) == 0
    assert "deleted 0 launches and 1 events" in capsys.readouterr().out
    assert cli.main(["db", "maintain"]) == 0
    assert "deleted 0 launches and 0 events" in capsys.readouterr().out


def test_config_file_and_env(tmp_path: Path) -> None:
    from attestd import config
    from attestd.errors import ParseError

    path = tmp_path / "attestd.toml"
    path.write_text('[attestd]\ndata_dir = "/srv/a"\nsecret-area-size = 4096\nlaunch_ttl = 60\n')
    settings = config.load(
        path, environ={"ATTESTD_LAUNCH_TTL": "30", "ATTESTD_REQUIRE_HOST_TOKEN": "yes"}
    )
    assert settings.data_dir == Path("/srv/a")
    assert settings.secret_area_size == 4096
    assert settings.launch_ttl == 30
    assert settings.require_host_token is True
    assert settings.effective_database_url == "sqlite:////srv/a/attestd.sqlite3"
    for bad in ("nope = 1\n", 'launch_ttl = "x"\n', 'kds_offline = "maybe"\n', "[[x"):
        path.write_text(bad)
        with pytest.raises(ParseError):
            config.load(path, environ={})
    with pytest.raises(ParseError):
        config.load(None, environ={"ATTESTD_CONFIG": str(tmp_path / "missing.toml")})
    assert config.load(None, environ={}).data_dir == Path("/var/lib/attestd")


def test_serve_builds_gunicorn_argv() -> None:
    from attestd.commands.server import gunicorn_argv

    argv = gunicorn_argv(Settings(), "0.0.0.0:9000", 3, [])
    assert argv[1:3] == ["-m", "gunicorn"]
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:9000"
    assert argv[-1] == "attestd.wsgi:app"
    # never gunicorn's per-user ~/.gunicorn/gunicorn.ctl that a second instance would share
    assert "--no-control-socket" in argv and "--control-socket" not in argv
    own = gunicorn_argv(Settings(control_socket="/run/attestd/a.ctl"), "127.0.0.1:1", 1, [])
    assert own[own.index("--control-socket") + 1] == "/run/attestd/a.ctl"
    assert "--no-control-socket" not in own


def test_log_filter_redacts_tokens() -> None:
    import logging

    from attestd.logsetup import RedactTokens

    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "header %s and token %s",
        (
            "Authorization: Bearer abcdefghijklmnop",
            "ato_SBkzCI1qvV5NYO0OdLwDC0bbiN38rXci5pKi9XSX8c",
        ),
        None,
    )
    assert RedactTokens().filter(record)
    text = record.getMessage()
    assert "abcdefghijklmnop" not in text and "SBkzCI1" not in text
    assert "Bearer [redacted]" in text and "ato_[redacted]" in text


def test_serve_defaults_to_gthread_with_four_threads() -> None:
    """2 workers x 4 gthread threads: fewer threads per GIL than the 8 of before
    (latency tail), more than 2 (two slow-header connections never hold a worker)."""
    from attestd.commands.server import gunicorn_argv

    settings = Settings()
    argv = gunicorn_argv(settings, "127.0.0.1:1", settings.workers, [])
    assert argv[argv.index("--worker-class") + 1] == "gthread"
    assert argv[argv.index("--threads") + 1] == "4"
    assert argv[argv.index("--workers") + 1] == "2"
