"""The injected clock of the use-cases (``time.time`` in production, fixed in tests)."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
