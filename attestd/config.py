"""Service configuration: defaults < TOML file < ``ATTESTD_*`` environment.

One frozen :class:`Settings` is built by the entry point (``create_app``, a CLI
command) and passed down; nothing reads configuration at import time.

The file is ``$ATTESTD_CONFIG`` or ``/etc/attestd/attestd.toml`` (when it exists).
Keys in the file are the field names below (``data_dir = "/var/lib/attestd"``);
each has an environment override ``ATTESTD_<FIELD>`` (``ATTESTD_DATA_DIR``).
Secrets are never given inline: the storage key comes from ``storage_key_file``
(or ``$CREDENTIALS_DIRECTORY/storage.key``, systemd ``LoadCredential=``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestd.errors import ParseError
from attestd.sev.certs import AMD_KDS_URL

DEFAULT_CONFIG_FILE = Path("/etc/attestd/attestd.toml")
DEFAULT_DATA_DIR = Path("/var/lib/attestd")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs to run; see ``examples/attestd.toml``."""

    data_dir: Path = DEFAULT_DATA_DIR
    #: SQLAlchemy URL; empty means ``sqlite:///<data_dir>/attestd.sqlite3``.
    database_url: str = ""
    #: Extra trust anchors (``<dir>/<name>/{ark,ask}.cert``) next to the pinned AMD roots.
    trust_anchors_dir: Path | None = None
    #: Storage-encryption key file (MultiFernet, one key per line, first encrypts).
    storage_key_file: Path | None = None
    #: Signed-CEK cache; empty means ``<data_dir>/cek``.
    cek_cache_dir: Path | None = None
    #: Never contact AMD's key server; only cached / imported CEKs are used.
    kds_offline: bool = False
    kds_url: str = AMD_KDS_URL
    #: Refuse an SEV-SNP attestation when no current CRL of the ARK is available (KDS
    #: down, offline without a fresh import). On by default; off, the attestation goes
    #: on and its event and log say the ASK/ASVK revocation was not checked. A revoked
    #: ASK/ASVK or a CRL the ARK did not sign always refuses.
    snp_require_crl: bool = True
    #: Size of the firmware's secret area the table must fit (bytes).
    secret_area_size: int = 3072
    #: Seconds a launch session stays valid.
    launch_ttl: int = 600
    #: Seconds an SEV-SNP attestation challenge (nonce) stays valid.
    attest_nonce_ttl: int = 120
    #: Live (unused, unexpired) SEV-SNP challenges allowed per VM.
    attest_max_challenges: int = 16
    #: /attest/challenge and /attest requests per second for one SEV-SNP VM, per
    #: service process; more are refused 429 with Retry-After (bursts of twice the rate
    #: pass; 0: no limit). The endpoints need no token and each request writes (a
    #: challenge, a claim, an event): this bounds how fast anyone can make them write.
    attest_vm_rate: int = 2
    #: Seconds a /validate holds its claim on a launch: a claim whose worker died
    #: (SIGKILL, power loss) lapses and the launch can be validated again.
    validate_lease: int = 60
    #: Unexpired pending launches one VM may have; one more is refused 429 (0: no bound).
    max_pending_launches: int = 8
    #: /launch requests per second one host may make, per service process; more are
    #: refused 429 with Retry-After (bursts of twice the rate pass; 0: no limit).
    host_launch_rate: int = 10
    #: Require ``Authorization: Bearer <host token>`` on /launch and /validate. On by
    #: default; ``false`` is for development only and is logged and shown by /healthz.
    require_host_token: bool = True
    #: Largest accepted firmware upload (bytes).
    max_firmware_size: int = 16 * 1024 * 1024
    #: Largest accepted JSON request body (bytes).
    max_request_size: int = 256 * 1024
    #: Database connection pool (PostgreSQL only).
    pool_size: int = 5
    max_overflow: int = 10
    #: Create / upgrade the schema when the app starts (``attestd db upgrade`` otherwise).
    auto_migrate: bool = True
    #: Days finished (or expired, never finished) launches are kept; 0 keeps them forever.
    retention_launch_days: int = 30
    #: Days audit events are kept; 0 keeps them forever.
    retention_event_days: int = 365
    #: Largest number of firmware images one owner may store (0: no limit).
    max_firmware_per_owner: int = 32
    #: Largest total size of one owner's firmware images in bytes (0: no limit).
    max_firmware_bytes_per_owner: int = 256 * 1024 * 1024
    log_level: str = "INFO"
    #: gunicorn defaults for ``attestd serve``.
    bind: str = "127.0.0.1:8080"
    workers: int = 2
    #: Threads per gunicorn worker (gthread): concurrent requests per worker. 4, not
    #: more: the threads of a worker share one GIL, so each extra thread makes every
    #: request in that worker wait for the others' CPU (docs/performance.md, "HTTP path
    #: and gunicorn"); more than 2, so two slow-header connections never hold a worker.
    threads: int = 4
    #: gunicorn's control socket (``gunicornc``) for this instance; empty disables it.
    #: gunicorn's own default is one per user (``~/.gunicorn/gunicorn.ctl``), which a
    #: second instance of the same user would take over.
    control_socket: str = ""
    #: SEV-SNP initdata: the service's base URL(s) as guests reach them
    #: (``https://attest.example/v1``; comma-separated in ``ATTESTD_PUBLIC_URLS``). Empty:
    #: SNP VMs get no initdata and refuse to attest unless their owner pins ``host-data``.
    public_urls: tuple[str, ...] = ()
    #: What an SNP guest trusts the service by (written into each VM's initdata): the CA
    #: certificate(s) of the service's TLS certificate (PEM file) and/or a key pin
    #: ``sha256//<base64 SHA-256 of the SubjectPublicKeyInfo>``.
    guest_ca_file: Path | None = None
    guest_pin: str = ""

    @property
    def effective_database_url(self) -> str:
        """The configured URL or the SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'attestd.sqlite3'}"

    @property
    def effective_cek_cache_dir(self) -> Path:
        """Where signed CEKs are cached."""
        return self.cek_cache_dir or self.data_dir / "cek"

    @property
    def vcek_store_dir(self) -> Path:
        """The VCEK store's directory (``<cek cache>/vcek``): SEV-SNP VCEKs and the CRLs
        of the SNP trust anchors (docs/operator.md, "VCEKs" and "CRLs")."""
        return self.effective_cek_cache_dir / "vcek"

    @property
    def effective_storage_key_file(self) -> Path:
        """The configured key file, a systemd credential, or the dev key in the data dir."""
        if self.storage_key_file is not None:
            return self.storage_key_file
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / "storage.key").is_file():
            return Path(creds) / "storage.key"
        return self.data_dir / "storage.key"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (for tests and CLI flags)."""
        return dataclasses.replace(self, **changes)


