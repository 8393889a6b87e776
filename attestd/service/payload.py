"""The in-guest payload and the EFI secret table built from a VM's stored secrets.

The payload document is ``schemas/guest-payload-v1.schema.json`` (a test validates
what this module builds against it); the table order is payload, GRUB LUKS key,
raw entries. :func:`resolve_secrets` turns registered secrets into their stored
form (generated passphrases created once and kept across ``PUT``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from attestd.service.registration import generate_passphrase
from attestd.sev.secrets import (
    ATTESTD_PAYLOAD_GUID,
    LUKS_KEY_GUID,
    SecretEntry,
    build_secret_table,
)

PAYLOAD_VERSION = 1
PAYLOAD_GUID = ATTESTD_PAYLOAD_GUID
LUKS_GUID = LUKS_KEY_GUID


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
