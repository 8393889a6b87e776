"""Flask adapter of the service: ``create_app(settings)`` with the ``/v1`` blueprints."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from attestd import config
from attestd.api import errors
from attestd.api.state import AppState, Metrics
from attestd.config import Settings
from attestd.launch import LaunchService
from attestd.service import Clock, Service
from attestd.storage.keys import KeyRing
from attestd.storage.sql import Database


def open_keyring(settings: Settings) -> KeyRing:
    """The storage key ring; a development key is generated only when none is configured."""
    path = settings.effective_storage_key_file
    if settings.storage_key_file is None and path == settings.data_dir / "storage.key":
        return KeyRing.load_or_create(path)
    return KeyRing.from_file(path)


def open_database(settings: Settings) -> Database:
    """The database of ``settings`` (the SQLite file's directory is created)."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(
        settings.effective_database_url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
    )


def create_app(settings: Settings | None = None, *, clock: Clock = time.time) -> Flask:
    """The WSGI application (gunicorn: ``attestd.wsgi:app``)."""
    settings = settings if settings is not None else config.load()
    db = open_database(settings)
    if settings.auto_migrate:
        db.upgrade()
    keyring = open_keyring(settings)
    service = Service(settings, db, keyring, clock=clock)
    app = Flask("attestd")
    # one byte more than any body may have: a streamed (chunked) body is read up to this
    # limit without an error, so only a read past the real limit shows it was exceeded
    app.config["MAX_CONTENT_LENGTH"] = (
        max(settings.max_firmware_size, settings.max_request_size) + 1
    )
    app.json.sort_keys = True  # type: ignore[attr-defined]
    app.extensions["attestd"] = AppState(
        settings=settings,
        db=db,
        service=service,
        launches=LaunchService(service),
        metrics=Metrics(),
    )
    errors.init_app(app)

    from attestd.api import ops
    from attestd.api.v1 import host, owner

    app.register_blueprint(owner.bp, url_prefix="/v1")
    app.register_blueprint(host.bp, url_prefix="/v1")
    app.register_blueprint(ops.bp)

    @app.before_request
    def _start_timer() -> None:
        g.attestd_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("attestd_started")
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            app.extensions["attestd"].metrics.observe(
                rule, request.method, response.status_code, time.perf_counter() - started
            )
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
