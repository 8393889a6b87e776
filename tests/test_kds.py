"""attestd.kds: signed CEKs from AMD KDS (HTTP mocked with responses), cache, offline import."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.config import Settings
from attestd.errors import CekRequired, CekUnavailable, ParseError
from attestd.sev.chain import PlatformChain, builtin_anchors, verify_chain
from attestd.trust.kds import CekStore, KdsGate, chip_id_hex, parse_chip_id, parse_signed_cek
from tests.conftest import TESTDATA

PLATFORM = TESTDATA / "sev" / "platform"
CHIP_HEX = (PLATFORM / "naos-api1.51/getid_s0_out.txt").read_text().strip()
CHIP_ID = bytes.fromhex(CHIP_HEX)
URL = f"https://kdsintf.amd.com/cek/id/{CHIP_HEX.upper()}"
SIGNED_CEK = (PLATFORM / "naples/cek.cert").read_bytes()
UNSIGNED_CEK = (PLATFORM / "naples/cek.uns.cert").read_bytes()


def store(tmp_path: Path, **kwargs: object) -> CekStore:
    return CekStore(tmp_path / "cache", **kwargs)  # type: ignore[arg-type]


def test_chip_id_forms() -> None:
    assert len(CHIP_ID) == 64
    assert chip_id_hex(CHIP_ID) == CHIP_HEX.upper()
    assert len(chip_id_hex(CHIP_ID)) == 128
    assert parse_chip_id(CHIP_HEX) == CHIP_ID
    assert parse_chip_id(CHIP_HEX.upper() + "\n") == CHIP_ID
    assert parse_chip_id(base64.b64encode(CHIP_ID)) == CHIP_ID
    assert parse_chip_id(CHIP_ID) == CHIP_ID
    for bad in ("abcd", CHIP_HEX[:-2], base64.b64encode(CHIP_ID[:32]).decode(), b"\xff\xfe"):
        with pytest.raises(ParseError):
            parse_chip_id(bad)
    with pytest.raises(ParseError):
        chip_id_hex(CHIP_ID[:63])


@responses.activate
def test_fetch_caches_and_second_get_uses_cache(tmp_path: Path) -> None:
    responses.get(URL, body=SIGNED_CEK)
    cek_store = store(tmp_path)
    assert cek_store.get(CHIP_ID).pack() == SIGNED_CEK
    assert cek_store.path_for(CHIP_ID).read_bytes() == SIGNED_CEK
    assert cek_store.path_for(CHIP_ID).name == f"{CHIP_HEX.upper()}.cek"
    assert store(tmp_path).get(CHIP_ID).pack() == SIGNED_CEK
    assert len(responses.calls) == 1
    assert responses.calls[0].request.url == URL


@responses.activate
def test_fetched_cek_anchors_the_unsigned_export(tmp_path: Path) -> None:
    responses.get(URL, body=SIGNED_CEK)
    read = lambda name: (PLATFORM / "naples" / name).read_bytes()  # noqa: E731
    chain = PlatformChain.from_export(
        read("pdh.cert"), read("pek.cert") + read("oca.cert") + UNSIGNED_CEK
    )
    verified = verify_chain(chain, builtin_anchors(), signed_cek=store(tmp_path).get(CHIP_ID))
    assert verified.generation == "naples"


@responses.activate
def test_custom_base_url_and_session(tmp_path: Path) -> None:
    responses.get(f"http://kds.test/cek/id/{CHIP_HEX.upper()}", body=SIGNED_CEK)
    session = requests.Session()
    cek_store = store(tmp_path, base_url="http://kds.test/", session=session)
    assert cek_store.get(CHIP_ID).pack() == SIGNED_CEK


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"status": 404}, "no CEK for this chip id (HTTP 404)"),
        ({"status": 503}, "HTTP 503"),
        ({"body": requests.exceptions.ConnectTimeout()}, "did not answer in time"),
        ({"body": requests.exceptions.ReadTimeout()}, "did not answer in time"),
        ({"body": requests.exceptions.ConnectionError()}, "unreachable (ConnectionError)"),
        ({"body": SIGNED_CEK + b"x"}, "larger than a CEK"),
        ({"body": UNSIGNED_CEK}, "unusable CEK: the CEK has no ASK signature"),
        ({"body": SIGNED_CEK[:100]}, "unusable CEK: SEV certificate: expected 2084 bytes"),
        ({"body": (PLATFORM / "naples/pek.cert").read_bytes()}, "not a CEK"),
    ],
)
@responses.activate
def test_kds_failures_are_cek_unavailable_and_not_cached(
    tmp_path: Path, answer: dict[str, object], message: str
) -> None:
    responses.get(URL, **answer)  # type: ignore[arg-type]
    cek_store = store(tmp_path)
    with pytest.raises(CekUnavailable) as exc:
        cek_store.get(CHIP_ID)
    assert message in exc.value.message
    assert "attestd cek import" in exc.value.message
    assert not cek_store.path_for(CHIP_ID).exists()


@responses.activate
def test_timeout_is_passed_to_requests(tmp_path: Path) -> None:
    seen: list[object] = []

    def callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        seen.append(request.req_kwargs["timeout"])  # type: ignore[attr-defined]
        return 200, {}, SIGNED_CEK

    responses.add_callback(responses.GET, URL, callback=callback)
    store(tmp_path, timeout=(1.5, 2.5)).get(CHIP_ID)
    assert seen == [(1.5, 2.5)]


@responses.activate
def test_from_settings_uses_the_cek_cache_and_kds_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kds_url="https://kds.test/", kds_offline=True)
    with pytest.raises(CekRequired, match="offline"):
        CekStore.from_settings(settings).get(CHIP_ID)  # no request: ``responses`` refuses
    responses.get(f"https://kds.test/cek/id/{CHIP_HEX.upper()}", body=SIGNED_CEK)
    CekStore.from_settings(settings, offline=False).get(CHIP_ID)
    assert (tmp_path / "cek" / f"{CHIP_HEX.upper()}.cek").read_bytes() == SIGNED_CEK
    assert CekStore.from_settings(settings).get(CHIP_ID).pack() == SIGNED_CEK


@responses.activate
def test_offline_never_touches_the_network(tmp_path: Path) -> None:
    cek_store = store(tmp_path, offline=True)
    with pytest.raises(CekRequired, match="offline"):
        cek_store.get(CHIP_ID)
    assert len(responses.calls) == 0
    cek_store.put(CHIP_ID, SIGNED_CEK)
    assert cek_store.get(CHIP_ID).pack() == SIGNED_CEK
    assert len(responses.calls) == 0


def test_import_rejects_unusable_ceks(tmp_path: Path) -> None:
    cek_store = store(tmp_path, offline=True)
    with pytest.raises(ParseError, match="no ASK signature"):
        cek_store.put(CHIP_ID, UNSIGNED_CEK)
    with pytest.raises(ParseError, match="usage PDH"):
        cek_store.put(CHIP_ID, (PLATFORM / "rome/pdh.cert").read_bytes())
    with pytest.raises(ParseError):
        cek_store.put(CHIP_ID, b"garbage")
    with pytest.raises(ParseError, match="chip id"):
        cek_store.put(CHIP_ID[:10], SIGNED_CEK)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@responses.activate
def test_corrupt_cache_entry_is_refetched(tmp_path: Path) -> None:
    responses.get(URL, body=SIGNED_CEK)
    cek_store = store(tmp_path)
    cek_store.cache_dir.mkdir(parents=True)
    cek_store.path_for(CHIP_ID).write_bytes(b"corrupt")
    assert cek_store.cached(CHIP_ID) is None
    assert cek_store.get(CHIP_ID).pack() == SIGNED_CEK
    assert cek_store.path_for(CHIP_ID).read_bytes() == SIGNED_CEK
    assert len(responses.calls) == 1


@responses.activate
def test_fetch_refreshes_the_cache(tmp_path: Path) -> None:
    rome_cek = (PLATFORM / "rome/cek.cert").read_bytes()
    responses.get(URL, body=rome_cek)
    cek_store = store(tmp_path)
    cek_store.put(CHIP_ID, SIGNED_CEK)
    assert cek_store.fetch(CHIP_ID).pack() == rome_cek
    assert cek_store.get(CHIP_ID).pack() == rome_cek
    assert [p.name for p in cek_store.cache_dir.iterdir()] == [f"{CHIP_HEX.upper()}.cek"]


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.binary(max_size=200), st.text(max_size=200), st.binary(min_size=64, max_size=64))
)
def test_chip_id_parser_raises_only_parse_error(data: bytes | str) -> None:
    try:
        chip_id = parse_chip_id(data)
    except ParseError:
        return
    assert len(chip_id) == 64


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_signed_cek_parser_raises_only_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_signed_cek(data)


# -- KdsGate: single flight, negative cache, rate limit, bounded wait --------------------


@responses.activate
def test_gate_single_flight_per_chip(tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    def slow(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        release.wait(10)
        return 200, {}, SIGNED_CEK

    responses.add_callback(responses.GET, URL, callback=slow)
    gate = KdsGate(wait=10.0)
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(gate.get(store(tmp_path), CHIP_ID).pack()))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(10)
    assert results == [SIGNED_CEK] * 4
    assert len(responses.calls) == 1


@responses.activate
def test_gate_bounded_wait_then_served_from_cache(tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    def slow(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        release.wait(10)
        return 200, {}, SIGNED_CEK

    responses.add_callback(responses.GET, URL, callback=slow)
    gate = KdsGate(wait=0.2)
    started = time.monotonic()
    with pytest.raises(CekUnavailable) as exc:
        gate.get(store(tmp_path), CHIP_ID)
    assert time.monotonic() - started < 2.0
    assert exc.value.retry_after is not None and "not answered yet" in exc.value.message
    release.set()
    deadline = time.monotonic() + 10
    while not store(tmp_path).path_for(CHIP_ID).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.get(store(tmp_path), CHIP_ID).pack() == SIGNED_CEK  # the retry: cached
    assert len(responses.calls) == 1


@responses.activate
def test_gate_negative_cache(tmp_path: Path) -> None:
    responses.get(URL, status=404)
    now = [1000.0]
    gate = KdsGate(negative_ttl=60.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(CekUnavailable) as exc:
            gate.get(store(tmp_path), CHIP_ID)
        assert "HTTP 404" in exc.value.message
    assert len(responses.calls) == 1
    now[0] += 61
    with pytest.raises(CekUnavailable):
        gate.get(store(tmp_path), CHIP_ID)
    assert len(responses.calls) == 2


@responses.activate
def test_gate_global_rate_limit(tmp_path: Path) -> None:
    responses.get(re.compile(r"https://kdsintf\.amd\.com/cek/id/.*"), status=404)
    now = [1000.0]
    gate = KdsGate(rate=0.1, burst=3, clock=lambda: now[0])
    chips = [bytes([i]) * 64 for i in range(1, 6)]
    messages = []
    for chip in chips:
        with pytest.raises(CekUnavailable) as exc:
            gate.get(store(tmp_path), chip)
        messages.append(exc.value.message)
    assert len(responses.calls) == 3  # the burst; then refused without asking KDS
    assert all("too many AMD KDS lookups" in m for m in messages[3:])
    now[0] += 10  # one token back
    with pytest.raises(CekUnavailable):
        gate.get(store(tmp_path), chips[4])
    assert len(responses.calls) == 4


def test_gate_offline_never_asks(tmp_path: Path) -> None:
    with pytest.raises(CekRequired):
        KdsGate().get(store(tmp_path, offline=True), CHIP_ID)
