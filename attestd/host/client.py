"""HTTP client for the host-side endpoints ``/launch``, ``/validate`` and SNP ``/initdata``.

Timeouts on every request, retries only on transient failures (connection
errors and 502/503/504), TLS verification always on (optionally against a CA
bundle), plain ``http://`` only when the host config allows it, and an optional
host bearer token. Errors carry the service's own reason so that libvirt can
show it to the operator.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from attestd.errors import LaunchError, ParseError
from attestd.host.config import HostSettings
from attestd.host.platform import PlatformData

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = (502, 503, 504)


@dataclass(frozen=True, slots=True)
class LaunchSession:
    """The service's answer to ``POST /launch``: one fresh session per launch."""

    launch_id: str
    godh_cert: bytes
    session: bytes
    policy: int


@dataclass(frozen=True, slots=True)
class LaunchReport:
    """What the host reports to ``POST /validate`` (all from the platform or domain)."""

    measurement: bytes
    api_major: int
    api_minor: int
    build_id: int
    policy: int
    firmware_hash: str | None = None
    cpu_count: int | None = None
    vcpu_type: str | None = None


@dataclass(frozen=True, slots=True)
class SnpInitdata:
    """``GET /vm/<uuid>/initdata``: what an SNP domain carries (policy, document, HOST_DATA)."""

    policy: int
    initdata: bytes
    host_data: bytes


@dataclass(frozen=True, slots=True)
class LaunchSecret:
    """The service's answer to a successful ``POST /validate``."""

    header: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"LaunchSecret(header=<{len(self.header)} bytes>, secret=<{len(self.secret)} bytes>)"


