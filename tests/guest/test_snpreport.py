"""SNP report sources: the /dev/sev-guest ABI, configfs-tsm's file protocol, the simulated PSP."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from attestd.guest import snpreport
from attestd.guest.snpreport import (
    ReportError,
    SevGuestSource,
    SimulatorSource,
    SnpExtReportReq,
    SnpGuestRequestIoctl,
    SnpReportReq,
    SnpReportResp,
    TsmSource,
)
from attestd.sev.snp.report import AttestationReport
from attestd.sim.snp import ReportRequest
from attestd.sim.snp_psp import UnixPsp, answer
from tests.guest.snpfake import FakeTsmKernel
from tests.sev.snp.vectors import sim_platform

DATA = bytes(range(64))
LAUNCH = ReportRequest(report_data=bytes(64), measurement=b"M" * 48, host_data=b"H" * 32)


def test_sev_guest_structures_follow_linux_uapi() -> None:
    """include/uapi/linux/sev-guest.h: sizes, offsets and the ioctl numbers."""
    assert ctypes.sizeof(SnpReportReq) == 96
    assert (SnpReportReq.vmpl.offset, SnpReportReq.rsvd.offset) == (64, 68)
    assert ctypes.sizeof(SnpReportResp) == 4000
    assert ctypes.sizeof(SnpExtReportReq) == 112  # 96 + u64 + u32, padded to 8
    assert (SnpExtReportReq.certs_address.offset, SnpExtReportReq.certs_len.offset) == (96, 104)
    assert ctypes.sizeof(SnpGuestRequestIoctl) == 32
    offsets = [getattr(SnpGuestRequestIoctl, f).offset for f in ("msg_version", "req_data",
               "resp_data", "exitinfo2")]  # fmt: skip
    assert offsets == [0, 8, 16, 24]
    # _IOWR('S', 0x0 / 0x2, struct snp_guest_request_ioctl)
    assert snpreport.SNP_GET_REPORT == 0xC0205300
    assert snpreport.SNP_GET_EXT_REPORT == 0xC0205302


def test_report_response_parsing() -> None:
    report = sim_platform().report(LAUNCH)
    resp = struct.pack("<II24x", 0, 0x4A0) + report
    assert snpreport.parse_report_response(resp.ljust(4000, b"\0")) == report
    with pytest.raises(ReportError, match="status 0x16"):
        snpreport.parse_report_response(struct.pack("<II24x", 0x16, 0).ljust(4000, b"\0"))
    with pytest.raises(ReportError, match="100-byte"):
        snpreport.parse_report_response(struct.pack("<II24x", 0, 100).ljust(4000, b"\0"))


def test_sev_guest_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="cannot open"):
        SevGuestSource(tmp_path / "sev-guest").get(DATA)


def kernel(tmp_path: Path) -> FakeTsmKernel:
    return FakeTsmKernel(tmp_path / "report", sim_platform(), LAUNCH)


def test_tsm_protocol(tmp_path: Path) -> None:
    fake = kernel(tmp_path)
    evidence = TsmSource(fake.root, fs=fake, privlevel=0).get(DATA)
    parsed = AttestationReport.unpack(evidence.report)
    assert parsed.report_data == DATA and evidence.host_data == b"H" * 32
    assert evidence.cert_table == sim_platform().cert_table()
    assert fake.calls == [
        "mkdir", "read provider", "write privlevel", "write inblob", "read generation",
        "read outblob", "read auxblob", "read generation", "rmdir",
    ]  # fmt: skip
    assert fake.entries == {}


def test_tsm_generation_race_is_refused_and_entry_removed(tmp_path: Path) -> None:
    fake = kernel(tmp_path)

    def race(k: FakeTsmKernel, entry: Path, name: str) -> None:
        if name == "outblob":  # another process writes inblob between our reads
            k.write(entry / "inblob", b"other")

    fake.on_read = race
    with pytest.raises(ReportError, match="generation"):
        TsmSource(fake.root, fs=fake).get(DATA)
    assert fake.entries == {}


def test_tsm_wrong_provider(tmp_path: Path) -> None:
    fake = kernel(tmp_path)
    fake.provider = "tdx_guest"
    with pytest.raises(ReportError, match="tdx_guest"):
        TsmSource(fake.root, fs=fake).get(DATA)
    assert fake.entries == {}


def test_tsm_on_a_plain_directory_fails_clearly(tmp_path: Path) -> None:
    """Outside configfs nothing produces outblob: a clear error, nothing left behind."""
    (tmp_path / "report").mkdir()
    with pytest.raises(ReportError, match="provider does not exist"):
        TsmSource(tmp_path / "report").get(DATA)
    assert list((tmp_path / "report").iterdir()) == []


@pytest.mark.hw
def test_tsm_on_real_hardware() -> None:  # pragma: no cover - needs an SEV-SNP guest
    if not snpreport.TSM_DIR.is_dir():
        pytest.skip("no configfs-tsm here (not an SEV-SNP guest)")
    evidence = TsmSource().get(DATA)
    assert evidence.report_data == DATA


@pytest.mark.hw
def test_sev_guest_on_real_hardware() -> None:  # pragma: no cover - needs an SEV-SNP guest
    if not snpreport.SEV_GUEST_DEV.exists():
        pytest.skip("no /dev/sev-guest here (not an SEV-SNP guest)")
    evidence = SevGuestSource().get(DATA)
    assert evidence.report_data == DATA


def test_simulated_psp_over_a_unix_socket(tmp_path: Path) -> None:
    with UnixPsp(tmp_path / "psp.sock", sim_platform(), LAUNCH) as psp:
        evidence = SimulatorSource(tmp_path / "psp.sock").get(DATA)
        assert psp.requests == 1
    assert evidence.report_data == DATA and evidence.cert_table == sim_platform().cert_table()


def test_simulated_psp_refusal_and_framing() -> None:
    bad = ReportRequest(report_data=bytes(64), measurement=b"M" * 48, policy=0x10000)
    refusal = answer(sim_platform(), bad, b"SNPQ" + DATA)
    with pytest.raises(ReportError, match=r"refused: .*bit 17"):
        snpreport.read_sim_answer(_reader(refusal))
    with pytest.raises(ReportError, match="refused: malformed"):
        snpreport.read_sim_answer(_reader(answer(sim_platform(), LAUNCH, b"XXXX" + DATA)))
    with pytest.raises(ReportError, match="early"):
        snpreport.read_sim_answer(_reader(answer(sim_platform(), LAUNCH, b"SNPQ" + DATA)[:100]))


def _reader(data: bytes) -> snpreport._Reader:
    view = bytearray(data)

    def read(size: int) -> bytes:
        chunk = bytes(view[:size])
        del view[:size]
        return chunk

    return read


def test_choose(tmp_path: Path) -> None:
    paths = (tmp_path / "tsm", tmp_path / "dev", tmp_path / "sim")

    def choose(kind: str = "auto") -> snpreport.ReportSource:
        return snpreport.choose(kind, tsm_dir=paths[0], device=paths[1], sim=paths[2])

    with pytest.raises(ReportError, match="no SNP report source"):
        choose()
    (tmp_path / "sim").touch()
    assert isinstance(choose(), SimulatorSource)
    (tmp_path / "dev").touch()
    assert isinstance(choose(), SevGuestSource)
    (tmp_path / "tsm").mkdir()
    assert isinstance(choose(), TsmSource)
    assert isinstance(choose("sim"), SimulatorSource)
    with pytest.raises(ReportError, match="unknown report source"):
        choose("tpm")
