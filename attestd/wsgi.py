"""WSGI entry point for gunicorn: ``gunicorn attestd.wsgi:app``."""

from __future__ import annotations

from attestd import config, logsetup
from attestd.api import create_app

_settings = config.load()
logsetup.configure(_settings.log_level)
app = create_app(_settings)
