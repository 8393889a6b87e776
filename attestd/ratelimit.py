"""A token bucket (per process): the KDS lookup limit, the per-host launch limit and the
per-VM limit of the SEV-SNP guest endpoints."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class TokenBuckets:
    """One bucket per key: ``burst`` tokens, refilled at ``rate`` per second.

    Keys whose bucket is full again are forgotten, so the map stays as small as the
    set of keys seen within ``burst / rate`` seconds.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: Hashable = None) -> float:
        """Take one token; 0.0 when taken, else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 1024:
                self._forget_full(now)
            return 0.0

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]


class PerKeyRate:
    """A limit of ``rate`` per second per key with bursts of twice that, ``rate`` given on
    each call from the current settings (a changed rate starts fresh buckets; 0: none).
    The per-host launch limit and the per-VM limit of the SEV-SNP guest endpoints."""

    def __init__(self) -> None:
        self._buckets: TokenBuckets | None = None

    def wait(self, rate: int, key: Hashable) -> float:
        """Take one request of ``key``: 0.0 when within ``rate``, else the seconds to wait."""
        if rate <= 0:
            return 0.0
        if self._buckets is None or self._buckets.rate != rate:
            self._buckets = TokenBuckets(rate, 2 * rate)
        return self._buckets.take(key)
