"""The host side of a launch, driven against ``attestd.sim`` (what libvirt + QEMU do)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient

from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import VmsaFlavour, vcpu_signature, vmsa_pages
from attestd.sev.secrets import SecretEntry, parse_secret_table
from attestd.sim.platform import SimulatedPlatform


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode()


@dataclass
class Boot:
    """What the guest is really launched with (may differ from the registration)."""

    firmware: bytes
    hashes: KernelHashes | None = None
    es: bool = False
    vcpus: int = 1
    vcpu_type: str = "EPYC-v4"
    flavour: VmsaFlavour = VmsaFlavour.CURRENT
    policy: int | None = None  # the policy the host really uses (default: the session's)


@dataclass
class Outcome:
    """Responses of one launch attempt."""

    launch: Any
    validate: Any = None
    table: list[SecretEntry] = field(default_factory=list)

    @property
    def released(self) -> bool:
        return self.validate is not None and self.validate.status_code == 200


def launch_body(platform: SimulatedPlatform, **override: Any) -> dict[str, Any]:
    """The ``/launch`` request for ``platform`` (``virNodeGetSEVInfo`` data + signed CEK)."""
    exp = platform.export()
    body = {
        "pdh": b64(exp.pdh),
        "cert-chain": b64(exp.cert_chain),
        "cpu-id": b64(exp.chip_id),
        "cek": b64(exp.signed_cek),
    }
    body.update(override)
    return {k: v for k, v in body.items() if v is not None}


def measure(platform: SimulatedPlatform, grant: dict[str, Any], boot: Boot) -> tuple[int, bytes]:
    """LAUNCH_START, UPDATE_DATA/VMSA and MEASURE on the simulator."""
    policy = grant["policy"] if boot.policy is None else boot.policy
    handle = platform.launch_start(
        base64.b64decode(grant["owner-cert"]), base64.b64decode(grant["session"]), policy
    )
    platform.launch_update_data(handle, boot.firmware)
    if boot.hashes is not None:
        platform.launch_update_data(handle, boot.hashes.table())
    if boot.es:
        eip = Ovmf.from_bytes(boot.firmware).sev_es_reset_eip
        assert eip is not None
        sig = vcpu_signature(boot.vcpu_type)
        for page in vmsa_pages(boot.vcpus, eip, sig, boot.flavour):
            platform.launch_update_vmsa(handle, page)
    return handle, platform.launch_measure(handle)


def run_launch(
    client: FlaskClient,
    platform: SimulatedPlatform,
    uuid: str,
    boot: Boot,
    *,
    headers: dict[str, str] | None = None,
    launch: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    base: str = "/v1",
) -> Outcome:
    """One full launch: /launch, simulator, /validate, inject; returns every response
    (``base``: the service's base URL, e.g. an owner's ``/owners/<name>/v1``)."""
    first = client.post(
        f"{base}/vm/{uuid}/launch", json=launch or launch_body(platform), headers=headers or {}
    )
    outcome = Outcome(launch=first)
    if first.status_code != 200:
        return outcome
    handle, measurement = measure(platform, first.json, boot)
    body = validate_body(platform, first.json, measurement, boot)
    for key, value in (report or {}).items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    second = client.post(f"{base}/vm/{uuid}/validate", json=body, headers=headers or {})
    outcome.validate = second
    if second.status_code == 200:
        platform.launch_secret(
            handle,
            base64.b64decode(second.json["secret-header"]),
            base64.b64decode(second.json["secret-table"]),
        )
        table = platform.secret_table(handle)
        assert table is not None
        outcome.table = parse_secret_table(table)
    return outcome


def validate_body(
    platform: SimulatedPlatform, grant: dict[str, Any], measurement: bytes, boot: Boot
) -> dict[str, Any]:
    """The ``/validate`` request a host sends after LAUNCH_MEASURE."""
    body: dict[str, Any] = {
        "launch-id": grant["launch-id"],
        "api-major": platform.api_major,
        "api-minor": platform.api_minor,
        "build-id": platform.build_id,
        "policy": grant["policy"] if boot.policy is None else boot.policy,
        "measurement": b64(measurement),
        "firmware-hash": hashlib.sha256(boot.firmware).hexdigest(),
        "cpu-count": boot.vcpus,
    }
    if boot.es:
        body["vcpu-type"] = boot.vcpu_type
    return body


# -- registrations and boots shared by the launch suites ------------------------------

VM = "6f1d3a2c-9b8e-4f7a-8c6d-5e4b3a291807"
RAW_GUID = "0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10"
KERNEL, INITRD, CMDLINE = b"\x7fkernel" * 1000, b"initrd-bytes" * 500, "console=ttyS0 root=/dev/vda"


def launch_secrets() -> list[dict[str, Any]]:
    return [
        {"type": "luks-passphrase", "passphrase": "grub-root-pass"},
        {
            "type": "volume",
            "name": "data",
            "device": "virtio:data-disk",
            "generate": True,
            "mount-point": "/data",
        },
        {"type": "env", "name": "app.env", "values": {"APP_MODE": "production"}},
        {"type": "secret-file", "name": "credentials.env", "values": {"DB_PASSWORD": "s3cret"}},
        {"type": "raw", "guid": RAW_GUID, "data": b64(b"raw-secret")},
    ]


def sev(ovmf: bytes, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "scheme": "amd-sev",
        "policy": 1,
        "firmware-hashes": [hashlib.sha256(ovmf).hexdigest()],
        "secrets": launch_secrets(),
        "user-id": "owner-42",
    }
    body.update(extra)
    return body


def sev_es(ovmf: bytes, **extra: Any) -> dict[str, Any]:
    kh = KernelHashes.from_content(KERNEL, INITRD, CMDLINE)
    body = sev(
        ovmf,
        scheme="amd-sev-es",
        policy=5,
        **{
            "cpu-count": 2,
            "vcpu-types": ["EPYC-v4", "EPYC-Milan"],
            "kernel-hash": kh.kernel.hex(),
            "initrd-hash": kh.initrd.hex(),
            "cmdline": CMDLINE,
        },
    )
    body.update(extra)
    return body


def es_boot(ovmf: bytes, **extra: Any) -> Boot:
    values: dict[str, Any] = {
        "firmware": ovmf,
        "hashes": KernelHashes.from_content(KERNEL, INITRD, CMDLINE),
        "es": True,
        "vcpus": 2,
        "vcpu_type": "EPYC-Milan",
    }
    values.update(extra)
    return Boot(**values)
