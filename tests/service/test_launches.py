"""The launch use-cases without Flask: maintenance, statements per pair, the verified-chain
cache, the decision order."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from attestd.config import Settings
from attestd.errors import (
    ChainInvalid,
    Conflict,
    MeasurementMismatch,
    PolicyViolation,
    StorageKeyError,
)
from attestd.service.factory import Services, build_services
from attestd.service.launches import LaunchSession, ValidateRequest
from attestd.service.registration import LuksPassphrase, Registration
from attestd.sev.certs import SEV_CERT_SIZE
from attestd.sim.platform import SimulatedPlatform
from tests.api.simhost import Boot, measure
from tests.servicefix import Clock

VM = "6f1d3a2c-9b8e-4f7a-8c6d-5e4b3a291807"
OTHER_VM = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"


def _register(services: Services, owner_name: str, uuid: str, ovmf: bytes, **extra: Any) -> None:
    token = services.principals.create_owner(owner_name)
    owner = services.principals.authenticate_owner(token)
    registration = Registration(
        scheme="amd-sev",
        policy=1,
        firmware_hashes=(hashlib.sha256(ovmf).hexdigest(),),
        secrets=(LuksPassphrase("correct horse"),),
        **extra,
    )
    services.vms.register(owner, uuid, registration)


def _begin(services: Services, platform: SimulatedPlatform, uuid: str) -> LaunchSession:
    exp = platform.export()
    return services.launches.begin(
        uuid, pdh=exp.pdh, cert_chain=exp.cert_chain, cpu_id=exp.chip_id, cek=exp.signed_cek
    )


def _grant(session: LaunchSession) -> dict[str, Any]:
    return {
        "launch-id": session.launch_id,
        "session": base64.b64encode(session.session).decode(),
        "owner-cert": base64.b64encode(session.owner_cert).decode(),
        "policy": session.policy,
    }


def _request(
    platform: SimulatedPlatform, session: LaunchSession, measurement: bytes, **claims: Any
) -> ValidateRequest:
    values: dict[str, Any] = {
        "api_major": platform.api_major,
        "api_minor": platform.api_minor,
        "build_id": platform.build_id,
        "policy": session.policy,
        "launch_id": session.launch_id,
        "measurement": measurement,
    }
    values.update(claims)
    return ValidateRequest(**values)


def test_expired_launch_keys_are_purged_by_maintenance_not_by_launch(
    services: Services, clock: Clock, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(services, "alice", VM, ovmf)
    first = _begin(services, platform, VM)
    clock.now += services.settings.launch_ttl + 1
    _begin(services, platform, VM)  # no purge on the request path any more
    record = services.store.launch(first.launch_id)
    assert record is not None and record.keys_enc is not None
    report = services.upkeep.run()
    assert report.purged_keys == 1
    purged = services.store.launch(first.launch_id)
    assert purged is not None and purged.keys_enc is None, "expired TEK/TIK still stored"


def test_retention_deletes_old_launches_and_events_only(
    services: Services, clock: Clock, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(services, "alice", VM, ovmf)
    done = _begin(services, platform, VM)
    _handle, measurement = measure(platform, _grant(done), Boot(firmware=ovmf))
    services.launches.validate(VM, _request(platform, done, measurement))
    abandoned = _begin(services, platform, VM)
    days = services.settings.retention_launch_days
    clock.now += days * 86400 + services.settings.launch_ttl + 1
    fresh = _begin(services, platform, VM)
    report = services.upkeep.run(batch=1)  # batches of one: the loop drains them all
    assert report.deleted_launches == 2 and report.deleted_events == 0
    assert services.store.launch(done.launch_id) is None
    assert services.store.launch(abandoned.launch_id) is None
    assert services.store.launch(fresh.launch_id) is not None
    alice = services.store.sole_vm(VM)
    assert alice is not None
    kept = services.store.events(alice.owner_id, VM)
    assert len(kept) == 5  # registered, three launches, one validate: younger than a year
    clock.now += services.settings.retention_event_days * 86400
    assert services.upkeep.run().deleted_events == 4  # all but the fresh launch's
    (left,) = services.store.events(alice.owner_id, VM)
    assert left.launch_id == fresh.launch_id


def test_a_pair_makes_four_transactions_and_nine_statements(
    services: Services, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(services, "alice", VM, ovmf)
    seen: list[str] = []
    # Database.observe sees the fast path's statements as well as the Core path's
    with services.store.observe(lambda sql, _params: seen.append(sql.split()[0].upper())):  # type: ignore[attr-defined]
        session = _begin(services, platform, VM)
        _handle, measurement = measure(platform, _grant(session), Boot(firmware=ovmf))
        services.launches.validate(VM, _request(platform, session, measurement))
    work = [s for s in seen if s != "BEGIN"]
    # /launch: the VM with its pending launches, then budget + launch + event; /validate:
    # claim + VM, then the release (VM row locked, launch, event)
    assert seen.count("BEGIN") == 4, seen
    assert len(work) == 9, work


def test_chain_cache_is_keyed_by_the_pinned_oca(
    services: Services, platform: SimulatedPlatform, rogue_platform: SimulatedPlatform, ovmf: bytes
) -> None:
    right_oca = platform.export().cert_chain[0x824:0x1048]
    other_oca = rogue_platform.export().cert_chain[0x824:0x1048]
    _register(services, "alice", VM, ovmf, cloud_cert=right_oca)
    _begin(services, platform, VM)  # verified with the right pinned OCA: now cached
    _register(services, "bob", OTHER_VM, ovmf, cloud_cert=other_oca)
    try:
        _begin(services, platform, OTHER_VM)
    except ChainInvalid:
        pass
    else:
        raise AssertionError("a chain verified for one pinned OCA was accepted for another")


@pytest.mark.parametrize("broken", ["foreign-pek", "pinned-foreign-oca"])
@responses.activate
def test_a_broken_local_link_is_refused_before_kds_is_asked(
    host_settings: Settings,
    clock: Clock,
    platform: SimulatedPlatform,
    rogue_platform: SimulatedPlatform,
    ovmf: bytes,
    broken: str,
) -> None:
    """No CEK from the host: every link that needs no AMD key is checked before AMD KDS is
    asked for the signed CEK (``responses`` has no URL registered: a request would fail)."""
    online = build_services(
        host_settings.replace(kds_offline=False, kds_url="https://kds.test"), clock=clock
    )
    try:
        exp = platform.export()
        rogue = rogue_platform.export()
        chain = exp.cert_chain
        extra: dict[str, Any] = {}
        if broken == "foreign-pek":  # the PDH is not signed by this PEK, nor the PEK by the CEK
            chain = rogue.cert_chain[:SEV_CERT_SIZE] + chain[SEV_CERT_SIZE:]
        else:  # the owner pinned an OCA that did not sign the PEK
            extra["cloud_cert"] = rogue.cert_chain[SEV_CERT_SIZE : 2 * SEV_CERT_SIZE]
        _register(online, "alice", VM, ovmf, **extra)
        with pytest.raises(ChainInvalid):
            online.launches.begin(VM, pdh=exp.pdh, cert_chain=chain, cpu_id=exp.chip_id, cek=None)
        assert len(responses.calls) == 0, "AMD KDS was asked before the local links were checked"
    finally:
        online.store.dispose()


def test_firmware_minimums_are_checked_after_the_hmac(
    services: Services, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(services, "alice", VM, ovmf, min_build_id=platform.build_id + 1)
    # the honest report: the HMAC verifies, then the decision refuses the old build
    session = _begin(services, platform, VM)
    _handle, measurement = measure(platform, _grant(session), Boot(firmware=ovmf))
    try:
        services.launches.validate(VM, _request(platform, session, measurement))
    except PolicyViolation as exc:
        assert any("build" in r for r in exc.reasons)
    else:
        raise AssertionError("a build below the minimum was accepted")
    # a host lying about the build is caught by the HMAC, before any minimum is compared
    session = _begin(services, platform, VM)
    _handle, measurement = measure(platform, _grant(session), Boot(firmware=ovmf))
    lie = _request(platform, session, measurement, build_id=platform.build_id + 1)
    try:
        services.launches.validate(VM, lie)
    except MeasurementMismatch:
        pass
    else:
        raise AssertionError("a forged build id was not caught by the measurement HMAC")


def test_a_claimed_version_is_not_judged_before_the_hmac(
    services: Services, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    # the real build meets the minimum; the host claims an older one: the claim is not
    # trusted for a decision (policy_violation) but refused as an unproved measurement
    _register(services, "alice", VM, ovmf, min_build_id=platform.build_id)
    session = _begin(services, platform, VM)
    _handle, measurement = measure(platform, _grant(session), Boot(firmware=ovmf))
    lie = _request(platform, session, measurement, build_id=platform.build_id - 1)
    with pytest.raises(MeasurementMismatch):
        services.launches.validate(VM, lie)


@pytest.fixture(scope="module")
def old_firmware() -> SimulatedPlatform:
    """A platform on firmware API 0.16: its HMAC does not cover version and build."""
    return SimulatedPlatform.create(name="sim-api-0-16", api_major=0, api_minor=16, rsa_bits=2048)


@pytest.fixture
def old_services(
    host_settings: Settings, clock: Clock, old_firmware: SimulatedPlatform, tmp_path: Path
) -> Iterator[Services]:
    anchors = tmp_path / "old-anchors"
    old_firmware.write_trust_anchor(anchors)
    built = build_services(host_settings.replace(trust_anchors_dir=anchors), clock=clock)
    yield built
    built.store.dispose()


@pytest.mark.parametrize(
    "minimum", [{"min_build_id": 0}, {"min_api_major": 0, "min_api_minor": 1}, {}]
)
def test_minimum_versions_refuse_firmware_below_api_0_17(
    old_services: Services, old_firmware: SimulatedPlatform, ovmf: bytes, minimum: dict[str, int]
) -> None:
    """Below API 0.17 the version is the host's claim: a registration with any minimum
    refuses it (even one the claim meets); one without minimums accepts it."""
    _register(old_services, "alice", VM, ovmf, **minimum)
    session = _begin(old_services, old_firmware, VM)
    _handle, measurement = measure(old_firmware, _grant(session), Boot(firmware=ovmf))
    request = _request(old_firmware, session, measurement)
    if not minimum:
        assert old_services.launches.validate(VM, request).ciphertext
        return
    with pytest.raises(PolicyViolation) as refused:
        old_services.launches.validate(VM, request)
    assert any("does not authenticate its version" in r for r in refused.value.reasons)


# -- crash-consistent launches -----------------------------------------------------------


def test_a_claim_whose_worker_died_lapses_after_the_lease(
    services: Services, clock: Clock, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    _register(services, "alice", VM, ovmf)
    session = _begin(services, platform, VM)
    _handle, measurement = measure(platform, _grant(session), Boot(firmware=ovmf))
    # a worker claimed the launch, then was SIGKILLed before it answered
    assert services.store.claim_launch(VM, session.launch_id, clock.now).claimed
    request = _request(platform, session, measurement)
    with pytest.raises(Conflict) as busy:
        services.launches.validate(VM, request)
    assert busy.value.retry_after is not None  # the host learns when to retry
    clock.now += services.settings.validate_lease + 1
    assert services.launches.validate(VM, request).ciphertext  # not stuck in validating
    with pytest.raises(Conflict):
        services.launches.validate(VM, request)  # and still released only once


def test_a_retryable_failure_does_not_burn_the_launch(
    services: Services, platform: SimulatedPlatform, ovmf: bytes
) -> None:
    from attestd.storage.keys import add_primary_key, retire_old_keys

    _register(services, "alice", VM, ovmf)
    session = _begin(services, platform, VM)
    _handle, measurement = measure(platform, _grant(session), Boot(firmware=ovmf))
    key_file = services.settings.effective_storage_key_file
    saved = key_file.read_bytes()
    add_primary_key(key_file)
    retire_old_keys(key_file)  # the stored launch keys cannot be opened: a 503
    request = _request(platform, session, measurement)
    with pytest.raises(StorageKeyError):
        services.launches.validate(VM, request)
    key_file.write_bytes(saved)  # the operator restores the key file
    assert services.launches.validate(VM, request).ciphertext
