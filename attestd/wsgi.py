"""WSGI entry point for gunicorn: ``gunicorn attestd.wsgi:app``.

Everything made at import (the modules, the app, SQLAlchemy's metadata: about 100,000
objects) lives as long as the worker, so it is frozen out of the garbage collector
(``gc.freeze``, after a collection, so that no garbage of the start is kept for good): a
full collection walked all of it, 22-27 ms with every thread of the worker waiting, and
now walks only what requests made since.
"""

from __future__ import annotations

import gc

from attestd import config, logsetup
from attestd.api import create_app

_settings = config.load()
logsetup.configure(_settings.log_level)
app = create_app(_settings)
gc.collect()
gc.freeze()
