"""Test helpers: a secret-table builder (sev-protocol.md section 8), payloads, runners."""

from __future__ import annotations

import json
import struct
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attestd.guest.payload import PAYLOAD_GUID
from attestd.guest.runner import Completed, SubprocessRunner

HEADER_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
CHEAP_PBKDF = ("--pbkdf-memory=1024", "--pbkdf-parallel=1", "--pbkdf-force-iterations=4")


def build_table(entries: Sequence[tuple[str | uuid.UUID, bytes]]) -> bytes:
    """Header, GUIDed entries back to back, zero padding to a multiple of 16."""
    body = b"".join(
        uuid.UUID(str(g)).bytes_le + struct.pack("<I", 20 + len(d)) + d for g, d in entries
    )
    table = HEADER_GUID.bytes_le + struct.pack("<I", 20 + len(body)) + body
    return table + bytes(-len(table) % 16)


def payload_doc(**volumes: dict[str, Any]) -> dict[str, Any]:
    """A valid payload v1 with the given volumes."""
    return {
        "version": 1,
        "user_id": "owner-42",
        "env": {"app.env": {"APP_MODE": "production", "QUOTE": 'a "b" $c'}},
        "secret": {"credentials.env": {"DB_PASSWORD": "s3cret"}},
        "volumes": volumes,
    }


def payload_bytes(doc: dict[str, Any]) -> bytes:
    """Compact JSON, as the service writes it."""
    return json.dumps(doc, separators=(",", ":")).encode()


def payload_table(doc: dict[str, Any]) -> bytes:
    """A secret table holding ``doc`` as the attestd payload entry."""
    return build_table([(PAYLOAD_GUID, payload_bytes(doc))])


class RecordingRunner:
    """Records every call; answers from a fixed table (default: exit 0)."""

    def __init__(self, answers: dict[tuple[str, ...], int] | None = None) -> None:
        self.calls: list[tuple[tuple[str, ...], bytes | None, bytes | None]] = []
        self.answers = answers or {}

    def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, key_fd: bytes | None = None
    ) -> Completed:
        self.calls.append((tuple(argv), stdin, key_fd))
        code = next((c for p, c in self.answers.items() if tuple(argv[: len(p)]) == p), 0)
        return Completed(tuple(argv), code, b"", b"")


def sh(*argv: str, stdin: bytes | None = None) -> str:
    """Run a helper command (test setup), fail loudly."""
    out = subprocess.run(argv, input=stdin, capture_output=True, check=True)
    return out.stdout.decode()


def luks_format_file(path: Path, key: bytes, size_mib: int = 48) -> None:
    """A new LUKS2 file with cheap PBKDF, ``key`` in slot 0."""
    with path.open("wb") as fh:
        fh.truncate(size_mib << 20)
    sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "argon2id",
       *CHEAP_PBKDF, "--key-file=-", str(path), stdin=key)  # fmt: skip


class LoopMapperRunner(SubprocessRunner):
    """The real runner, except ``cryptsetup open`` (no device-mapper on the test host).

    ``open`` still proves the passphrase with ``open --test-passphrase``, then maps
    the LUKS2 data segment (plain, not decrypted) onto a loop device linked as
    ``<mapper_dir>/<name>``, so the rest of the real flow (mkfs, fsck, resize2fs,
    mount) runs on it.
    """

    def __init__(self, mapper_dir: Path) -> None:
        super().__init__()
        self.mapper_dir = mapper_dir
        self.loops: list[str] = []
        self.calls: list[tuple[str, ...]] = []

    def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, key_fd: bytes | None = None
    ) -> Completed:
        self.calls.append(tuple(argv))
        if list(argv[:2]) != ["cryptsetup", "open"] or "--test-passphrase" in argv:
            return super().run(argv, stdin=stdin, key_fd=key_fd)
        device, name = argv[-2], argv[-1]
        test = [*argv[:2], "--test-passphrase", *argv[2:-1]]
        checked = super().run(test, stdin=stdin)
        if not checked.ok:
            return checked
        meta = json.loads(sh("cryptsetup", "luksDump", "--dump-json-metadata", device))
        offset = meta["segments"]["0"]["offset"]
        loop = sh("losetup", "--find", "--show", "--offset", offset, device).strip()
        self.loops.append(loop)
        self.mapper_dir.mkdir(parents=True, exist_ok=True)
        (self.mapper_dir / name).symlink_to(loop)
        return Completed(tuple(argv), 0, b"", b"")

    def close_all(self) -> None:
        """Detach loops and remove mapper links (a simulated reboot)."""
        for link in list(self.mapper_dir.glob("*")) if self.mapper_dir.is_dir() else []:
            link.unlink()
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
        self.loops.clear()
