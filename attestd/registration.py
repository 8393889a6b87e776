"""The guest owner's registration of one VM, and the in-guest payload built from it.

:class:`Registration` is what the API schema loads; it holds secret values only in
``secrets``. :meth:`Registration.public` is the secret-free view returned by
``GET /v1/vm/<uuid>`` and stored in clear; :func:`resolve_secrets` turns the
registered secrets into the stored form (generated passphrases created once and
kept across ``PUT``); :func:`payload_entries` builds the secret-table entries
(payload JSON, GRUB LUKS key, raw entries) delivered inside the encrypted table.
"""

from __future__ import annotations

import base64
import json
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from attestd.sev.measure.sev_hashes import cmdline_digest
from attestd.sev.secrets import (
    ATTESTD_PAYLOAD_GUID,
    LUKS_KEY_GUID,
    NULL_GUID,
    SECRET_TABLE_GUID,
    SecretEntry,
    build_secret_table,
)

SCHEMES = ("amd-sev", "amd-sev-es")
PAYLOAD_VERSION = 1
PAYLOAD_GUID = ATTESTD_PAYLOAD_GUID
LUKS_GUID = LUKS_KEY_GUID
RESERVED_GUIDS = frozenset({PAYLOAD_GUID, LUKS_GUID, SECRET_TABLE_GUID, NULL_GUID})
#: System directories the guest agent never mounts a volume over (the guest's own rule in
#: ``attestd.guest.payload``; a test keeps the two equal). Refused at registration.
RESERVED_MOUNT_POINTS = frozenset(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /opt /proc /root /run /sbin "
    "/srv /sys /tmp /usr /var /var/lib /var/log /var/tmp /var/run".split()
)
#: Characters of a generated passphrase (base64url of 32 random bytes).
GENERATED_PASSPHRASE_LEN = 43


def generate_passphrase() -> str:
    """A new random passphrase (256 bits)."""
    return _secrets.token_urlsafe(32)


def cmdline_sha256(cmdline: str) -> str:
    """The SEV kernel-hashes digest of a command line (QEMU hashes it with its NUL)."""
    return cmdline_digest(cmdline).hex()


@dataclass(frozen=True)
class Registration:
    """A validated registration (field names are the API's, in snake case)."""

    scheme: str
    policy: int
    cpu_count: int = 1
    vcpu_types: tuple[str, ...] = ("EPYC-v4",)
    vmsa_flavours: tuple[str, ...] = ("current",)
    firmware_hashes: tuple[str, ...] = ()
    kernel_hash: str | None = None
    initrd_hash: str | None = None
    cmdline_hash: str | None = None
    launch_digests: tuple[str, ...] = ()
    cloud_cert: bytes | None = None
    min_api_major: int | None = None
    min_api_minor: int | None = None
    min_build_id: int | None = None
    max_launches: int | None = None
    user_id: str | None = None
    secrets: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def es(self) -> bool:
        """True for SEV-ES."""
        return self.scheme == "amd-sev-es"

    def public(self) -> dict[str, Any]:
        """The registration as JSON without any secret value (kebab-case keys)."""
        doc: dict[str, Any] = {
            "scheme": self.scheme,
            "policy": self.policy,
            "cpu-count": self.cpu_count,
            "vcpu-types": list(self.vcpu_types),
            "vmsa-flavours": list(self.vmsa_flavours),
            "firmware-hashes": list(self.firmware_hashes),
            "launch-digests": list(self.launch_digests),
        }
        optional: dict[str, Any] = {
            "kernel-hash": self.kernel_hash,
            "initrd-hash": self.initrd_hash,
            "cmdline-hash": self.cmdline_hash,
            "cloud-cert": (
                None if self.cloud_cert is None else base64.b64encode(self.cloud_cert).decode()
            ),
            "min-api-major": self.min_api_major,
            "min-api-minor": self.min_api_minor,
            "min-build-id": self.min_build_id,
            "max-launches": self.max_launches,
            "user-id": self.user_id,
        }
        doc.update({key: value for key, value in optional.items() if value is not None})
        doc["secrets"] = [describe_secret(entry) for entry in self.secrets]
        return doc

    @classmethod
    def from_public(cls, doc: Mapping[str, Any]) -> Registration:
        """Rebuild the non-secret part from :meth:`public` (``secrets`` left empty)."""
        cloud = doc.get("cloud-cert")
        return cls(
            scheme=doc["scheme"],
            policy=int(doc["policy"]),
            cpu_count=int(doc["cpu-count"]),
            vcpu_types=tuple(doc["vcpu-types"]),
            vmsa_flavours=tuple(doc["vmsa-flavours"]),
            firmware_hashes=tuple(doc["firmware-hashes"]),
            kernel_hash=doc.get("kernel-hash"),
            initrd_hash=doc.get("initrd-hash"),
            cmdline_hash=doc.get("cmdline-hash"),
            launch_digests=tuple(doc["launch-digests"]),
            cloud_cert=None if cloud is None else base64.b64decode(cloud),
            min_api_major=doc.get("min-api-major"),
            min_api_minor=doc.get("min-api-minor"),
            min_build_id=doc.get("min-build-id"),
            max_launches=doc.get("max-launches"),
            user_id=doc.get("user-id"),
        )


