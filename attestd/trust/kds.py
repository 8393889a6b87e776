"""The ASK-signed CEK from AMD's key distribution server, with a persistent cache.

The firmware exports its CEK unsigned; AMD serves the ASK-signed copy at
``https://kdsintf.amd.com/cek/id/<GET_ID as 128 upper-case hex digits>``. Fetched
and imported CEKs are kept in a cache directory (one ``<ID>.cek`` file per chip),
so hosts without Internet access can be served from an offline import. The CEK's
signature is not trusted here: chain verification checks it against the pinned ASKs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from attestd.errors import CekRequired, CekUnavailable, ParseError
from attestd.files import write_public
from attestd.ratelimit import TokenBuckets
from attestd.sev.certs import AMD_KDS_URL, CHIP_ID_SIZE, SEV_CERT_SIZE, SevCertificate, Usage

if TYPE_CHECKING:
    from attestd.config import Settings

logger = logging.getLogger(__name__)

KDS_URL = AMD_KDS_URL
DEFAULT_TIMEOUT = (5.0, 30.0)

_HEX_ID = re.compile(r"[0-9A-Fa-f]{128}")
_IMPORT_HINT = "; import the CEK offline with `attestd cek import`"


def kds_download(
    session: requests.Session,
    url: str,
    *,
    what: str,
    max_size: int,
    timeout: float | tuple[float, float],
    hint: str,
) -> bytes:
    """GET ``url`` from AMD KDS: 200 only, at most ``max_size`` bytes, bounded by ``timeout``.

    Every failure is :class:`CekUnavailable` naming ``what`` and ending with ``hint``
    (how to do without KDS). The answer is not trusted: the caller checks it.
    """
    logger.info("fetching %s from %s", what, url)
    try:
        with session.get(url, timeout=timeout, stream=True) as response:
            if response.status_code == 404:
                raise CekUnavailable(f"AMD KDS has no {what} (HTTP 404){hint}")
            if response.status_code != 200:
                raise CekUnavailable(f"AMD KDS answered HTTP {response.status_code}{hint}")
            body = b""
            for chunk in response.iter_content(4096):
                body += chunk
                if len(body) > max_size:
                    raise CekUnavailable(f"AMD KDS answer is larger than a {what}{hint}")
    except requests.Timeout:
        raise CekUnavailable(f"AMD KDS did not answer in time{hint}") from None
    except requests.RequestException as exc:
        raise CekUnavailable(f"AMD KDS is unreachable ({type(exc).__name__}){hint}") from None
    return body


def chip_id_hex(chip_id: bytes) -> str:
    """The chip id as AMD's KDS spells it: 128 upper-case hex digits."""
    if len(chip_id) != CHIP_ID_SIZE:
        raise ParseError(f"chip id: expected {CHIP_ID_SIZE} bytes, got {len(chip_id)}")
    return chip_id.hex().upper()


def parse_chip_id(data: bytes | str) -> bytes:
    """A chip id as 128 hex digits (sev-tool), base64 (libvirt ``cpu0-id``) or 64 raw bytes."""
    if isinstance(data, bytes) and len(data) == CHIP_ID_SIZE and not data.isascii():
        return data
    try:
        text = data.decode("ascii") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise ParseError("chip id: not hex, base64 or 64 raw bytes") from None
    text = "".join(text.split())
    if _HEX_ID.fullmatch(text):
        return bytes.fromhex(text)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == CHIP_ID_SIZE:
        return decoded
    raise ParseError("chip id: expected 128 hex digits, base64 of 64 bytes, or 64 raw bytes")


def parse_signed_cek(data: bytes) -> SevCertificate:
    """Parse a KDS CEK: a 0x824 SEV certificate of usage CEK with an ASK signature slot."""
    cek = SevCertificate.unpack(data)
    if cek.usage is not Usage.CEK:
        raise ParseError(f"not a CEK: the certificate has usage {cek.usage.name}")
    if not any(s.usage == Usage.ASK and not s.is_empty for s in cek.signatures):
        raise ParseError("the CEK has no ASK signature (the firmware's export is unsigned)")
    return cek


