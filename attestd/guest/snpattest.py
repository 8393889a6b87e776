"""SEV-SNP guest attestation: initdata → HOST_DATA check → challenge → report → JWE payload.

Threat model. The host is not trusted. It passes the initdata unmeasured, but the PSP
puts the HOST_DATA the VM was *launched* with in every report, so the guest refuses an
initdata whose SHA-256 is not its own report's HOST_DATA before it talks to anyone, and
the service refuses a report whose HOST_DATA is not the one it expects. The secret
comes back as a JWE to an ephemeral P-384 key that only this guest holds and that
REPORT_DATA binds (with the service's single-use nonce) under the PSP's signature: a
man in the middle learns nothing and cannot replay.

Service identity is TLS verified against the service key pin or CA certificate in the
initdata; a pin on the measured kernel command line (``attestd.pin=sha256//…``) wins.
A host that rewrites initdata *and* HOST_DATA together launches a VM whose report no
honest service accepts; against an unpinned guest (pin only in the initdata) it can
then play the service itself: it gets no owner secret, but can hand the guest disk
keys of its choosing (the guest would format and use volumes the host can read). The
kernel-command-line pin is measured (kernel hashes) and so is checked by the owner's
measurement: it closes that gap. Registering ``host-data`` with the service makes the
service refuse a VM launched with other initdata.

The SEV agent stays standard-library only: ``cryptography`` and ``jwcrypto`` (Debian's
python3-cryptography and python3-jwcrypto) are imported here, and only this module
imports them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from attestd.guest import initdata
from attestd.guest.errors import GuestError
from attestd.guest.snpreport import REPORT_DATA_SIZE, ReportError, ReportSource

logger = logging.getLogger(__name__)

JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
PIN_ARG = "attestd.pin="
MAX_RESPONSE = 1024 * 1024
REQUEST_TIMEOUT = 30.0
FIRST_DELAY = 1.0
MAX_DELAY = 30.0


class AttestationRefused(GuestError):
    """The service refused the attestation (4xx): nothing was released."""

    code = "attestation_refused"


class ServiceUnreachable(GuestError):
    """No service answered usefully before the retry budget ran out."""

    code = "service_unreachable"


class _Transient(Exception):
    """A failure worth retrying (network down, 5xx, 429)."""


def binding(nonce: str, jwk: Mapping[str, str]) -> bytes:
    """REPORT_DATA for ``nonce`` and the public ``jwk`` (issue 12, Trustee RCAR)."""
    document = json.dumps(
        {"nonce": nonce, "tee-pubkey": dict(jwk)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha384(document.encode("utf-8")).digest() + bytes(16)


def kernel_pin(cmdline: str) -> str | None:
    """The ``attestd.pin=`` value of a kernel command line (the last one wins), checked."""
    pin = None
    for word in cmdline.split():
        if word.startswith(PIN_ARG):
            pin = word[len(PIN_ARG) :]
    if pin is not None:
        initdata.parse_pin(pin)
    return pin


@dataclass(frozen=True, slots=True)
class Trust:
    """How the service's TLS identity is checked: a key pin, else a CA, else (http) none."""

    pin: str | None = None
    ca_pem: str | None = None

    @classmethod
    def choose(cls, doc: initdata.Initdata, cmdline_pin: str | None) -> Trust:
        """The kernel command line's pin, else the initdata's pin, else its CA."""
        if cmdline_pin is not None:
            return cls(pin=cmdline_pin)
        if doc.pin is not None:
            return cls(pin=doc.pin)
        return cls(ca_pem=doc.ca_pem)