def describe_secret(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A registered secret without its value: type, names, keys, flags."""
    kind = entry["type"]
    out: dict[str, Any] = {"type": kind}
    if kind == "volume":
        out["name"] = entry["name"]
        out["device"] = entry["device"]
        if entry.get("mount-point"):
            out["mount-point"] = entry["mount-point"]
        out["generate"] = bool(entry.get("generate"))
    elif kind in ("env", "secret-file"):
        out["name"] = entry["name"]
        out["keys"] = sorted(entry["values"])
    elif kind == "raw":
        out["guid"] = str(entry["guid"])
    return out


def resolve_secrets(
    entries: Sequence[Mapping[str, Any]], previous: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The stored form of ``entries``: JSON-ready, generated passphrases filled in.

    A volume with ``generate: true`` keeps the passphrase it had in ``previous``
    (same volume name, also generated), so it stays the same for every launch.
    """
    kept = {
        entry["name"]: entry["passphrase"]
        for entry in previous
        if entry["type"] == "volume" and entry.get("generate")
    }
    stored: list[dict[str, Any]] = []
    for entry in entries:
        item = dict(entry)
        if item["type"] == "volume" and item.get("generate"):
            item["passphrase"] = kept.get(item["name"]) or generate_passphrase()
        if item["type"] == "raw":
            item["guid"] = str(item["guid"])
            data = item["data"]
            item["data"] = base64.b64encode(data).decode() if isinstance(data, bytes) else data
        stored.append(item)
    return stored


def payload_document(user_id: str, stored: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The in-guest payload (schemas/guest-payload-v1.schema.json)."""
    doc: dict[str, Any] = {"version": PAYLOAD_VERSION, "user_id": user_id}
    env = {e["name"]: dict(e["values"]) for e in stored if e["type"] == "env"}
    secret = {e["name"]: dict(e["values"]) for e in stored if e["type"] == "secret-file"}
    if env:
        doc["env"] = env
    if secret:
        doc["secret"] = secret
    volumes: dict[str, Any] = {}
    for entry in stored:
        if entry["type"] != "volume":
            continue
        volume = {"device": entry["device"], "passphrase": entry["passphrase"]}
        if entry.get("mount-point"):
            volume["mount_point"] = entry["mount-point"]
        volumes[entry["name"]] = volume
    doc["volumes"] = volumes
    return doc


def secret_table(
    user_id: str, stored: Sequence[Mapping[str, Any]], *, max_size: int | None = None
) -> bytes:
    """The EFI secret table delivered to the guest (``SecretTooLarge`` past ``max_size``)."""
    entries = [SecretEntry(guid, data) for guid, data in payload_entries(user_id, stored)]
    return build_secret_table(entries, max_size=max_size)


def payload_entries(user_id: str, stored: Sequence[Mapping[str, Any]]) -> list[tuple[UUID, bytes]]:
    """The secret-table entries, in table order: payload, LUKS key, raw entries."""
    payload = json.dumps(
        payload_document(user_id, stored), separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    out: list[tuple[UUID, bytes]] = [(PAYLOAD_GUID, payload)]
    for entry in stored:
        if entry["type"] == "luks-passphrase":
            out.append((LUKS_GUID, entry["passphrase"].encode("utf-8") + b"\x00"))
    for entry in stored:
        if entry["type"] == "raw":
            out.append((UUID(entry["guid"]), base64.b64decode(entry["data"])))
    return out
