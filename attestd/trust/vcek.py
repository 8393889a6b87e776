"""VCEKs from AMD's key distribution server, cached on disk by (product, chip id, TCB).

A VCEK is derived from the chip's secret and its TCB: AMD serves it at
``<kds>/vcek/v1/<product>/<hwID hex>?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
(``fmcSPL`` too on Turin, whose hwID is 8 bytes). The store looks in its cache
directory first, then asks KDS unless offline, one request per key at a time
(single flight), remembers failures for a short while (negative cache) and bounds
every request with timeouts. ``import_vcek`` adds a VCEK obtained elsewhere (offline
hosts). The VCEK is never trusted here: report verification chains it to a pinned
ASK and compares its SPLs and hwID with the report. VLEKs are not served by KDS to
verifiers: they only come with the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from attestd.errors import CekRequired, CekUnavailable, ParseError
from attestd.files import write_public
from attestd.sev.snp.certs import SnpCertificate
from attestd.sev.snp.report import AttestationReport, Generation, TcbVersion
from attestd.trust.kds import kds_download

if TYPE_CHECKING:
    from attestd.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.0, 10.0)
#: Seconds a failed fetch is remembered (no new request for that key meanwhile).
NEGATIVE_TTL = 60.0
#: The largest VCEK accepted from KDS.
MAX_VCEK_SIZE = 8192
_HINT = "; import it with `attestd snp vcek import` or send it with the report (vcek)"


@dataclass(frozen=True, slots=True)
class VcekKey:
    """What identifies a VCEK: product line, chip id (hwID) and reported TCB."""

    generation: Generation
    hw_id: bytes
    tcb: TcbVersion

    @classmethod
    def of_report(cls, report: AttestationReport) -> VcekKey:
        """The key of the VCEK that should have signed ``report`` (v3+: CPUID names the product)."""
        generation = report.cpuid_generation
        if generation is None:
            raise CekRequired(
                "the report does not name its CPU generation (report version 2): send the VCEK"
            )
        if report.key_info.mask_chip_key:
            raise CekRequired("the report masks its chip id: send the VCEK")
        return cls(
            generation, report.hw_id(generation), report.tcb(report.reported_tcb, generation)
        )

    @classmethod
    def of_certificate(cls, cert: SnpCertificate) -> VcekKey:
        """The key of a VCEK certificate (from its productName, hwID and SPL extensions)."""
        generation, hw_id = cert.generation, cert.hw_id
        if generation is None or hw_id is None:
            raise ParseError("not a VCEK: no productName or hwID extension")
        return cls(generation, hw_id, cert.tcb(turin=generation.has_fmc))

    @property
    def filename(self) -> str:
        """The cache file name."""
        return f"{self.generation.product}-{self.hw_id.hex()}-{self.tcb.raw:016x}.der"

    def query(self) -> str:
        """The KDS path and query of this VCEK."""
        tcb = self.tcb
        spl = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
        if tcb.fmc is not None:
            spl = f"fmcSPL={tcb.fmc}&{spl}"
        return f"/vcek/v1/{self.generation.product}/{self.hw_id.hex()}?{spl}"


class VcekStore:
    """VCEKs by :class:`VcekKey`: cache directory first, then AMD KDS (unless offline)."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        base_url: str,
        offline: bool = False,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_dir = cache_dir
        self.base_url = base_url.rstrip("/")
        self.offline = offline
        self.session = session or requests.Session()
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._flights: dict[VcekKey, threading.Lock] = {}
        self._failed: dict[VcekKey, tuple[float, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, offline: bool | None = None) -> VcekStore:
        """The store of ``settings``: :attr:`~attestd.config.Settings.vcek_store_dir`,
        ``kds_url``, and ``kds_offline`` unless ``offline`` is given (the CLI's KDS
        commands ask KDS even when the service is offline)."""
        return cls(
            settings.vcek_store_dir,
            base_url=settings.kds_url,
            offline=settings.kds_offline if offline is None else offline,
        )

    def cached(self, key: VcekKey) -> bytes | None:
        """The cached VCEK DER, or None."""
        try:
            return (self.cache_dir / key.filename).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read cached VCEK %s: %s", key.filename, exc)
            return None

    def get(self, key: VcekKey) -> bytes:
        """The VCEK DER for ``key``: cached, else fetched once (other callers wait for it)."""
        found = self.cached(key)
        if found is not None:
            return found
        if self.offline:
            raise CekRequired(f"no cached VCEK and AMD KDS is disabled (offline){_HINT}")
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:
            found = self.cached(key)
            if found is not None:
                return found
            failed = self._failed.get(key)
            if failed is not None and failed[0] > self.clock():
                raise CekUnavailable(failed[1])
            try:
                return self.fetch(key)
            except CekUnavailable as exc:
                self._failed[key] = (self.clock() + NEGATIVE_TTL, exc.message)
                raise

    def fetch(self, key: VcekKey) -> bytes:
        """Download the VCEK from AMD KDS (ignoring the cache), check its key, cache it."""
        body = kds_download(
            self.session,
            self.base_url + key.query(),
            what="VCEK",
            max_size=MAX_VCEK_SIZE,
            timeout=self.timeout,
            hint=_HINT,
        )
        try:
            got = VcekKey.of_certificate(SnpCertificate.from_der(body))
        except ParseError as exc:
            raise CekUnavailable(f"AMD KDS returned an unusable VCEK: {exc.message}") from None
        if got != key:
            raise CekUnavailable("AMD KDS returned a VCEK for another chip or TCB")
        self._write(key, body)
        return body

    def import_vcek(self, der: bytes) -> VcekKey:
        """Add a VCEK obtained elsewhere (offline import); ``ParseError`` if it is not one."""
        key = VcekKey.of_certificate(SnpCertificate.from_der(der))
        self._write(key, der)
        return key

    def _write(self, key: VcekKey, data: bytes) -> None:
        write_public(self.cache_dir / key.filename, data)
        with self._lock:
            self._failed.pop(key, None)
        logger.info("cached VCEK %s", key.filename)
