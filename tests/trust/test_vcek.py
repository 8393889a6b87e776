"""The VCEK store: cache by (product, chip id, TCB), AMD KDS mocked with ``responses``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from attestd.config import Settings
from attestd.errors import CekRequired, CekUnavailable, ParseError
from attestd.sev.snp.certs import SnpCertificate
from attestd.sim.snp import SnpPlatform
from attestd.trust.vcek import VcekKey, VcekStore

KDS = "https://kds.test"


@pytest.fixture(scope="module")
def chip() -> SnpPlatform:
    return SnpPlatform.create(name="vcek-chip")


@pytest.fixture(scope="module")
def key(chip: SnpPlatform) -> VcekKey:
    return VcekKey.of_certificate(SnpCertificate.from_der(chip.vcek))


def url(key: VcekKey) -> str:
    return KDS + key.query()


def test_key_and_query(key: VcekKey, chip: SnpPlatform) -> None:
    assert key.hw_id == chip.chip_id
    assert key.query() == (
        f"/vcek/v1/Milan/{chip.chip_id.hex()}?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219"
    )


@responses.activate
def test_fetched_once_then_cached(tmp_path: Path, key: VcekKey, chip: SnpPlatform) -> None:
    responses.get(url(key), body=chip.vcek)
    store = VcekStore(tmp_path, base_url=KDS)
    assert store.get(key) == chip.vcek
    assert VcekStore(tmp_path, base_url=KDS, offline=True).get(key) == chip.vcek
    assert len(responses.calls) == 1


def test_offline_without_a_cached_vcek_then_import(
    tmp_path: Path, key: VcekKey, chip: SnpPlatform
) -> None:
    store = VcekStore(tmp_path, base_url=KDS, offline=True)
    with pytest.raises(CekRequired, match="attestd snp vcek import"):
        store.get(key)
    assert store.import_vcek(chip.vcek) == key
    assert store.get(key) == chip.vcek
    with pytest.raises(ParseError):
        store.import_vcek(chip.ask)  # not a VCEK


@responses.activate
def test_from_settings_uses_the_vcek_store_dir_and_kds_settings(
    tmp_path: Path, key: VcekKey, chip: SnpPlatform
) -> None:
    settings = Settings(data_dir=tmp_path, kds_url=KDS + "/", kds_offline=True)
    offline = VcekStore.from_settings(settings)
    with pytest.raises(CekRequired, match="offline"):
        offline.get(key)  # no request: ``responses`` would refuse an unregistered URL
    responses.get(url(key), body=chip.vcek)
    online = VcekStore.from_settings(settings, offline=False)  # the CLI's ``vcek fetch``
    assert online.get(key) == chip.vcek
    assert (settings.vcek_store_dir / key.filename).read_bytes() == chip.vcek
    assert offline.get(key) == chip.vcek
    assert VcekStore.from_settings(settings.replace(kds_offline=False)).offline is False


@responses.activate
def test_failures_are_remembered(tmp_path: Path, key: VcekKey) -> None:
    responses.get(url(key), status=500)
    now = [0.0]
    store = VcekStore(tmp_path, base_url=KDS, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(CekUnavailable, match="HTTP 500"):
            store.get(key)
    assert len(responses.calls) == 1
    now[0] += 61
    with pytest.raises(CekUnavailable):
        store.get(key)
    assert len(responses.calls) == 2


@responses.activate
def test_timeouts_and_a_vcek_of_another_chip_are_unavailable(
    tmp_path: Path, key: VcekKey, chip: SnpPlatform
) -> None:
    other = SnpPlatform.create(name="other-chip")
    responses.get(url(key), body=other.vcek)
    with pytest.raises(CekUnavailable, match="another chip"):
        VcekStore(tmp_path, base_url=KDS).get(key)
    assert not list(tmp_path.iterdir())
    responses.replace(responses.GET, url(key), body=requests.Timeout())
    with pytest.raises(CekUnavailable, match="in time"):
        VcekStore(tmp_path, base_url=KDS).get(key)


@responses.activate
def test_single_flight_per_key(tmp_path: Path, key: VcekKey, chip: SnpPlatform) -> None:
    def slow(_request: Any) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.3)
        return 200, {}, chip.vcek

    responses.add_callback(responses.GET, url(key), callback=slow)
    store = VcekStore(tmp_path, base_url=KDS)
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(store.get(key))) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [chip.vcek] * 5
    assert len(responses.calls) == 1
