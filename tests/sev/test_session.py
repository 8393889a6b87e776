"""LAUNCH_START session: the virtee KAT, the firmware-side unwrap and tampering."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import AttestationFailed, ParseError
from attestd.sev.certs import SEV_CERT_SIZE, Algorithm, SevCertificate, Usage
from attestd.sev.kdf import kdf
from attestd.sev.session import (
    SESSION_SIZE,
    LaunchMeasurement,
    SessionBlob,
    TransportKeys,
    generate_godh_key,
    open_session,
    shared_secret,
    start_launch,
    wrap_session,
)
from tests.sev.session_kat import vectors


def _counter_rng(seed: int = 0) -> Callable[[int], bytes]:
    state = hashlib.sha256(seed.to_bytes(4, "little")).digest()

    def rng(n: int) -> bytes:
        nonlocal state
        out = b""
        while len(out) < n:
            state = hashlib.sha256(state).digest()
            out += state
        return out[:n]

    return rng


def test_session_known_answer(testdata: Path) -> None:
    cases = vectors(testdata, "session")
    assert cases
    for case in cases:
        keys = TransportKeys(bytes.fromhex(case["tek_hex"]), bytes.fromhex(case["tik_hex"]))
        blob = wrap_session(
            bytes.fromhex(case["z_hex"]),
            bytes.fromhex(case["nonce_hex"]),
            bytes.fromhex(case["wrap_iv_hex"]),
            keys,
            case["policy_u32"],
        )
        expected = case["expected"]
        assert blob.wrap_tk.hex() == expected["wrap_tk_hex"]
        assert blob.wrap_mac.hex() == expected["wrap_mac_hex"]
        assert blob.policy_mac.hex() == expected["policy_mac_hex"]
        packed = blob.pack()
        assert len(packed) == SESSION_SIZE == 0x80
        assert packed[0x10:0x30].hex() == expected["wrap_tk_hex"]
        assert packed[0x40:0x60].hex() == expected["wrap_mac_hex"]
        assert packed[0x60:0x80].hex() == expected["policy_mac_hex"]
        assert SessionBlob.unpack(packed) == blob


def test_wrap_follows_the_spec_formulas() -> None:
    """Recompute every field from sev-protocol.md §5.1 with the primitives directly."""
    z, nonce, iv = b"\x11" * 48, b"\x22" * 16, b"\x33" * 16
    keys = TransportKeys(b"\x44" * 16, b"\x55" * 16)
    blob = wrap_session(z, nonce, iv, keys, 0x0005_0001)
    master = kdf(z, b"sev-master-secret", nonce, 16)
    kek, kik = kdf(master, b"sev-kek", b"", 16), kdf(master, b"sev-kik", b"", 16)
    enc = Cipher(algorithms.AES(kek), modes.CTR(iv)).encryptor()
    wrap_tk = enc.update(keys.tek + keys.tik) + enc.finalize()
    assert blob.wrap_tk == wrap_tk
    assert blob.wrap_mac == hmac.new(kik, wrap_tk, "sha256").digest()
    assert blob.policy_mac == hmac.new(keys.tik, b"\x01\x00\x05\x00", "sha256").digest()


def _pair() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())


def test_ecdh_is_symmetric_and_big_endian_x() -> None:
    pdh, godh = _pair()
    z = shared_secret(godh, pdh.public_key())
    assert z == shared_secret(pdh, godh.public_key())
    point = ec.derive_private_key(godh.private_numbers().private_value, ec.SECP384R1()).exchange(
        ec.ECDH(), pdh.public_key()
    )
    assert len(z) == 48 and z == point


def test_ecdh_rejects_other_curves() -> None:
    pdh = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ParseError):
        shared_secret(ec.generate_private_key(ec.SECP384R1()), pdh.public_key())


def test_firmware_side_unwraps_the_keys() -> None:
    pdh, godh = _pair()
    keys = TransportKeys.generate()
    blob = wrap_session(shared_secret(godh, pdh.public_key()), b"\x01" * 16, b"\x02" * 16, keys, 1)
    assert open_session(pdh, godh.public_key(), blob.pack(), 1) == keys


@pytest.mark.parametrize("offset", [0x00, 0x0F, 0x10, 0x2F, 0x30, 0x3F, 0x40, 0x5F, 0x60, 0x7F])
def test_any_flipped_session_byte_is_refused(offset: int) -> None:
    pdh, godh = _pair()
    keys = TransportKeys.generate()
    blob = wrap_session(shared_secret(godh, pdh.public_key()), b"\x01" * 16, b"\x02" * 16, keys, 1)
    tampered = bytearray(blob.pack())
    tampered[offset] ^= 0x01
    with pytest.raises(AttestationFailed):
        open_session(pdh, godh.public_key(), bytes(tampered), 1)


def test_changed_policy_is_refused() -> None:
    pdh, godh = _pair()
    keys = TransportKeys.generate()
    blob = wrap_session(shared_secret(godh, pdh.public_key()), b"\x01" * 16, b"\x02" * 16, keys, 1)
    with pytest.raises(AttestationFailed, match="policy MAC"):
        open_session(pdh, godh.public_key(), blob.pack(), 0)


def test_wrong_pdh_is_refused() -> None:
    pdh, godh = _pair()
    blob = wrap_session(
        shared_secret(godh, pdh.public_key()),
        b"\x01" * 16,
        b"\x02" * 16,
        TransportKeys.generate(),
        1,
    )
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(AttestationFailed, match="wrap MAC"):
        open_session(other, godh.public_key(), blob.pack(), 1)


def test_reserved_policy_bits_are_refused() -> None:
    with pytest.raises(ParseError):
        wrap_session(b"z", b"\x00" * 16, b"\x00" * 16, TransportKeys.generate(), 0x40)


def test_godh_key_comes_from_the_rng() -> None:
    a = generate_godh_key(_counter_rng(1))
    b = generate_godh_key(_counter_rng(1))
    c = generate_godh_key(_counter_rng(2))
    assert a.private_numbers() == b.private_numbers()
    assert a.private_numbers() != c.private_numbers()
    assert isinstance(a.curve, ec.SECP384R1)


def test_transport_keys_layout_and_repr() -> None:
    keys = TransportKeys(b"E" * 16, b"I" * 16)
    assert keys.to_bytes() == b"E" * 16 + b"I" * 16
    assert TransportKeys.from_bytes(keys.to_bytes()) == keys
    assert "EEEE" not in repr(keys) and "IIII" not in repr(keys)
    with pytest.raises(ParseError):
        TransportKeys(b"E" * 15, b"I" * 16)
    with pytest.raises(ParseError):
        TransportKeys.from_bytes(b"x" * 31)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=0x100))
def test_session_blob_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        blob = SessionBlob.unpack(data)
    except ParseError:
        assert len(data) != SESSION_SIZE
    else:
        assert blob.pack() == data


@pytest.mark.parametrize(
    ("layout", "what", "size"),
    [(SessionBlob, "session blob", SESSION_SIZE), (LaunchMeasurement, "launch measurement", 48)],
)
def test_truncated_or_extended_layouts_name_what_and_the_size(
    layout: type[SessionBlob | LaunchMeasurement], what: str, size: int
) -> None:
    """The exact-length check of attestd.sev._binary, with its one message."""
    for data in (bytes(size - 1), bytes(size + 1), b""):
        with pytest.raises(ParseError, match=f"^{what}: expected {size} bytes, got {len(data)}$"):
            layout.unpack(data)
    assert layout.unpack(bytes(size)).pack() == bytes(size)


def test_start_launch_end_to_end_with_the_firmware_side() -> None:
    pdh = ec.generate_private_key(ec.SECP384R1())
    launch = start_launch(pdh.public_key(), 0x0001_0005)
    assert len(launch.godh_cert) == SEV_CERT_SIZE and len(launch.session) == SESSION_SIZE
    cert = SevCertificate.unpack(launch.godh_cert)
    assert (cert.version, cert.usage, cert.algorithm) == (1, Usage.PDH, Algorithm.ECDH_SHA256)
    assert all(slot.is_empty for slot in cert.signatures)
    assert cert.pack() == launch.godh_cert
    keys = open_session(pdh, cert.public_key(), launch.session, 0x0001_0005)
    assert keys == launch.keys
    assert launch.policy == 0x0001_0005
    assert launch.keys.tek.hex() not in repr(launch) and str(launch.keys.tek) not in repr(launch)


def test_start_launch_is_fresh_per_launch_and_driven_by_the_rng() -> None:
    pdh = ec.generate_private_key(ec.SECP384R1()).public_key()
    a, b = start_launch(pdh, 1), start_launch(pdh, 1)
    assert a.godh_cert != b.godh_cert and a.session != b.session and a.keys != b.keys
    c, d = start_launch(pdh, 1, rng=_counter_rng(7)), start_launch(pdh, 1, rng=_counter_rng(7))
    assert c == d


def test_start_launch_refuses_bad_inputs() -> None:
    with pytest.raises(ParseError):
        start_launch(ec.generate_private_key(ec.SECP384R1()).public_key(), 0x80)
    with pytest.raises(ParseError):
        start_launch(ec.generate_private_key(ec.SECP256R1()).public_key(), 1)
