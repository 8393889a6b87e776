"""WSGI entry point for gunicorn: ``gunicorn attestd.wsgi:app``."""

from __future__ import annotations

from attestd.api import create_app

app = create_app()
