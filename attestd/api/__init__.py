"""Flask adapter of the service: ``create_app(settings)`` with the ``/v1`` blueprints."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from attestd import config
from attestd.api import errors
from attestd.api.state import OWNER_BASE, AppState, Metrics
from attestd.config import Settings
from attestd.service.clock import Clock
from attestd.service.factory import build_services

logger = logging.getLogger(__name__)

#: WSGI environ key of the request's start (``time.perf_counter()``)
_STARTED = "attestd.started"


def create_app(settings: Settings | None = None, *, clock: Clock = time.time) -> Flask:
    """The WSGI application (gunicorn: ``attestd.wsgi:app``)."""
    settings = settings if settings is not None else config.load()
    services = build_services(settings, clock=clock)
    if not settings.require_host_token:
        logger.warning(
            "require_host_token = false: /launch and /validate accept requests without a "
            "host token (development only; anyone who reaches the port can start launches)"
        )
    if not settings.snp_require_crl:
        logger.warning(
            "snp_require_crl = false: an SEV-SNP attestation without a current CRL of its "
            "ARK is released, its ASK/ASVK revocation not checked"
        )
    app = Flask("attestd")
    # one byte more than any body may have: a streamed (chunked) body is read up to this
    # limit without an error, so only a read past the real limit shows it was exceeded
    app.config["MAX_CONTENT_LENGTH"] = (
        max(settings.max_firmware_size, settings.max_request_size) + 1
    )
    app.json.sort_keys = True  # type: ignore[attr-defined]
    app.extensions["attestd"] = AppState(services=services, metrics=Metrics())
    errors.init_app(app)

    from attestd.api import ops
    from attestd.api.v1 import attest, host, initdata, owner

    # the v1 API, and the same API at each owner's base URL: a request there is about
    # that owner's VM UUID namespace only (what a host or guest that has no owner
    # token uses to name the owner, e.g. as the domain's service URL)
    for bp in (owner.bp, host.bp, attest.bp, initdata.bp):
        app.register_blueprint(bp, url_prefix="/v1")
        app.register_blueprint(bp, url_prefix=OWNER_BASE + "/v1", name=f"{bp.name}_of_owner")
    app.register_blueprint(ops.bp)

    @app.url_value_preprocessor
    def _base_owner(_endpoint: str | None, values: dict[str, Any] | None) -> None:
        # no view takes the owner of the base URL as an argument: it is the request's
        if values is not None and "owner_name" in values:
            g.attestd_base_owner = values.pop("owner_name")

    wsgi_app = app.wsgi_app

    def _timed(environ: dict[str, Any], start_response: Any) -> Any:
        # the request's start, for /metrics; in the environ rather than a before_request
        # hook writing ``g``: one dict store instead of a hook call and a proxy lookup
        environ[_STARTED] = time.perf_counter()
        return wsgi_app(environ, start_response)

    app.wsgi_app = _timed  # type: ignore[method-assign]

    @app.after_request
    def _observe(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        started = req.environ.get(_STARTED)
        if started is not None:
            rule = req.url_rule.rule if req.url_rule is not None else "unmatched"
            app.extensions["attestd"].metrics.observe(
                rule, req.method, response.status_code, time.perf_counter() - started
            )
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
