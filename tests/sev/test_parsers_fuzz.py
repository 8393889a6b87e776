"""Random bytes into every parser raise only attestd's ParseError.

Complements the per-module property tests with the parsers they leave out (secret
packet header, policy bytes, transport keys, sevctl exports, kernel hashes tables of
any length, launch digests of mutated real firmware) and checks that whatever a
parser accepts packs back to the same bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import ParseError, Unsupported
from attestd.sev.certs import SEV_CERT_SIZE
from attestd.sev.chain import PlatformChain
from attestd.sev.measure import KernelHashes, launch_digest
from attestd.sev.measure.sev_hashes import TABLE_SIZE
from attestd.sev.policy import GuestPolicy
from attestd.sev.secrets import SECRET_TABLE_GUID, SecretHeader, parse_secret_table
from attestd.sev.session import TransportKeys
from tests.conftest import TESTDATA

SEV = TESTDATA / "sev"
_NAPLES = b"".join(
    (SEV / "platform/naples" / n).read_bytes()
    for n in ("pdh.cert", "pek.cert", "oca.cert", "cek.cert")
)
_CA = (SEV / "amd-ca-sev/naples/ask.cert").read_bytes() + (
    SEV / "amd-ca-sev/naples/ark.cert"
).read_bytes()
_AMDSEV_SUFFIX = (SEV / "kat/sev-launch-digest/ovmf_AmdSev_suffix.bin").read_bytes()


def _mutated(base: bytes, low: int = 0) -> st.SearchStrategy[bytes]:
    """``base`` with 1-4 bytes at offsets >= ``low`` replaced, or truncated/extended."""

    def apply(edits: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(base)
        for offset, value in edits:
            out[low + offset % (len(out) - low)] = value
        return bytes(out[: len(out) + cut]) if cut < 0 else bytes(out) + bytes(cut)

    edit = st.tuples(st.integers(0, len(base)), st.integers(0, 255))
    return st.builds(
        apply, st.lists(edit, min_size=1, max_size=4), st.sampled_from([0, 0, 0, -1, 1])
    )


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=120), st.binary(min_size=52, max_size=52)))
def test_secret_header_parser(data: bytes) -> None:
    try:
        header = SecretHeader.unpack(data)
    except ParseError:
        assert len(data) != 52
        return
    assert header.pack() == data


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=8), st.binary(min_size=4, max_size=4)))
def test_policy_bytes_parser(data: bytes) -> None:
    try:
        policy = GuestPolicy.from_bytes(data)
    except ParseError:
        return
    assert policy.to_bytes() == data


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_transport_keys_parser(data: bytes) -> None:
    try:
        keys = TransportKeys.from_bytes(data)
    except ParseError:
        assert len(data) != 32
        return
    assert keys.to_bytes() == data


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_secret_table_parser_on_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, SECRET_TABLE_GUID.bytes_le + data):
        try:
            parse_secret_table(candidate)
        except ParseError:
            pass


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=TABLE_SIZE + 32),
        st.binary(min_size=TABLE_SIZE, max_size=TABLE_SIZE),
        _mutated(KernelHashes.from_content(b"k", b"i", "c").table()),
    )
)
def test_kernel_hashes_table_parser(data: bytes) -> None:
    try:
        hashes = KernelHashes.from_table(data)
    except ParseError:
        return
    assert hashes.table() == data


@settings(max_examples=60, deadline=None)
@given(st.one_of(_mutated(_NAPLES), _mutated(_NAPLES + _CA, 4 * SEV_CERT_SIZE)))
def test_sevctl_export_parser(data: bytes) -> None:
    try:
        chain = PlatformChain.from_sevctl(data)
    except ParseError:
        return
    packed = b"".join(c.pack() for c in (chain.pdh, chain.pek, chain.oca, chain.cek))
    assert data.startswith(packed)


@settings(max_examples=40, deadline=None)
@given(
    _mutated(_AMDSEV_SUFFIX, len(_AMDSEV_SUFFIX) - 0x400),
    st.sampled_from(["sev", "seves"]),
)
def test_launch_digest_of_mutated_firmware_fails_closed(firmware: bytes, mode: str) -> None:
    """A corrupted footer/metadata area is ParseError, a missing feature Unsupported."""
    hashes = KernelHashes.from_content(b"kernel", None, None)
    try:
        digest = launch_digest(mode, firmware, hashes=hashes, vcpus=2)
    except (ParseError, Unsupported):
        return
    assert len(digest) == 32