def _b64(doc: dict[str, Any], key: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ParseError(f"service response lacks {key!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ParseError(f"service response field {key!r} is not base64") from exc


def _int_field(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ParseError(f"service response field {key!r} is not an integer")


class WrongScheme(LaunchError):
    """The service answered 422 ``wrong_scheme``: the VM is registered for another scheme."""


def _reasons(response: requests.Response) -> list[Any] | None:
    try:
        doc = response.json()
    except ValueError:
        return None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    reasons = errors.get("reasons") if isinstance(errors, dict) else None
    return reasons if isinstance(reasons, list) else None


def describe_error(response: requests.Response) -> str:
    """The service's error envelope as one line (``message``, code, reasons)."""
    try:
        doc = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(doc, dict):
        return f"HTTP {response.status_code}"
    message = str(doc.get("message") or doc.get("status") or "")
    errors = doc.get("errors")
    parts = [f"HTTP {response.status_code}"]
    if isinstance(errors, dict):
        reason = errors.get("reason") or errors.get("code")
        if reason:
            parts.append(str(reason))
    text = " ".join(parts) + (f": {message}" if message else "")
    if isinstance(errors, dict):
        reasons = errors.get("reasons")
        if isinstance(reasons, list) and reasons:
            text += " (" + "; ".join(str(r) for r in reasons) + ")"
    return text


class ServiceClient:
    """Talks to one attestd service base URL (e.g. ``https://attest.example/v1``)."""

    def __init__(
        self,
        base_url: str,
        settings: HostSettings,
        *,
        session: requests.Session | None = None,
    ) -> None:
        if base_url.startswith("http://") and not settings.allow_http:
            raise LaunchError(
                f"refusing plain-HTTP service {base_url}: set allow_http = true in the host config"
            )
        if not base_url.startswith(("http://", "https://")):
            raise LaunchError(f"service URL {base_url!r} is not http(s)")
        self.base_url = base_url.rstrip("/")
        self.timeout = settings.timeout
        self.session = session or requests.Session()
        retry = Retry(
            total=settings.retries,
            connect=settings.retries,
            read=0,
            status=settings.retries,
            status_forcelist=TRANSIENT_STATUS,
            allowed_methods=frozenset({"GET", "POST"}),
            backoff_factor=0.2,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.verify: str | bool = str(settings.ca_bundle) if settings.ca_bundle else True
        self.session.verify = self.verify
        token = settings.host_token()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, body)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in the
            # environment override a session's verify, which would ignore ca_bundle
            response = self.session.request(
                method, url, json=body, timeout=self.timeout, verify=self.verify
            )
        except requests.RequestException as exc:
            raise LaunchError(self._unreachable(method, url, exc)) from exc
        if response.status_code == 422 and _reasons(response) == ["wrong_scheme"]:
            raise WrongScheme(f"service refused {path}: {describe_error(response)}")
        if response.status_code >= 400:
            raise LaunchError(f"service refused {path}: {describe_error(response)}")
        try:
            doc = response.json()
        except ValueError as exc:
            raise LaunchError(f"service answered {path} with non-JSON") from exc
        if not isinstance(doc, dict):
            raise LaunchError(f"service answered {path} with a non-object")
        return doc

    def _unreachable(self, method: str, url: str, exc: requests.RequestException) -> str:
        """Which URL failed, how, and what to check."""
        # the service root of a base URL ``<root>/v1`` or an owner's ``<root>/owners/<name>/v1``
        root = re.sub(r"(/owners/[^/]+)?/v1$", "", self.base_url)
        if isinstance(exc, requests.exceptions.SSLError):
            how = "TLS verification failed"
            check = "the service's certificate and ca_bundle in the host config"
        elif isinstance(exc, requests.Timeout) or "timed out" in str(exc):
            # a read timeout reaches us as a ConnectionError (urllib3 retries: read=0)
            how = f"no answer within {self.timeout:g} s"
            check = f"that the service at {root} is up and not overloaded (timeout in host.toml)"
        else:
            errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
            how = errno.group(1).strip() if errno else type(exc).__name__
            check = (
                f"that the attestd service runs (curl {root}/healthz) and that this host "
                "reaches it (service URL in the domain's metadata, DNS, firewall)"
            )
        return f"service {self.base_url} unreachable: {method} {url}: {how}; check {check}"

    def launch(self, vm_id: UUID, platform: PlatformData) -> LaunchSession:
        """``POST /vm/<uuid>/launch``: fresh GODH cert + session for this launch."""
        body: dict[str, Any] = {
            "pdh": base64.b64encode(platform.pdh).decode(),
            "cert-chain": base64.b64encode(platform.cert_chain).decode(),
            "cpu-id": base64.b64encode(platform.chip_id).decode(),
        }
        if platform.cek is not None:
            body["cek"] = base64.b64encode(platform.cek).decode()
        doc = self._post(f"/vm/{vm_id}/launch", body)
        try:
            return LaunchSession(
                launch_id=str(doc["launch-id"]),
                godh_cert=_b64(doc, "owner-cert"),
                session=_b64(doc, "session"),
                policy=_int_field(doc, "policy"),
            )
        except (KeyError, ParseError) as exc:
            raise LaunchError(f"service /launch response malformed: {exc}") from exc

    def validate(self, vm_id: UUID, launch_id: str, report: LaunchReport) -> LaunchSecret:
        """``POST /vm/<uuid>/validate``: the secret packet, or a LaunchError with the reason."""
        body: dict[str, Any] = {
            "launch-id": launch_id,
            "measurement": base64.b64encode(report.measurement).decode(),
            "api-major": report.api_major,
            "api-minor": report.api_minor,
            "build-id": report.build_id,
            "policy": report.policy,
        }
        if report.firmware_hash is not None:
            body["firmware-hash"] = report.firmware_hash
        if report.cpu_count is not None:
            body["cpu-count"] = report.cpu_count
        if report.vcpu_type is not None:
            body["vcpu-type"] = report.vcpu_type
        doc = self._post(f"/vm/{vm_id}/validate", body)
        try:
            return LaunchSecret(header=_b64(doc, "secret-header"), secret=_b64(doc, "secret-table"))
        except ParseError as exc:
            raise LaunchError(f"service /validate response malformed: {exc}") from exc

    def initdata(self, vm_id: UUID) -> SnpInitdata | None:
        """``GET /vm/<uuid>/initdata``: the SNP VM's policy, initdata and HOST_DATA; None
        when the service says the VM is registered for another scheme (SEV, SEV-ES)."""
        try:
            doc = self._request("GET", f"/vm/{vm_id}/initdata")
        except WrongScheme:
            return None
        text, host_data, policy = doc.get("initdata"), doc.get("host-data"), doc.get("policy")
        if (
            doc.get("scheme") != "amd-sev-snp"
            or not isinstance(text, str)
            or not isinstance(host_data, str)
            or not re.fullmatch(r"[0-9a-f]{64}", host_data)
            or not isinstance(policy, str)
            or not re.fullmatch(r"0x[0-9a-f]{16}", policy)
        ):
            raise LaunchError("service /initdata response malformed")
        return SnpInitdata(int(policy, 16), text.encode("utf-8"), bytes.fromhex(host_data))
