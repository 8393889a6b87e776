"""A flipped byte anywhere in a signed region fails with a precise error.

``tests/sev/test_chain.py`` flips header and key bytes of the platform certificates and
``tests/sev/test_certs.py`` checks single signatures. Here every signature slot in use and
the pinned ARK/ASK are flipped through the whole chain verification, which must fail at
the link of the tampered certificate (a flip that breaks the layout is a ParseError).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.certs import AmdCaCertificate, SevCertificate
from attestd.sev.chain import PlatformChain, builtin_anchors, check_chain, verify_chain
from tests.conftest import TESTDATA

PLATFORM = TESTDATA / "sev" / "platform"
ANCHORS = builtin_anchors()
SLOT = (0x414, 0x61C)  # the two 0x208-byte signature slots of an SEV certificate
SLOT_SIZE = 0x208


def _chain(gen: str) -> PlatformChain:
    read = lambda name: (PLATFORM / gen / name).read_bytes()  # noqa: E731
    return PlatformChain.from_export(
        read("pdh.cert"), read("pek.cert") + read("oca.cert") + read("cek.cert")
    )


def _offsets(start: int) -> list[int]:
    """Usage, algorithm and the first signature bytes in full, then every 13th byte."""
    return [*range(start, start + 24), *range(start + 24, start + SLOT_SIZE, 13)]


# (certificate, slot index, the link that must be reported)
USED_SLOTS = [
    ("pdh", 0, "PDH is not signed by the PEK"),
    ("pek", 0, "PEK is not signed by the OCA"),
    ("pek", 1, "PEK is not signed by the CEK"),
    ("oca", 0, "OCA is not self-signed"),
    ("cek", 0, "CEK is not signed by"),
]


@pytest.mark.parametrize("gen", ["naples", "rome"])
@pytest.mark.parametrize(("role", "slot", "link"), USED_SLOTS)
def test_flipped_signature_byte_fails_at_its_link(
    gen: str, role: str, slot: int, link: str
) -> None:
    chain = _chain(gen)
    assert check_chain(chain, ANCHORS).ok
    data = getattr(chain, role).pack()
    rejected = 0
    for offset in _offsets(SLOT[slot]):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        try:
            tampered = SevCertificate.unpack(bytes(flipped))
        except ParseError:
            rejected += 1
            continue
        with pytest.raises(ChainInvalid) as info:
            verify_chain(replace(chain, **{role: tampered}), ANCHORS)
        assert info.value.message.startswith(link), (hex(offset), info.value.message)
    assert rejected < 8  # nearly every flip reaches the signature check


@pytest.mark.parametrize("role", ["ark", "ask"])
def test_flipped_byte_in_a_pinned_root_fails_at_its_link(role: str) -> None:
    """A tampered ARK or ASK never anchors the real chain.

    ``TrustAnchor.check`` (run when an anchor is loaded, and by the chain walk for the
    anchor whose ASK signed the CEK) names the root link for every flip. In the chain
    walk a flip in the ASK's own key shows earlier, as the CEK link: that ASK no longer
    verifies the CEK.
    """
    naples = next(a for a in ANCHORS if a.name == "naples")
    chain = _chain("naples")
    data = getattr(naples, role).pack()
    own_link = {"ark": "the naples ARK is not self-signed", "ask": "the naples ASK is not signed"}
    usage = f"the naples {role.upper()} has usage"
    key = range(0x40, 0x240)  # Naples (RSA-2048): exponent and modulus, 256 bytes each
    checked = 0
    for offset in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        try:
            tampered = AmdCaCertificate.unpack(bytes(flipped))
        except ParseError:
            continue
        anchor = replace(naples, **{role: tampered})
        with pytest.raises(ChainInvalid) as info:
            anchor.check()
        assert info.value.message.startswith((own_link[role], usage)), hex(offset)
        with pytest.raises(ChainInvalid) as info:
            verify_chain(chain, [anchor])
        text = info.value.message
        if role == "ask" and offset in key:
            assert text == "CEK is not signed by any trusted ASK (tried: naples)", hex(offset)
        else:
            assert text.startswith((own_link[role], usage)), (hex(offset), text)
        checked += 1
    assert checked >= 260  # of 278 offsets; the rest break the header layout (ParseError)
