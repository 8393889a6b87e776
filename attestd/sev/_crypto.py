"""Small symmetric primitives shared by the session, measurement and secret code."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CTR with the 16-byte IV as the initial counter block (encrypt == decrypt)."""
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256."""
    return hmac.new(key, msg, hashlib.sha256).digest()