def _spki_sha256(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_der_x509_certificate(der).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def post_json(url: str, body: Mapping[str, Any], trust: Trust) -> tuple[int, Any]:
    """POST ``body`` as JSON; (status, decoded JSON or None). OSError/_Transient on trouble."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        if trust.pin is not None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the pin below is the whole check
        elif trust.ca_pem is not None:
            context = ssl.create_default_context(cadata=trust.ca_pem)
        else:
            raise AttestationRefused("an https service needs a CA certificate or key pin")
        conn = http.client.HTTPSConnection(host, port, timeout=REQUEST_TIMEOUT, context=context)
    else:
        if trust.pin is not None or trust.ca_pem is not None:
            raise AttestationRefused(f"{url}: plain http, but a pin or CA is configured")
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
    try:
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise AttestationRefused(
                f"{url}: the service's certificate: {exc.verify_message}"
            ) from None
        if trust.pin is not None and isinstance(conn.sock, ssl.SSLSocket):
            der = conn.sock.getpeercert(binary_form=True)
            if der is None or _spki_sha256(der) != initdata.parse_pin(trust.pin):
                raise AttestationRefused(f"{url}: the service's key does not match the pin")
        data = json.dumps(body).encode("utf-8")
        conn.request("POST", parts.path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read(MAX_RESPONSE + 1)
    finally:
        conn.close()
    if response.status >= 500 or response.status == 429:
        raise _Transient(f"{url}: HTTP {response.status}")
    try:
        return response.status, json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return response.status, None


def _refusal(url: str, status: int, doc: object) -> AttestationRefused:
    """The service's error envelope (``message``, ``errors.reason``/``reasons``) in one line."""
    if not isinstance(doc, dict):
        return AttestationRefused(f"{url}: HTTP {status}")
    found = doc.get("errors")
    errors: dict[str, Any] = found if isinstance(found, dict) else {}
    text = f"{url}: HTTP {status} {errors.get('reason', '')}: {doc.get('message', '')}"
    reasons = errors.get("reasons")
    if isinstance(reasons, list):
        text += " (" + "; ".join(str(r) for r in reasons) + ")"
    return AttestationRefused(text)


@dataclass(frozen=True, slots=True)
class SnpAttester:
    """One attestation: the parts that touch the world are injectable for tests."""

    source: ReportSource
    post: Callable[[str, Mapping[str, Any], Trust], tuple[int, Any]] = post_json
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def check_initdata(self, document: bytes) -> initdata.Initdata:
        """Parse the initdata and refuse it unless it is this VM's HOST_DATA."""
        doc = initdata.parse(document)
        evidence = self.source.get(bytes(REPORT_DATA_SIZE))
        initdata.check_host_data(document, evidence.host_data)
        return doc

    def _once(self, base: str, vm_id: str, trust: Trust) -> bytes:
        from jwcrypto import jwe, jwk

        status, challenge = self.post(f"{base}/vm/{vm_id}/attest/challenge", {}, trust)
        if status != 200 or not isinstance(challenge, dict):
            raise _refusal(f"{base} challenge", status, challenge)
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise AttestationRefused(f"{base}: the challenge has no nonce")
        key = jwk.JWK.generate(kty="EC", crv="P-384")
        public = key.export_public(as_dict=True)
        tee_pubkey = {name: str(public[name]) for name in ("kty", "crv", "x", "y")}
        evidence = self.source.get(binding(nonce, tee_pubkey))
        body: dict[str, Any] = {
            "nonce": nonce,
            "tee-pubkey": tee_pubkey,
            "report": base64.b64encode(evidence.report).decode("ascii"),
        }
        if evidence.cert_table:
            body["cert-table"] = base64.b64encode(evidence.cert_table).decode("ascii")
        status, answer = self.post(f"{base}/vm/{vm_id}/attest", body, trust)
        if status != 200 or not isinstance(answer, dict):
            raise _refusal(f"{base} attest", status, answer)
        compact = answer.get("payload")
        if not isinstance(compact, str):
            raise AttestationRefused(f"{base}: the attest answer has no payload")
        token = jwe.JWE()
        token.allowed_algs = [JWE_ALG, JWE_ENC]
        try:
            token.deserialize(compact, key=key)
        except (jwe.InvalidJWEData, ValueError, binascii.Error) as exc:
            raise AttestationRefused(f"{base}: the payload does not decrypt: {exc}") from None
        header = token.jose_header
        if header.get("alg") != JWE_ALG or header.get("enc") != JWE_ENC:
            raise AttestationRefused(f"{base}: the payload is not {JWE_ALG}/{JWE_ENC}")
        return bytes(token.payload)

    def attest(self, document: bytes, *, cmdline_pin: str | None = None) -> bytes:
        """The decrypted guest payload document, or an exception saying why not.

        Network trouble (connection refused, timeouts, 5xx, 429) is retried on every
        service URL with exponential backoff until the initdata's retry budget is spent;
        a refusal (4xx, a pin mismatch, a payload that does not decrypt) stops at once.
        """
        doc = self.check_initdata(document)
        trust = Trust.choose(doc, cmdline_pin)
        deadline = self.clock() + doc.retry_seconds
        delay = FIRST_DELAY
        last = "no attempt"
        while True:
            for base in doc.services:
                try:
                    return self._once(base, str(doc.vm_id), trust)
                except (_Transient, OSError, ReportError) as exc:
                    last = f"{base}: {exc}"
                    logger.warning("attestation attempt failed, will retry: %s", last)
            if self.clock() + delay > deadline:
                raise ServiceUnreachable(f"no service answered in {doc.retry_seconds} s ({last})")
            self.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
