"""SNP initdata: what a guest needs to find and trust the service, bound by HOST_DATA.

The document follows Trustee's initdata convention (``kbs/docs/initdata.md``)::

    version = "0.1.0"
    algorithm = "sha256"

    [data]
    "attestd.pin" = "sha256//…"
    "attestd.service" = "https://a.example/v1\\nhttps://b.example/v1"
    "attestd.vm-id" = "9f0c…"

``[data]`` maps names to strings (Trustee's ``HashMap<String, String>``); attestd's
names start with ``attestd.``, other names are kept and ignored. The host passes the
document to the guest unmeasured (fw_cfg ``opt/attestd/initdata``); its SHA-256 over
the exact bytes is the 32-byte HOST_DATA the PSP puts in every report, so a guest that
checks HOST_DATA against the document it read, and a service that checks HOST_DATA
against the document it expects, both detect a substituted document.

:func:`encode` is canonical (sorted keys, one escaping rule, LF line ends), so the same
inputs give the same bytes, hence the same HOST_DATA, on every node and after every
restart. :func:`parse` refuses anything malformed. Standard library only (``tomllib``:
Python 3.11) so that the guest agent can use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from attestd.guest.errors import GuestError

VERSION = "0.1.0"
ALGORITHM = "sha256"
HOST_DATA_SIZE = 32
MAX_SIZE = 64 * 1024

KEY_SERVICE = "attestd.service"
KEY_VM_ID = "attestd.vm-id"
KEY_CA = "attestd.ca.pem"
KEY_PIN = "attestd.pin"
KEY_RETRY = "attestd.retry-seconds"
PIN_PREFIX = "sha256//"
DEFAULT_RETRY_SECONDS = 300
MAX_RETRY_SECONDS = 24 * 3600

_DIGESTS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


class InitdataError(GuestError):
    """The initdata document is malformed, or does not match HOST_DATA."""

    code = "invalid_initdata"


def parse_pin(text: str) -> bytes:
    """``sha256//<base64 of the SHA-256 of the service key's SubjectPublicKeyInfo>`` → digest."""
    if not text.startswith(PIN_PREFIX):
        raise InitdataError(f"a key pin must start with {PIN_PREFIX!r}")
    try:
        raw = base64.b64decode(text[len(PIN_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InitdataError("a key pin must be base64 after 'sha256//'") from None
    if len(raw) != 32:
        raise InitdataError("a key pin must be a 32-byte SHA-256 digest")
    return raw


def format_pin(digest: bytes) -> str:
    """The text form of a SHA-256 SubjectPublicKeyInfo pin."""
    if len(digest) != 32:
        raise InitdataError("a key pin must be a 32-byte SHA-256 digest")
    return PIN_PREFIX + base64.b64encode(digest).decode("ascii")


def _check_url(url: str) -> str:
    if not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
        raise InitdataError(f"service URL {url!r} is not an http(s) URL")
    return url.rstrip("/")


def _check_ca(pem: str) -> None:
    if "-----BEGIN CERTIFICATE-----" not in pem or "-----END CERTIFICATE-----" not in pem:
        raise InitdataError(f"{KEY_CA} must hold PEM certificates")


@dataclass(frozen=True, slots=True)
class Initdata:
    """The attestd content of an initdata document (plus any foreign ``[data]`` entries)."""

    services: tuple[str, ...]
    vm_id: UUID
    ca_pem: str | None = None
    pin: str | None = None
    retry_seconds: int = DEFAULT_RETRY_SECONDS
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.services:
            raise InitdataError("initdata needs at least one service URL")
        object.__setattr__(self, "services", tuple(_check_url(u) for u in self.services))
        if self.ca_pem is not None:
            _check_ca(self.ca_pem)
        if self.pin is not None:
            parse_pin(self.pin)
        if not 0 <= self.retry_seconds <= MAX_RETRY_SECONDS:
            raise InitdataError(f"{KEY_RETRY} must be 0..{MAX_RETRY_SECONDS}")
        for name in self.extra:
            if name.startswith("attestd."):
                raise InitdataError(f"unknown attestd initdata entry {name!r}")

    def data(self) -> dict[str, str]:
        """The ``[data]`` table."""
        out = dict(self.extra)
        out[KEY_SERVICE] = "\n".join(self.services)
        out[KEY_VM_ID] = str(self.vm_id)
        if self.ca_pem is not None:
            out[KEY_CA] = self.ca_pem
        if self.pin is not None:
            out[KEY_PIN] = self.pin
        if self.retry_seconds != DEFAULT_RETRY_SECONDS:
            out[KEY_RETRY] = str(self.retry_seconds)
        return out

    def encode(self) -> bytes:
        """The canonical document (see :func:`encode`)."""
        return encode(self.data())


def _string(text: str) -> str:
    """A TOML basic string; one spelling per value (canonical)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def encode(data: Mapping[str, str], *, algorithm: str = ALGORITHM) -> bytes:
    """The canonical initdata TOML: header, then ``[data]`` with sorted quoted keys."""
    if algorithm not in _DIGESTS:
        raise InitdataError(f"unsupported initdata algorithm {algorithm!r}")
    lines = [f"version = {_string(VERSION)}", f"algorithm = {_string(algorithm)}", "", "[data]"]
    for name in sorted(data):
        value = data[name]
        if not name or not isinstance(value, str):
            raise InitdataError("initdata entries are non-empty names with string values")
        lines.append(f"{_string(name)} = {_string(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def digest(document: bytes) -> bytes:
    """The document's digest per its ``algorithm`` (the document must parse)."""
    return _DIGESTS[_header(_load(document))](document).digest()


def host_data(document: bytes) -> bytes:
    """HOST_DATA for ``document``: its digest truncated or zero-padded to 32 bytes."""
    raw = digest(document)
    return raw[:HOST_DATA_SIZE].ljust(HOST_DATA_SIZE, b"\0")


def check_host_data(document: bytes, reported: bytes) -> None:
    """Refuse unless ``reported`` (a report's HOST_DATA) is this document's digest."""
    if len(reported) != HOST_DATA_SIZE or host_data(document) != reported:
        raise InitdataError(
            "the initdata does not match the HOST_DATA of this VM's report "
            "(the host passed another document than the one it launched the VM with)"
        )


def _load(document: bytes) -> dict[str, object]:
    if len(document) > MAX_SIZE:
        raise InitdataError(f"initdata larger than {MAX_SIZE} bytes")
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError:
        raise InitdataError("initdata is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InitdataError(f"initdata is not TOML: {exc}") from None


def _header(doc: Mapping[str, object]) -> str:
    unknown = sorted(set(doc) - {"version", "algorithm", "data"})
    if unknown:
        raise InitdataError(f"initdata has unknown top-level keys: {', '.join(unknown)}")
    if doc.get("version") != VERSION:
        raise InitdataError(f"initdata version must be {VERSION!r}")
    algorithm = doc.get("algorithm")
    if not isinstance(algorithm, str) or algorithm not in _DIGESTS:
        raise InitdataError("initdata algorithm must be sha256, sha384 or sha512")
    return algorithm


def parse(document: bytes) -> Initdata:
    """Parse and validate an initdata document (any algorithm; attestd writes sha256)."""
    doc = _load(document)
    _header(doc)
    data = doc.get("data")
    if not isinstance(data, dict):
        raise InitdataError("initdata has no [data] table")
    for name, value in data.items():
        if not isinstance(value, str):
            raise InitdataError(f"initdata entry {name!r} is not a string")
    entries: dict[str, str] = dict(data)
    try:
        services = entries.pop(KEY_SERVICE)
        vm_text = entries.pop(KEY_VM_ID)
    except KeyError as exc:
        raise InitdataError(f"initdata lacks {exc.args[0]!r}") from None
    try:
        vm_id = UUID(vm_text)
    except ValueError:
        raise InitdataError(f"{KEY_VM_ID} is not a UUID") from None
    retry = entries.pop(KEY_RETRY, str(DEFAULT_RETRY_SECONDS))
    if not retry.isascii() or not retry.isdigit():
        raise InitdataError(f"{KEY_RETRY} must be a number of seconds")
    return Initdata(
        services=tuple(line for line in services.split("\n")),
        vm_id=vm_id,
        ca_pem=entries.pop(KEY_CA, None),
        pin=entries.pop(KEY_PIN, None),
        retry_seconds=int(retry),
        extra=entries,
    )


def build(
    services: Sequence[str],
    vm_id: UUID,
    *,
    ca_pem: str | None = None,
    pin: str | None = None,
    retry_seconds: int = DEFAULT_RETRY_SECONDS,
) -> bytes:
    """The canonical document for these settings (what the host and the service write)."""
    if ca_pem is None and pin is None:
        raise InitdataError("initdata needs the service's CA certificate or key pin")
    return Initdata(tuple(services), vm_id, ca_pem, pin, retry_seconds).encode()
