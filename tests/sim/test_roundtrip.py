"""The whole guest-owner protocol against the simulated firmware, and tampering with it.

attestd verifies the simulator's chain to its trust anchor, builds a session for the
verified PDH, the simulator launches and measures real OVMF (+ kernel hashes, + VMSAs
for SEV-ES), attestd verifies the measurement against its own launch digest and
builds the secret packet, and the simulator yields the exact secret table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from attestd.errors import ChainInvalid, MeasurementMismatch
from attestd.sev.certs import SEV_CERT_SIZE, SevCertificate
from attestd.sev.chain import PlatformChain, builtin_anchors, verify_chain
from attestd.sev.measure.digest import launch_digest
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.sev_hashes import KernelHashes
from attestd.sev.measure.vmsa import vcpu_signature, vmsa_pages
from attestd.sev.secrets import (
    ATTESTD_PAYLOAD_GUID,
    LUKS_KEY_GUID,
    SecretEntry,
    _seal_launch_secret,
    build_secret_table,
    parse_secret_table,
)
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    LaunchStart,
    TransportKeys,
    start_launch,
    verify_measurement,
)
from attestd.sim import SevFirmwareError
from attestd.sim.platform import SimulatedPlatform
from attestd.trust import load_anchors

SEV, SEV_ES = 0x0001, 0x0005
CMDLINE = "console=ttyS0 root=/dev/vda1"
KERNEL, INITRD = b"\x7fELF fake kernel" * 100, b"fake initrd" * 50
ENTRIES = [
    SecretEntry(LUKS_KEY_GUID, b"luks passphrase for the root volume"),
    SecretEntry(ATTESTD_PAYLOAD_GUID, b'{"version": 1}'),
]


@pytest.fixture(scope="module")
def firmware(testdata: Path) -> bytes:
    return (testdata / "ovmf" / "OVMF.amdsev.fd").read_bytes()


def _verified_pdh(platform: SimulatedPlatform) -> SevCertificate:
    export = platform.export()
    chain = PlatformChain.from_export(export.pdh, export.cert_chain)
    verified = verify_chain(
        chain,
        (*builtin_anchors(), platform.trust_anchor()),
        signed_cek=SevCertificate.unpack(export.signed_cek),
    )
    assert verified.generation == platform.name
    return verified.pdh


@dataclass
class Host:
    """What an honest host does with the launch inputs (QEMU's part)."""

    platform: SimulatedPlatform
    firmware: bytes
    es: bool = False

    def launch(self, start: LaunchStart, policy: int | None = None) -> int:
        policy = start.policy if policy is None else policy
        handle = self.platform.launch_start(start.godh_cert, start.session, policy)
        self.platform.launch_update_data(handle, self.firmware)
        self.platform.launch_update_data(
            handle, KernelHashes.from_content(KERNEL, INITRD, CMDLINE).table()
        )
        if self.es:
            ap_eip = Ovmf.from_bytes(self.firmware).sev_es_reset_eip
            assert ap_eip is not None
            for page in vmsa_pages(2, ap_eip, vcpu_signature("EPYC-v4")):
                self.platform.launch_update_vmsa(handle, page)
        return handle


def _expected(firmware: bytes, es: bool) -> bytes:
    hashes = KernelHashes.from_content(KERNEL, INITRD, CMDLINE)
    if es:
        return launch_digest("seves", firmware, hashes=hashes, vcpus=2, vcpu_type="EPYC-v4")
    return launch_digest("sev", firmware, hashes=hashes)


@pytest.mark.parametrize("es", [False, True], ids=["sev", "sev-es"])
def test_full_round_trip(platform: SimulatedPlatform, firmware: bytes, es: bool) -> None:
    policy = SEV_ES if es else SEV
    pdh = _verified_pdh(platform)
    start = start_launch(pdh.public_key(), policy)
    handle = Host(platform, firmware, es).launch(start)

    reported = LaunchMeasurement.unpack(platform.launch_measure(handle))
    version = FirmwareVersion(platform.api_major, platform.api_minor, platform.build_id)
    expected = _expected(firmware, es)
    assert verify_measurement(start.keys.tik, reported, version, policy, [expected]) == expected

    area = Ovmf.from_bytes(firmware).secret_area
    assert area is not None
    table = build_secret_table(ENTRIES, max_size=area[1])
    packet = _seal_launch_secret(start.keys, reported.measure, table, version=version)
    platform.launch_secret(handle, packet.header, packet.ciphertext)
    assert platform.secret_table(handle) == table
    assert parse_secret_table(platform.secret_table(handle) or b"") == ENTRIES


def test_chain_refusals(platform: SimulatedPlatform, tmp_path: Path) -> None:
    export = platform.export()
    chain = PlatformChain.from_export(export.pdh, export.cert_chain)
    signed = SevCertificate.unpack(export.signed_cek)
    with pytest.raises(ChainInvalid, match="no ASK signature"):
        verify_chain(chain, (platform.trust_anchor(),))
    with pytest.raises(ChainInvalid):
        verify_chain(chain, builtin_anchors(), signed_cek=signed)
    other = SimulatedPlatform.create(name="other", rsa_bits=2048)
    with pytest.raises(ChainInvalid):
        verify_chain(chain, (other.trust_anchor(),), signed_cek=signed)
    # A host that swaps in its own PDH (to read the session) breaks the PEK->PDH link.
    fake = SevCertificate.unpack(other.export().pdh)
    with pytest.raises(ChainInvalid, match="PDH"):
        verify_chain(
            PlatformChain(fake, chain.pek, chain.oca, chain.cek),
            (platform.trust_anchor(),),
            signed_cek=signed,
        )
    # The anchor as written to disk loads as an extra trust anchor for the service.
    platform.write_trust_anchor(tmp_path / "anchors")
    anchors = load_anchors(tmp_path / "anchors")
    assert [a.name for a in anchors][-1] == platform.name
    assert verify_chain(chain, anchors, signed_cek=signed).pdh == chain.pdh


def _status(info: pytest.ExceptionInfo[SevFirmwareError]) -> str:
    return info.value.status.name


def test_tampered_launch_start_is_refused(platform: SimulatedPlatform, firmware: bytes) -> None:
    start = start_launch(_verified_pdh(platform).public_key(), SEV)
    host = Host(platform, firmware)
    with pytest.raises(SevFirmwareError) as info:
        host.launch(start, policy=SEV & ~0x1)  # host drops NODBG
    assert _status(info) == "BAD_MEASUREMENT"
    session = bytearray(start.session)
    session[0x50] ^= 0x04
    with pytest.raises(SevFirmwareError) as info:
        host.launch(LaunchStart(start.godh_cert, bytes(session), SEV, start.keys))
    assert _status(info) == "BAD_MEASUREMENT"
    bad_godh = start.godh_cert[:8] + b"\x02\x10" + start.godh_cert[10:]  # usage PEK
    with pytest.raises(SevFirmwareError) as info:
        host.launch(LaunchStart(bad_godh, start.session, SEV, start.keys))
    assert _status(info) == "INVALID_CERTIFICATE"
    assert len(start.godh_cert) == SEV_CERT_SIZE
    assert platform.handles() == []


def test_measurement_tampering_is_refused(platform: SimulatedPlatform, firmware: bytes) -> None:
    pdh = _verified_pdh(platform).public_key()
    version = FirmwareVersion(platform.api_major, platform.api_minor, platform.build_id)
    expected = _expected(firmware, es=False)

    old_start = start_launch(pdh, SEV)
    old = Host(platform, firmware).launch(old_start)
    stale = LaunchMeasurement.unpack(platform.launch_measure(old))

    start = start_launch(pdh, SEV)
    evil = Host(platform, firmware[:-16] + b"\x90" * 16)  # different firmware
    handle = evil.launch(start)
    reported = LaunchMeasurement.unpack(platform.launch_measure(handle))
    with pytest.raises(MeasurementMismatch):
        verify_measurement(start.keys.tik, reported, version, SEV, [expected])

    start = start_launch(pdh, SEV)
    handle = Host(platform, firmware).launch(start)
    reported = LaunchMeasurement.unpack(platform.launch_measure(handle))
    assert verify_measurement(start.keys.tik, reported, version, SEV, [expected]) == expected
    # A stale measurement (previous launch, old mnonce) does not verify for this launch.
    with pytest.raises(MeasurementMismatch):
        verify_measurement(start.keys.tik, stale, version, SEV, [expected])
    # Neither does the right one under a wrong TIK, a lied-about version or policy.
    with pytest.raises(MeasurementMismatch):
        verify_measurement(old_start.keys.tik, reported, version, SEV, [expected])
    lied = FirmwareVersion(version.api_major, version.api_minor, version.build_id + 1)
    with pytest.raises(MeasurementMismatch):
        verify_measurement(start.keys.tik, reported, lied, SEV, [expected])
    with pytest.raises(MeasurementMismatch):
        verify_measurement(start.keys.tik, reported, version, SEV_ES, [expected])

    # The firmware refuses secrets bound to the stale measure or made with a wrong TIK.
    table = build_secret_table(ENTRIES)
    for keys, measure in (
        (start.keys, stale.measure),
        (TransportKeys(start.keys.tek, old_start.keys.tik), reported.measure),
    ):
        packet = _seal_launch_secret(keys, measure, table)
        with pytest.raises(SevFirmwareError) as info:
            platform.launch_secret(handle, packet.header, packet.ciphertext)
        assert _status(info) == "BAD_MEASUREMENT"
    assert platform.secret_table(handle) is None
    good = _seal_launch_secret(start.keys, reported.measure, table)
    platform.launch_secret(handle, good.header, good.ciphertext)
    assert platform.secret_table(handle) == table