def _convert(name: str, raw: object, default: object) -> object:
    """Coerce a file or environment value to the type of the field's default."""
    kind = _FIELD_KINDS[name]
    if kind is tuple:
        return _urls(name, raw)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ParseError(f"configuration {name}: expected a boolean")
    if kind is int:
        if isinstance(raw, bool):
            raise ParseError(f"configuration {name}: expected an integer")
        try:
            value = int(str(raw), 0) if isinstance(raw, str) else int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ParseError(f"configuration {name}: expected an integer") from None
        if value < 0:
            raise ParseError(f"configuration {name}: must not be negative")
        return value
    if not isinstance(raw, str):
        # a TOML number or table where a path or text belongs (``data_dir = 5``)
        raise ParseError(f"configuration {name}: expected a string")
    if kind is Path:
        return Path(raw) if raw else (None if default is None else Path(raw))
    return raw


def _urls(name: str, raw: object) -> tuple[str, ...]:
    """A list of base URLs: a TOML array of strings or one comma-separated string."""
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise ParseError(f"configuration {name}: expected URLs (a list or comma-separated)")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ParseError(f"configuration {name}: expected URLs (strings)")
        url = item.strip()
        if not url:
            continue
        if not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
            raise ParseError(f"configuration {name}: {url!r} is not an http(s) URL")
        out.append(url.rstrip("/"))
    return tuple(out)


