"""The simulated firmware: minted chain, LAUNCH_* state machine, refusals, persistence."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestd.sev.certs import (
    SEV_CERT_SIZE,
    AmdCaCertificate,
    SevCertificate,
    Usage,
    ecdh_cert_for_godh,
)
from attestd.sev.secrets import (
    LUKS_KEY_GUID,
    SecretEntry,
    _seal_launch_secret,
    build_secret_table,
    parse_secret_table,
)
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    TransportKeys,
    compute_measure,
    start_launch,
)
from attestd.sim import SevFirmwareError
from attestd.sim.platform import GuestState, SimulatedPlatform

FIRMWARE = bytes(range(256)) * 64  # 16 KiB of "firmware"
SEV, SEV_ES = 0x0001, 0x0005


def _status(exc: pytest.ExceptionInfo[SevFirmwareError]) -> str:
    return exc.value.status.name


def _pdh(platform: SimulatedPlatform) -> ec.EllipticCurvePublicKey:
    return SevCertificate.unpack(platform.export().pdh).public_key()


def _started(platform: SimulatedPlatform, policy: int = SEV) -> tuple[int, bytes, bytes]:
    launch = start_launch(_pdh(platform), policy)
    handle = platform.launch_start(launch.godh_cert, launch.session, policy)
    return handle, launch.keys.tek, launch.keys.tik


def test_minted_chain_has_the_shape_of_real_firmware(platform: SimulatedPlatform) -> None:
    export = platform.export()
    assert len(export.pdh) == SEV_CERT_SIZE and len(export.cert_chain) == 3 * SEV_CERT_SIZE
    assert len(export.chip_id) == 64
    pek, oca, cek = (
        SevCertificate.unpack(export.cert_chain[i : i + SEV_CERT_SIZE])
        for i in range(0, 3 * SEV_CERT_SIZE, SEV_CERT_SIZE)
    )
    pdh, signed_cek = SevCertificate.unpack(export.pdh), SevCertificate.unpack(export.signed_cek)
    assert [c.usage for c in (pek, oca, cek, pdh)] == [Usage.PEK, Usage.OCA, Usage.CEK, Usage.PDH]
    ark, ask = platform.ark, platform.ask
    assert ark.usage is Usage.ARK and ark.is_signed_by(ark) and ark.modulus_size == 4096
    assert ask.usage is Usage.ASK and ask.is_signed_by(ark) and not ark.is_signed_by(ask)
    assert not cek.is_signed_by(ask), "the exported CEK must be unsigned, like real firmware"
    assert all(slot.is_empty for slot in cek.signatures)
    assert signed_cek.is_signed_by(ask) and signed_cek.body == cek.body
    assert oca.is_signed_by(oca) and pek.is_signed_by(oca) and pek.is_signed_by(cek)
    assert pdh.is_signed_by(pek) and not pdh.is_signed_by(cek)
    assert AmdCaCertificate.unpack(ark.pack()) == ark


def test_trust_anchor_directory_layout(platform: SimulatedPlatform, tmp_path: Path) -> None:
    target = platform.write_trust_anchor(tmp_path / "anchors")
    assert target == tmp_path / "anchors" / "simtest"
    assert AmdCaCertificate.unpack((target / "ark.cert").read_bytes()) == platform.ark
    assert AmdCaCertificate.unpack((target / "ask.cert").read_bytes()) == platform.ask


def test_measurement_is_the_firmware_formula(platform: SimulatedPlatform) -> None:
    handle, _, tik = _started(platform)
    platform.launch_update_data(handle, FIRMWARE)
    platform.launch_update_data(handle, b"\x5a" * 32)
    blob = LaunchMeasurement.unpack(platform.launch_measure(handle))
    digest = hashlib.sha256(FIRMWARE + b"\x5a" * 32).digest()
    assert blob.measure == compute_measure(tik, platform.version, SEV, digest, blob.mnonce)
    assert platform.guest_state(handle) is GuestState.LSECRET


def test_fresh_mnonce_per_launch(platform: SimulatedPlatform) -> None:
    nonces = set()
    for _ in range(3):
        handle, _, _ = _started(platform)
        platform.launch_update_data(handle, FIRMWARE)
        nonces.add(LaunchMeasurement.unpack(platform.launch_measure(handle)).mnonce)
    assert len(nonces) == 3


def test_configurable_version_including_the_old_form(platform: SimulatedPlatform) -> None:
    platform.api_major, platform.api_minor, platform.build_id = 0, 16, 3
    handle, _, tik = _started(platform)
    platform.launch_update_data(handle, FIRMWARE)
    blob = LaunchMeasurement.unpack(platform.launch_measure(handle))
    digest = hashlib.sha256(FIRMWARE).digest()
    old = FirmwareVersion(0, 16, 3)
    assert blob.measure == compute_measure(tik, old, SEV, digest, blob.mnonce)
    assert blob.measure != compute_measure(tik, FirmwareVersion(0, 17, 3), SEV, digest, blob.mnonce)


def test_sev_es_needs_vmsas(platform: SimulatedPlatform) -> None:
    handle, _, tik = _started(platform, SEV_ES)
    platform.launch_update_data(handle, FIRMWARE)
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_measure(handle)
    assert _status(info) == "INVALID_GUEST_STATE"
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_update_vmsa(handle, b"\x00" * 4095)
    assert _status(info) == "INVALID_LENGTH"
    vmsa0, vmsa1 = b"\x01" * 4096, b"\x02" * 4096
    platform.launch_update_vmsa(handle, vmsa0)
    platform.launch_update_vmsa(handle, vmsa1)
    blob = LaunchMeasurement.unpack(platform.launch_measure(handle))
    digest = hashlib.sha256(FIRMWARE + vmsa0 + vmsa1).digest()
    assert blob.measure == compute_measure(tik, platform.version, SEV_ES, digest, blob.mnonce)

    plain, _, _ = _started(platform, SEV)
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_update_vmsa(plain, vmsa0)
    assert _status(info) == "INVALID_PARAM"


def _godh_variants(platform: SimulatedPlatform) -> dict[str, tuple[bytes, str]]:
    good = start_launch(_pdh(platform), SEV).godh_cert
    cert = SevCertificate.unpack(good)
    p256 = ecdh_cert_for_godh(ec.generate_private_key(ec.SECP256R1()).public_key()).pack()
    off_curve = bytearray(good)
    off_curve[0x14] ^= 0x01  # qx changes, qy does not: not on P-384
    return {
        "short": (good[:-1], "INVALID_LENGTH"),
        "long": (good + b"\x00", "INVALID_LENGTH"),
        "version": (struct.pack("<I", 2) + good[4:], "INVALID_CERTIFICATE"),
        "usage": (replace(cert, usage=Usage.PEK).pack(), "INVALID_CERTIFICATE"),
        "algo": (good[:0xC] + struct.pack("<I", 2) + good[0x10:], "INVALID_CERTIFICATE"),
        "curve": (p256, "INVALID_CERTIFICATE"),
        "point": (bytes(off_curve), "INVALID_CERTIFICATE"),
        "reserved": (good[:0x100] + b"\x01" + good[0x101:], "INVALID_CERTIFICATE"),
    }


@pytest.mark.parametrize(
    "case", ["short", "long", "version", "usage", "algo", "curve", "point", "reserved"]
)
def test_bad_godh_certificates_are_refused(platform: SimulatedPlatform, case: str) -> None:
    godh, status = _godh_variants(platform)[case]
    session = start_launch(_pdh(platform), SEV).session
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_start(godh, session, SEV)
    assert _status(info) == status
    assert platform.handles() == []


def test_session_and_policy_tampering_is_refused(platform: SimulatedPlatform) -> None:
    launch = start_launch(_pdh(platform), SEV)
    cases = {
        "INVALID_LENGTH": (launch.session[:-1], SEV),
        "INVALID_PARAM": (launch.session, SEV | 0x40),
        "POLICY_FAILURE": (launch.session, SEV | (1 << 16) | (56 << 24)),
    }
    for status, (session, policy) in cases.items():
        with pytest.raises(SevFirmwareError) as info:
            platform.launch_start(launch.godh_cert, session, policy)
        assert _status(info) == status
    for offset in range(0, 0x80, 7):
        tampered = bytearray(launch.session)
        tampered[offset] ^= 0x80
        with pytest.raises(SevFirmwareError) as info:
            platform.launch_start(launch.godh_cert, bytes(tampered), SEV)
        assert _status(info) == "BAD_MEASUREMENT"
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_start(launch.godh_cert, launch.session, SEV | 0x02)
    assert _status(info) == "BAD_MEASUREMENT"
    other = start_launch(_pdh(platform), SEV)
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_start(other.godh_cert, launch.session, SEV)
    assert _status(info) == "BAD_MEASUREMENT"
    assert platform.handles() == []
    assert platform.launch_start(launch.godh_cert, launch.session, SEV) == 1


def test_state_machine(platform: SimulatedPlatform) -> None:
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_update_data(99, FIRMWARE)
    assert _status(info) == "INVALID_GUEST"
    handle, tek, tik = _started(platform)
    keys = TransportKeys(tek, tik)
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"k")])
    early = _seal_launch_secret(keys, b"\x00" * 32, table)
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_secret(handle, early.header, early.ciphertext)
    assert _status(info) == "INVALID_GUEST_STATE"
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_update_data(handle, b"\x00" * 15)
    assert _status(info) == "INVALID_LENGTH"
    platform.launch_update_data(handle, FIRMWARE)
    measure = LaunchMeasurement.unpack(platform.launch_measure(handle)).measure
    for call in (
        lambda: platform.launch_update_data(handle, FIRMWARE),
        lambda: platform.launch_measure(handle),
    ):
        with pytest.raises(SevFirmwareError) as info:
            call()
        assert _status(info) == "INVALID_GUEST_STATE"
    packet = _seal_launch_secret(keys, measure, table)
    platform.launch_secret(handle, packet.header, packet.ciphertext)
    assert platform.secret_table(handle) == table
    platform.launch_finish(handle)
    with pytest.raises(SevFirmwareError) as info:
        platform.launch_secret(handle, packet.header, packet.ciphertext)
    assert _status(info) == "INVALID_GUEST_STATE"


def test_launch_secret_refusals(platform: SimulatedPlatform) -> None:
    handle, tek, tik = _started(platform)
    keys = TransportKeys(tek, tik)
    platform.launch_update_data(handle, FIRMWARE)
    measure = LaunchMeasurement.unpack(platform.launch_measure(handle)).measure
    table = build_secret_table([SecretEntry(LUKS_KEY_GUID, b"secret")])
    packet = _seal_launch_secret(keys, measure, table)
    cases = {
        "header length": (packet.header[:-1], packet.ciphertext, "INVALID_LENGTH"),
        "payload length": (packet.header, packet.ciphertext[:-1], "INVALID_LENGTH"),
        "compressed": (b"\x01" + packet.header[1:], packet.ciphertext, "UNSUPPORTED"),
        # one bit flipped: setting a random byte to zero left it unchanged once in 256 runs
        "mac": (
            packet.header[:-1] + bytes([packet.header[-1] ^ 1]),
            packet.ciphertext,
            "BAD_MEASUREMENT",
        ),
        "ciphertext": (
            packet.header,
            bytes([packet.ciphertext[0] ^ 1]) + packet.ciphertext[1:],
            "BAD_MEASUREMENT",
        ),
    }
    wrong_tik = _seal_launch_secret(TransportKeys(tek, b"\x00" * 16), measure, table)
    cases["tik"] = (wrong_tik.header, wrong_tik.ciphertext, "BAD_MEASUREMENT")
    stale = _seal_launch_secret(keys, b"\x00" * 32, table)
    cases["measure"] = (stale.header, stale.ciphertext, "BAD_MEASUREMENT")
    for name, (header, ciphertext, status) in cases.items():
        with pytest.raises(SevFirmwareError) as info:
            platform.launch_secret(handle, header, ciphertext)
        assert _status(info) == status, name
    assert platform.secret_table(handle) is None
    platform.launch_secret(handle, packet.header, packet.ciphertext)
    assert parse_secret_table(platform.secret_table(handle) or b"") == [
        SecretEntry(LUKS_KEY_GUID, b"secret")
    ]


def test_state_survives_save_and_load(platform: SimulatedPlatform, sim_copy: Path) -> None:
    handle, _, tik = _started(platform)
    platform.launch_update_data(handle, FIRMWARE)
    platform.save(sim_copy)
    again = SimulatedPlatform.load(sim_copy)
    assert again.export() == platform.export()
    blob = LaunchMeasurement.unpack(again.launch_measure(handle))
    digest = hashlib.sha256(FIRMWARE).digest()
    assert blob.measure == compute_measure(tik, again.version, SEV, digest, blob.mnonce)
    again.save(sim_copy)
    third = SimulatedPlatform.load(sim_copy)
    assert third.guest_state(handle) is GuestState.LSECRET
    assert _started(third)[0] == handle + 1
    assert all((sim_copy / n).stat().st_mode & 0o077 == 0 for n in ("pdh.key", "platform.json"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target=st.sampled_from(["godh", "session"]),
    offset=st.integers(min_value=0, max_value=SEV_CERT_SIZE - 1),
    mask=st.integers(min_value=1, max_value=255),
)
def test_corrupted_launch_start_fails_only_with_firmware_errors(
    platform: SimulatedPlatform, target: str, offset: int, mask: int
) -> None:
    """A corrupted GODH cert or session never starts a launch with other keys or crashes.

    The firmware ignores the GODH signature slots and API version bytes, so a flip
    there still starts the launch, with exactly the guest owner's TEK/TIK.
    """
    launch = start_launch(_pdh(platform), SEV)
    godh, session = bytearray(launch.godh_cert), bytearray(launch.session)
    buf = godh if target == "godh" else session
    buf[offset % len(buf)] ^= mask
    before = platform.handles()
    try:
        handle = platform.launch_start(bytes(godh), bytes(session), SEV)
    except SevFirmwareError:
        assert platform.handles() == before
        return
    position = offset % len(buf)
    assert target == "godh" and (position >= SevCertificate.BODY_SIZE or position in (4, 5, 6, 7))
    platform.launch_update_data(handle, FIRMWARE)
    blob = LaunchMeasurement.unpack(platform.launch_measure(handle))
    digest = hashlib.sha256(FIRMWARE).digest()
    assert blob.measure == compute_measure(
        launch.keys.tik, platform.version, SEV, digest, blob.mnonce
    )
