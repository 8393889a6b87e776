"""The AMD SEV key derivation function (sev-protocol.md §5.2).

NIST SP 800-108 in counter mode with HMAC-SHA256 as the PRF, except that the
32-bit counter and the 32-bit output length are **little-endian**:
``K_i = HMAC(key, u32le(i) || label || 0x00 || context || u32le(L_bits))``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

_U32 = struct.Struct("<I")
_PRF_LEN = hashlib.sha256().digest_size


def kdf(key: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """Derive ``length`` bytes from ``key`` for ``label`` and ``context``."""
    if length <= 0:
        raise ValueError("KDF output length must be positive")
    suffix = label + b"\x00" + context + _U32.pack(length * 8)
    blocks = -(-length // _PRF_LEN)
    out = b"".join(
        hmac.new(key, _U32.pack(i) + suffix, hashlib.sha256).digest() for i in range(1, blocks + 1)
    )
    return out[:length]
