"""The in-guest payload and the EFI secret table built from a VM's stored secrets.

The payload document is ``schemas/guest-payload-v1.schema.json`` (a test validates
what this module builds against it); the table order is payload, GRUB LUKS key,
raw entries. :func:`resolve_secrets` turns registered secrets into their stored
form (generated passphrases created once and kept across ``PUT``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from attestd.service.registration import (
    EnvFile,
    LuksPassphrase,
    Raw,
    Secret,
    SecretFile,
    Volume,
    generate_passphrase,
)
from attestd.sev.secrets import (
    ATTESTD_PAYLOAD_GUID,
    LUKS_KEY_GUID,
    SecretEntry,
    build_secret_table,
)

PAYLOAD_VERSION = 1
PAYLOAD_GUID = ATTESTD_PAYLOAD_GUID
LUKS_GUID = LUKS_KEY_GUID


def resolve_secrets(entries: Sequence[Secret], previous: Sequence[Secret] = ()) -> list[Secret]:
    """The stored form of ``entries``: generated passphrases filled in.

    A volume with ``generate: true`` keeps the passphrase it had in ``previous``
    (same volume name, also generated), so it stays the same for every launch.
    """
    kept = {
        entry.name: entry.passphrase
        for entry in previous
        if isinstance(entry, Volume) and entry.generate and entry.passphrase
    }
    return [
        replace(entry, passphrase=kept.get(entry.name) or generate_passphrase())
        if isinstance(entry, Volume) and entry.generate
        else entry
        for entry in entries
    ]


def payload_document(user_id: str, stored: Sequence[Secret]) -> dict[str, Any]:
    """The in-guest payload (schemas/guest-payload-v1.schema.json)."""
    doc: dict[str, Any] = {"version": PAYLOAD_VERSION, "user_id": user_id}
    env = {e.name: dict(e.values) for e in stored if isinstance(e, EnvFile)}
    secret = {e.name: dict(e.values) for e in stored if isinstance(e, SecretFile)}
    if env:
        doc["env"] = env
    if secret:
        doc["secret"] = secret
    volumes: dict[str, Any] = {}
    for entry in stored:
        if not isinstance(entry, Volume):
            continue
        if entry.passphrase is None:
            raise ValueError(f"volume {entry.name} has no passphrase (resolve_secrets first)")
        volume = {"device": entry.device, "passphrase": entry.passphrase}
        if entry.mount_point:
            volume["mount_point"] = entry.mount_point
        volumes[entry.name] = volume
    doc["volumes"] = volumes
    return doc


def secret_table(user_id: str, stored: Sequence[Secret], *, max_size: int | None = None) -> bytes:
    """The EFI secret table delivered to the guest (``SecretTooLarge`` past ``max_size``)."""
    entries = [SecretEntry(guid, data) for guid, data in payload_entries(user_id, stored)]
    return build_secret_table(entries, max_size=max_size)


def payload_entries(user_id: str, stored: Sequence[Secret]) -> list[tuple[UUID, bytes]]:
    """The secret-table entries, in table order: payload, LUKS key, raw entries."""
    payload = json.dumps(
        payload_document(user_id, stored), separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    out: list[tuple[UUID, bytes]] = [(PAYLOAD_GUID, payload)]
    out.extend(
        (LUKS_GUID, e.passphrase.encode("utf-8") + b"\x00")
        for e in stored
        if isinstance(e, LuksPassphrase)
    )
    out.extend((e.guid, e.data) for e in stored if isinstance(e, Raw))
    return out
