"""The SEV-SNP ARKs' certificate revocation lists, cached on disk next to the VCEKs.

AMD KDS publishes one CRL per product line at ``<kds>/vcek/v1/<product>/crl`` (DER,
signed by the ARK, listing revoked ASKs and ASVKs). The store keeps the newest CRL
of each trust anchor as ``<VCEK cache>/crl-<anchor>.der``; a CRL is written only
after its signature verified against that anchor's ARK, and never replaced by an
older one (no rollback). Its nextUpdate comes with it: :meth:`CrlStore.current`
answers the cached CRL while it is fresh, refreshes it from KDS in a background
thread a day before it expires (single flight per anchor, bounded by the HTTP
timeouts, failures remembered for ``negative_ttl``), and waits at most ``wait``
seconds for that download only when no fresh CRL is cached. Offline, or for an
anchor KDS does not serve (a configured extra root such as the simulator's),
CRLs come from ``attestd snp crl import``.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from attestd.errors import CekUnavailable, ChainInvalid, Conflict, ParseError
from attestd.files import write_public
from attestd.sev.snp.certs import SnpAnchor, SnpCrl
from attestd.sev.snp.report import Generation
from attestd.trust.kds import kds_download

if TYPE_CHECKING:
    from attestd.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.0, 10.0)
#: The largest CRL accepted from KDS.
MAX_CRL_SIZE = 1024 * 1024
#: Refresh a cached CRL this long before its nextUpdate.
REFRESH_BEFORE = datetime.timedelta(days=1)
_HINT = "; import it with `attestd snp crl import`"


def _kds_product(anchor: SnpAnchor) -> str | None:
    """The KDS product name of a built-in anchor (``milan`` -> ``Milan``), else None."""
    try:
        return Generation(anchor.name).product
    except ValueError:
        return None


class CrlStore:
    """The newest verified CRL per SNP trust anchor: cache file first, then AMD KDS."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        base_url: str,
        offline: bool = False,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        wait: float = 2.0,
        negative_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_dir = cache_dir
        self.base_url = base_url.rstrip("/")
        self.offline = offline
        self.session = session or requests.Session()
        self.timeout = timeout
        self.wait = wait
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[tuple[int, int], SnpCrl]] = {}
        self._inflight: dict[str, Future[SnpCrl]] = {}
        self._failed: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, offline: bool | None = None) -> CrlStore:
        """The store of ``settings``: :attr:`~attestd.config.Settings.vcek_store_dir`,
        ``kds_url``, and ``kds_offline`` unless ``offline`` is given (the CLI's KDS
        commands ask KDS even when the service is offline)."""
        return cls(
            settings.vcek_store_dir,
            base_url=settings.kds_url,
            offline=settings.kds_offline if offline is None else offline,
        )

    def path_for(self, anchor: SnpAnchor) -> Path:
        """The cache file of an anchor's CRL."""
        return self.cache_dir / f"crl-{anchor.name}.der"

    def cached(self, anchor: SnpAnchor) -> SnpCrl | None:
        """The cached CRL of ``anchor`` if its ARK signed it (re-read when the file changes)."""
        path = self.path_for(anchor)
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                memo = self._memo.get(anchor.name)
            if memo is not None and memo[0] == stamp:
                return memo[1]
            crl = SnpCrl.from_der(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ParseError) as exc:
            logger.warning("ignoring unusable cached CRL %s: %s", path, exc)
            return None
        if not crl.signed_by(anchor.ark):
            logger.warning("ignoring cached CRL %s: not signed by the %s ARK", path, anchor.name)
            return None
        with self._lock:
            self._memo[anchor.name] = (stamp, crl)
        return crl

    def all_cached(self, anchors: Iterable[SnpAnchor]) -> dict[str, SnpCrl]:
        """Every cached CRL, by anchor name."""
        found = {a.name: self.cached(a) for a in anchors}
        return {name: crl for name, crl in found.items() if crl is not None}

    def _store(self, anchor: SnpAnchor, crl: SnpCrl) -> Path:
        """Write a verified CRL unless the cached one is newer (``Conflict``)."""
        current = self.cached(anchor)
        if current is not None and current.this_update > crl.this_update:
            raise Conflict(
                f"the cached {anchor.name} CRL (of {current.this_update:%Y-%m-%d}) is newer "
                f"than this one (of {crl.this_update:%Y-%m-%d})"
            )
        path = self.path_for(anchor)
        write_public(path, crl.der)
        with self._lock:
            self._failed.pop(anchor.name, None)
        logger.info("cached the %s CRL (next update %s)", anchor.name, crl.next_update)
        return path

    def import_crl(self, data: bytes, anchors: Iterable[SnpAnchor]) -> tuple[Path, SnpCrl]:
        """Add a CRL obtained elsewhere: it must be signed by one of ``anchors``' ARKs."""
        crl = SnpCrl.from_der(data)
        for anchor in anchors:
            if crl.signed_by(anchor.ark):
                return self._store(anchor, crl), crl
        raise ChainInvalid("the CRL is not issued and signed by any trusted ARK")

    def fetch(self, anchor: SnpAnchor) -> SnpCrl:
        """Download the anchor's CRL from AMD KDS, verify it with the ARK and cache it."""
        product = _kds_product(anchor)
        if product is None:
            raise CekUnavailable(f"AMD KDS serves no CRL for the {anchor.name} anchor{_HINT}")
        body = kds_download(
            self.session,
            f"{self.base_url}/vcek/v1/{product}/crl",
            what=f"{product} CRL",
            max_size=MAX_CRL_SIZE,
            timeout=self.timeout,
            hint=_HINT,
        )
        try:
            crl = SnpCrl.from_der(body)
        except ParseError as exc:
            raise CekUnavailable(f"AMD KDS returned an unusable CRL: {exc.message}") from None
        if not crl.signed_by(anchor.ark):
            raise CekUnavailable(f"AMD KDS returned a CRL the {anchor.name} ARK did not sign")
        try:
            self._store(anchor, crl)
        except Conflict:  # a newer one is cached already
            newer = self.cached(anchor)
            return crl if newer is None else newer
        return crl

    def current(self, anchor: SnpAnchor, at: datetime.datetime) -> SnpCrl | None:
        """The CRL to check at ``at``: the cached one, refreshed from KDS when due.

        Returns a stale or no CRL when none fresher is available within ``wait``
        seconds (the caller decides whether that refuses).
        """
        crl = self.cached(anchor)
        fresh = crl is not None and crl.fresh_at(at)
        due = not fresh or (
            crl is not None
            and crl.next_update is not None
            and crl.next_update - at < REFRESH_BEFORE
        )
        if not due or self.offline or _kds_product(anchor) is None:
            return crl
        future = self._start(anchor)
        if future is None or fresh:
            return crl  # refreshing in the background, or a recent failure
        try:
            return future.result(timeout=self.wait)
        except FutureTimeout:
            logger.warning("the %s CRL download has not finished yet", anchor.name)
        except CekUnavailable as exc:
            logger.warning("cannot refresh the %s CRL: %s", anchor.name, exc.message)
        return crl

    def _start(self, anchor: SnpAnchor) -> Future[SnpCrl] | None:
        """The running download of the anchor's CRL, started if needed (None: failed lately)."""
        with self._lock:
            future = self._inflight.get(anchor.name)
            if future is not None:
                return future
            failed = self._failed.get(anchor.name)
            if failed is not None and failed > self.clock():
                return None
            future = Future()
            self._inflight[anchor.name] = future
        threading.Thread(target=self._run, args=(anchor, future), daemon=True).start()
        return future

    def _run(self, anchor: SnpAnchor, future: Future[SnpCrl]) -> None:
        try:
            crl = self.fetch(anchor)
        except BaseException as exc:  # a bug must not leave the anchor in flight
            with self._lock:
                self._inflight.pop(anchor.name, None)
                self._failed[anchor.name] = self.clock() + self.negative_ttl
            future.set_exception(exc)
            return
        with self._lock:
            self._inflight.pop(anchor.name, None)
        future.set_result(crl)
