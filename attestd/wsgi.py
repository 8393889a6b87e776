"""WSGI entry point for gunicorn: ``gunicorn attestd.wsgi:app``."""

from __future__ import annotations

import logging

from attestd import config
from attestd.api import create_app

_settings = config.load()
logging.basicConfig(
    level=_settings.log_level.upper(),
    format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
)
app = create_app(_settings)
