"""Service fixtures: the shared ones of ``tests/servicefix.py``."""

from __future__ import annotations

from tests.servicefix import *  # noqa: F403
from tests.snpfix import *  # noqa: F403
