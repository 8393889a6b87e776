"""Guest policy word: flags, minimum API version, reserved bits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ParseError
from attestd.sev.policy import GuestPolicy, PolicyFlags, policy_bytes


def test_decodes_flags_and_minimum_version() -> None:
    policy = GuestPolicy.from_u32(0x3712_0005)
    assert policy.flags == PolicyFlags.NODBG | PolicyFlags.ES
    assert (policy.api_major, policy.api_minor) == (0x12, 0x37)
    assert policy.sev_es
    assert policy.to_u32() == 0x3712_0005
    assert policy.to_bytes() == b"\x05\x00\x12\x37" == policy_bytes(0x3712_0005)
    assert GuestPolicy.from_bytes(policy.to_bytes()) == policy


@pytest.mark.parametrize("bit", range(6, 16))
def test_reserved_bits_are_refused(bit: int) -> None:
    with pytest.raises(ParseError):
        GuestPolicy.from_u32(1 << bit)


def test_out_of_range_values_are_refused() -> None:
    for value in (-1, 1 << 32):
        with pytest.raises(ParseError):
            GuestPolicy.from_u32(value)
    with pytest.raises(ParseError):
        GuestPolicy(PolicyFlags.NODBG, 256, 0)
    with pytest.raises(ParseError):
        GuestPolicy.from_bytes(b"\x01\x00\x00")


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=0xFFFF_FFFF))
def test_valid_words_round_trip_exactly(value: int) -> None:
    try:
        policy = GuestPolicy.from_u32(value)
    except ParseError:
        assert value & 0xFFC0
    else:
        assert policy.to_u32() == value
