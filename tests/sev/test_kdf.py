"""The AMD SEV KDF against the known answer and its structural properties."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from attestd.sev.kdf import kdf
from tests.sev.session_kat import vectors


def test_kdf_known_answers(testdata: Path) -> None:
    cases = vectors(testdata, "kdf")
    assert cases
    for case in cases:
        out = kdf(
            bytes.fromhex(case["key_in_hex"]),
            case["label"].encode(),
            bytes.fromhex(case["context_hex"]),
            case["out_len"],
        )
        assert out.hex() == case["expected_hex"], case["name"]


def test_counter_and_length_are_little_endian() -> None:
    key, label, ctx = b"k" * 48, b"sev-kek", b""
    first = hmac.new(
        key, b"\x01\x00\x00\x00" + label + b"\x00" + ctx + b"\x80\x00\x00\x00", "sha256"
    )
    assert kdf(key, label, ctx, 16) == first.digest()[:16]


def test_multi_block_output_concatenates_counter_blocks() -> None:
    key, label, ctx = b"\x07" * 16, b"x", b"ctx"
    length_bits = (40 * 8).to_bytes(4, "little")
    blocks = [
        hmac.new(key, i.to_bytes(4, "little") + label + b"\x00" + ctx + length_bits, hashlib.sha256)
        for i in (1, 2)
    ]
    assert kdf(key, label, ctx, 40) == (blocks[0].digest() + blocks[1].digest())[:40]


def test_inputs_separate_outputs() -> None:
    base = kdf(b"\x00" * 48, b"sev-master-secret", b"\x00" * 16, 16)
    assert kdf(b"\x00" * 48, b"sev-master-secreT", b"\x00" * 16, 16) != base
    assert kdf(b"\x00" * 48, b"sev-master-secret", b"\x00" * 15 + b"\x01", 16) != base
    assert kdf(b"\x01" + b"\x00" * 47, b"sev-master-secret", b"\x00" * 16, 16) != base


def test_rejects_empty_output() -> None:
    with pytest.raises(ValueError):
        kdf(b"k", b"l", b"", 0)
