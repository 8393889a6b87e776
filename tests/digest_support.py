"""Test helpers shared by the launch-digest tests (not product code)."""

from __future__ import annotations

import hashlib
import hmac


def launch_measure(
    tik: bytes,
    *,
    api_major: int,
    api_minor: int,
    build_id: int,
    policy: int,
    launch_digest: bytes,
    mnonce: bytes,
) -> bytes:
    """LAUNCH_MEASURE HMAC in the API >= 0.17 form (sev-protocol.md §6), for oracle input."""
    msg = (
        bytes([0x04, api_major, api_minor, build_id])
        + policy.to_bytes(4, "little")
        + launch_digest
        + mnonce
    )
    return hmac.new(tik, msg, hashlib.sha256).digest()
