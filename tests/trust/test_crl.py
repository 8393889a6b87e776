"""The CRL store: verified before cached, no rollback, KDS (``responses``) off the request
path with single flight and a bounded wait, offline import."""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from attestd.config import Settings
from attestd.errors import CekUnavailable, ChainInvalid, Conflict, ParseError
from attestd.sev.snp.certs import builtin_snp_anchors
from attestd.sim.snp import SnpPlatform
from attestd.trust.crl import CrlStore

KDS = "https://kds.test"
CRL_URL = f"{KDS}/vcek/v1/Milan/crl"
UTC = datetime.UTC


@pytest.fixture(scope="module")
def chip() -> SnpPlatform:
    """A simulated platform whose anchor is called ``milan``: the store asks KDS for it."""
    return SnpPlatform.create(name="milan", rsa_bits=2048)


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def test_import_verifies_with_a_trusted_ark_and_never_rolls_back(
    tmp_path: Path, chip: SnpPlatform
) -> None:
    store = CrlStore(tmp_path, base_url=KDS, offline=True)
    anchor = chip.anchor()
    with pytest.raises(ChainInvalid, match="not issued and signed by any trusted ARK"):
        store.import_crl(chip.crl(), builtin_snp_anchors())
    with pytest.raises(ParseError):
        store.import_crl(b"junk", [anchor])
    assert store.cached(anchor) is None
    newer = chip.crl(revoke=("ask",))
    path, crl = store.import_crl(newer, [*builtin_snp_anchors(), anchor])
    assert path == tmp_path / "crl-milan.der" and path.read_bytes() == newer
    assert store.cached(anchor) == crl and crl.revokes(anchor.ask)
    older = chip.crl(this_update=crl.this_update - datetime.timedelta(days=1))
    with pytest.raises(Conflict, match="is newer"):
        store.import_crl(older, [anchor])
    assert path.read_bytes() == newer


def test_a_cached_file_not_signed_by_the_ark_is_ignored(tmp_path: Path, chip: SnpPlatform) -> None:
    other = SnpPlatform.create(name="milan", rsa_bits=2048)
    (tmp_path / "crl-milan.der").write_bytes(other.crl())
    assert CrlStore(tmp_path, base_url=KDS).cached(chip.anchor()) is None
    (tmp_path / "crl-milan.der").write_bytes(b"junk")
    assert CrlStore(tmp_path, base_url=KDS).cached(chip.anchor()) is None


@responses.activate
def test_fetched_from_kds_when_none_is_cached(tmp_path: Path, chip: SnpPlatform) -> None:
    responses.get(CRL_URL, body=chip.crl())
    store = CrlStore(tmp_path, base_url=KDS)
    crl = store.current(chip.anchor(), now())
    assert crl is not None and crl.fresh_at(now())
    assert (tmp_path / "crl-milan.der").read_bytes() == crl.der
    assert store.current(chip.anchor(), now()) == crl
    assert len(responses.calls) == 1


@responses.activate
def test_kds_answers_that_are_not_the_arks_crl_are_not_cached(
    tmp_path: Path, chip: SnpPlatform
) -> None:
    other = SnpPlatform.create(name="milan", rsa_bits=2048)
    store = CrlStore(tmp_path, base_url=KDS)
    for body, status, message in (
        (other.crl(), 200, "the milan ARK did not sign"),
        (b"junk", 200, "unusable CRL"),
        (b"", 404, "has no Milan CRL"),
        (b"x" * (2 * 1024 * 1024), 200, "larger than a Milan CRL"),
        (b"", 503, "HTTP 503"),
    ):
        responses.reset()
        responses.get(CRL_URL, body=body, status=status)
        with pytest.raises(CekUnavailable, match=message):
            store.fetch(chip.anchor())
        assert not (tmp_path / "crl-milan.der").exists()
    responses.reset()
    responses.get(CRL_URL, body=requests.ConnectTimeout())
    with pytest.raises(CekUnavailable, match="did not answer in time"):
        store.fetch(chip.anchor())