class CekStore:
    """Signed CEKs by chip id: cache directory first, then AMD KDS (unless offline)."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        session: requests.Session | None = None,
        base_url: str = KDS_URL,
        offline: bool = False,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.cache_dir = cache_dir
        self.session = session or requests.Session()
        self.base_url = base_url.rstrip("/")
        self.offline = offline
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings, *, offline: bool | None = None) -> CekStore:
        """The store of ``settings``: ``effective_cek_cache_dir``, ``kds_url``, and
        ``kds_offline`` unless ``offline`` is given."""
        return cls(
            settings.effective_cek_cache_dir,
            base_url=settings.kds_url,
            offline=settings.kds_offline if offline is None else offline,
        )

    def path_for(self, chip_id: bytes) -> Path:
        """The cache file of a chip's CEK."""
        return self.cache_dir / f"{chip_id_hex(chip_id)}.cek"

    def cached(self, chip_id: bytes) -> SevCertificate | None:
        """The cached CEK, or None if there is none (or the file is unusable)."""
        path = self.path_for(chip_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read cached CEK %s: %s", path, exc)
            return None
        try:
            return parse_signed_cek(data)
        except ParseError as exc:
            logger.warning("ignoring unusable cached CEK %s: %s", path, exc.message)
            return None

    def get(self, chip_id: bytes) -> SevCertificate:
        """The ASK-signed CEK of ``chip_id``.

        Raises ``CekRequired`` when it is not cached and KDS is disabled (the host must
        send the CEK), ``CekUnavailable`` when KDS cannot be asked.
        """
        cek = self.cached(chip_id)
        if cek is not None:
            return cek
        if self.offline:
            raise CekRequired(
                f"no cached CEK for chip {chip_id_hex(chip_id)[:16]}... and AMD KDS is disabled "
                "(offline); import it with `attestd cek import`"
            )
        return self.fetch(chip_id)

    def fetch(self, chip_id: bytes) -> SevCertificate:
        """Download the CEK from AMD KDS (ignoring the cache) and cache it."""
        data = self._download(chip_id)
        try:
            cek = parse_signed_cek(data)
        except ParseError as exc:
            raise CekUnavailable(
                f"AMD KDS returned an unusable CEK: {exc.message}{_IMPORT_HINT}"
            ) from None
        self._write(chip_id, data)
        return cek

    def put(self, chip_id: bytes, cek: bytes) -> None:
        """Import a signed CEK obtained elsewhere (offline import); ``ParseError`` if unusable."""
        parse_signed_cek(cek)
        self._write(chip_id, cek)

    def _download(self, chip_id: bytes) -> bytes:
        return kds_download(
            self.session,
            f"{self.base_url}/cek/id/{chip_id_hex(chip_id)}",
            what="CEK for this chip id",
            max_size=SEV_CERT_SIZE,
            timeout=self.timeout,
            hint=_IMPORT_HINT,
        )

    def _write(self, chip_id: bytes, data: bytes) -> None:
        path = self.path_for(chip_id)
        write_public(path, data)
        logger.info("cached CEK for chip %s at %s", chip_id_hex(chip_id)[:16], path)


class KdsGate:
    """The one way a service process asks AMD KDS: never a stalled worker.

    - single flight: one download per chip id at a time, later askers wait for it;
    - the request waits at most ``wait`` seconds; the download goes on in a thread
      (bounded by the HTTP ``timeout``) and fills the cache, and the request answers
      :class:`CekUnavailable` with ``retry_after`` so the host retries;
    - a negative cache: a chip id whose download failed is refused for
      ``negative_ttl`` seconds without asking again;
    - a global rate limit: at most ``burst`` downloads started, refilled at ``rate``
      per second, and at most ``max_inflight`` at once.
    """

    def __init__(
        self,
        *,
        wait: float = 2.0,
        timeout: tuple[float, float] = (3.0, 10.0),
        negative_ttl: float = 60.0,
        rate: float = 0.1,
        burst: int = 4,
        max_inflight: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait = wait
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self.rate = rate
        self.max_inflight = max_inflight
        self.clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future[SevCertificate]] = {}
        self._failed: dict[bytes, tuple[float, str]] = {}
        self._downloads = TokenBuckets(rate, burst, clock=clock)

    def _retry_after(self) -> int:
        return max(1, int(self.timeout[0] + self.timeout[1]))

    def get(self, store: CekStore, chip_id: bytes) -> SevCertificate:
        """The signed CEK from the cache, or from KDS within ``wait`` seconds."""
        cek = store.cached(chip_id)
        if cek is not None:
            return cek
        if store.offline:
            return store.get(chip_id)  # raises CekRequired
        now = self.clock()
        with self._lock:
            failed = self._failed.get(chip_id)
            if failed is not None and failed[0] > now:
                raise CekUnavailable(failed[1], retry_after=int(failed[0] - now) + 1)
            future = self._inflight.get(chip_id)
            if future is None:
                wait = 1.0 / self.rate
                if len(self._inflight) < self.max_inflight:
                    wait = self._downloads.take()
                if wait > 0:
                    raise CekUnavailable(
                        f"too many AMD KDS lookups at once; retry later{_IMPORT_HINT}",
                        retry_after=int(wait) + 1,
                    )
                future = Future()
                self._inflight[chip_id] = future
                fetcher = CekStore(
                    store.cache_dir, base_url=store.base_url, offline=False, timeout=self.timeout
                )
                threading.Thread(
                    target=self._fetch, args=(fetcher, chip_id, future), daemon=True
                ).start()
        try:
            return future.result(timeout=self.wait)
        except FutureTimeout:
            raise CekUnavailable(
                f"AMD KDS has not answered yet; retry later{_IMPORT_HINT}",
                retry_after=self._retry_after(),
            ) from None

    def _fetch(self, store: CekStore, chip_id: bytes, future: Future[SevCertificate]) -> None:
        try:
            cek = store.fetch(chip_id)
        except CekUnavailable as exc:
            with self._lock:
                self._failed[chip_id] = (self.clock() + self.negative_ttl, exc.message)
                self._inflight.pop(chip_id, None)
                self._prune()
            future.set_exception(exc)
            return
        except BaseException as exc:  # a bug must not leave the chip id in flight
            with self._lock:
                self._inflight.pop(chip_id, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._inflight.pop(chip_id, None)
            self._failed.pop(chip_id, None)
        future.set_result(cek)

    def _prune(self) -> None:
        """Forget expired failures (the negative cache never outgrows its TTL window)."""
        now = self.clock()
        for key in [k for k, (until, _m) in self._failed.items() if until <= now]:
            del self._failed[key]