_FIELD_KINDS: dict[str, type] = {
    "data_dir": Path,
    "database_url": str,
    "trust_anchors_dir": Path,
    "storage_key_file": Path,
    "cek_cache_dir": Path,
    "kds_offline": bool,
    "kds_url": str,
    "snp_require_crl": bool,
    "secret_area_size": int,
    "launch_ttl": int,
    "attest_nonce_ttl": int,
    "attest_max_challenges": int,
    "attest_vm_rate": int,
    "validate_lease": int,
    "max_pending_launches": int,
    "host_launch_rate": int,
    "require_host_token": bool,
    "max_firmware_size": int,
    "max_request_size": int,
    "pool_size": int,
    "max_overflow": int,
    "auto_migrate": bool,
    "retention_launch_days": int,
    "retention_event_days": int,
    "max_firmware_per_owner": int,
    "max_firmware_bytes_per_owner": int,
    "log_level": str,
    "bind": str,
    "workers": int,
    "threads": int,
    "control_socket": str,
    "public_urls": tuple,
    "guest_ca_file": Path,
    "guest_pin": str,
}


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from defaults, the TOML file, the environment and ``overrides``."""
    env = os.environ if environ is None else environ
    if path is None:
        configured = env.get("ATTESTD_CONFIG")
        path = Path(configured) if configured else DEFAULT_CONFIG_FILE
        required = bool(configured)
    else:
        required = True
    values: dict[str, object] = {}
    defaults = Settings()
    if path.is_file():
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ParseError(f"configuration file {path} is not valid TOML: {exc}") from None
        section = document.get("attestd", document)
        if not isinstance(section, dict):
            raise ParseError(f"configuration file {path}: [attestd] must be a table")
        for key, raw in section.items():
            name = key.replace("-", "_")
            if name not in _FIELD_KINDS:
                raise ParseError(f"configuration file {path}: unknown key {key!r}")
            values[name] = _convert(name, raw, getattr(defaults, name))
    elif required:
        raise ParseError(f"configuration file {path} does not exist")
    for name in _FIELD_KINDS:
        raw_env = env.get(f"ATTESTD_{name.upper()}")
        if raw_env is not None:
            values[name] = _convert(name, raw_env, getattr(defaults, name))
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.secret_area_size < 64:
        raise ParseError("configuration secret_area_size: too small for a secret table")
    if settings.launch_ttl < 1:
        raise ParseError("configuration launch_ttl: must be at least one second")
    if settings.attest_nonce_ttl < 1:
        raise ParseError("configuration attest_nonce_ttl: must be at least one second")
    if settings.attest_max_challenges < 1:
        raise ParseError("configuration attest_max_challenges: must be at least 1")
    check_guest_trust(settings)
    return settings


def check_guest_trust(settings: Settings) -> None:
    """Refuse a malformed ``guest_pin``, and ``public_urls`` without anything to trust."""
    from attestd.guest.initdata import InitdataError, parse_pin

    if settings.guest_pin:
        try:
            parse_pin(settings.guest_pin)
        except InitdataError as exc:
            raise ParseError(f"configuration guest_pin: {exc.message}") from None
    for url in settings.public_urls:
        if not url.endswith("/v1"):
            raise ParseError(
                f"configuration public_urls: {url} is not the service's v1 base URL (it "
                "ends in /v1, e.g. https://attest.example/v1; each owner's guests get "
                "https://attest.example/owners/<owner>/v1 in their initdata)"
            )
    if settings.public_urls and settings.guest_ca_file is None and not settings.guest_pin:
        raise ParseError(
            "configuration public_urls: set guest_ca_file or guest_pin too (what an SNP "
            "guest trusts the service by)"
        )