@responses.activate
def test_kds_failure_leaves_no_crl_and_is_remembered(tmp_path: Path, chip: SnpPlatform) -> None:
    responses.get(CRL_URL, status=500)
    store = CrlStore(tmp_path, base_url=KDS, negative_ttl=60)
    assert store.current(chip.anchor(), now()) is None
    assert store.current(chip.anchor(), now()) is None
    assert len(responses.calls) == 1  # the failure is remembered


@responses.activate
def test_from_settings_uses_the_vcek_store_dir_and_kds_settings(
    tmp_path: Path, chip: SnpPlatform
) -> None:
    settings = Settings(data_dir=tmp_path, kds_url=KDS + "/", kds_offline=True)
    offline = CrlStore.from_settings(settings)
    assert offline.current(chip.anchor(), now()) is None  # no request: ``responses`` refuses
    responses.get(CRL_URL, body=chip.crl())
    online = CrlStore.from_settings(settings, offline=False)  # the CLI's ``crl fetch``
    online.fetch(chip.anchor())
    assert online.path_for(chip.anchor()) == settings.vcek_store_dir / "crl-milan.der"
    assert offline.current(chip.anchor(), now()) is not None
    assert len(responses.calls) == 1
    assert CrlStore.from_settings(settings.replace(kds_offline=False)).offline is False


def test_offline_and_extra_anchors_use_the_cache_only(tmp_path: Path, chip: SnpPlatform) -> None:
    store = CrlStore(tmp_path, base_url="http://127.0.0.1:9", offline=True)
    assert store.current(chip.anchor(), now()) is None
    extra = SnpPlatform.create(name="sim-extra", rsa_bits=2048)
    online = CrlStore(tmp_path, base_url="http://127.0.0.1:9")
    assert online.current(extra.anchor(), now()) is None  # KDS serves no CRL for it
    with pytest.raises(CekUnavailable, match="serves no CRL for the sim-extra anchor"):
        online.fetch(extra.anchor())


def test_single_flight_and_bounded_wait(tmp_path: Path, chip: SnpPlatform) -> None:
    """Eight requests, one slow KDS download: each waits at most ``wait`` seconds."""
    release = threading.Event()
    calls: list[str] = []

    def slow(request: Any) -> tuple[int, dict[str, str], bytes]:
        calls.append(request.url)
        release.wait(10)
        return 200, {}, chip.crl()

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.GET, CRL_URL, callback=slow)
        store = CrlStore(tmp_path, base_url=KDS, wait=0.3)
        results: list[object] = []
        started = time.monotonic()
        threads = [
            threading.Thread(target=lambda: results.append(store.current(chip.anchor(), now())))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert time.monotonic() - started < 3
        assert results == [None] * 8 and len(calls) == 1
        release.set()
        deadline = time.monotonic() + 5
        while store.cached(chip.anchor()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.current(chip.anchor(), now()) is not None
        assert len(calls) == 1


@responses.activate
def test_refreshed_in_the_background_before_it_expires(tmp_path: Path, chip: SnpPlatform) -> None:
    """A CRL fresh for less than a day is answered at once and replaced behind the request."""
    issued = now() - datetime.timedelta(days=6, hours=12)  # next update in 12 hours
    store = CrlStore(tmp_path, base_url=KDS, offline=True)
    store.import_crl(chip.crl(this_update=issued.replace(microsecond=0)), [chip.anchor()])
    old = store.cached(chip.anchor())
    newer = chip.crl()
    responses.get(CRL_URL, body=newer)
    online = CrlStore(tmp_path, base_url=KDS)
    assert online.current(chip.anchor(), now()) == old  # not waited for
    deadline = time.monotonic() + 5
    while (tmp_path / "crl-milan.der").read_bytes() != newer and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "crl-milan.der").read_bytes() == newer
    assert len(responses.calls) == 1


@responses.activate
def test_a_stale_crl_is_answered_when_kds_cannot_refresh_it(
    tmp_path: Path, chip: SnpPlatform
) -> None:
    stale = now() - datetime.timedelta(days=30)
    CrlStore(tmp_path, base_url=KDS, offline=True).import_crl(
        chip.crl(this_update=stale.replace(microsecond=0)), [chip.anchor()]
    )
    responses.get(CRL_URL, status=500)
    crl = CrlStore(tmp_path, base_url=KDS).current(chip.anchor(), now())
    assert crl is not None and not crl.fresh_at(now())  # the caller decides
