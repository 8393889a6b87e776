"""Platform data: /dev/sev ioctl declarations checked against the kernel header, cache."""

from __future__ import annotations

import base64
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from attestd.errors import LaunchError, ParseError
from attestd.host import platform as plat

C_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/psp-sev.h>
int main(void) {
  printf("%zu %zu %zu %zu\n", sizeof(struct sev_issue_cmd),
         sizeof(struct sev_user_data_pdh_cert_export),
         sizeof(struct sev_user_data_get_id), sizeof(struct sev_user_data_get_id2));
  printf("%zu %zu %zu\n", offsetof(struct sev_issue_cmd, error),
         offsetof(struct sev_user_data_pdh_cert_export, cert_chain_address),
         offsetof(struct sev_user_data_pdh_cert_export, cert_chain_len));
  printf("%lu %d %d %d\n", (unsigned long)SEV_ISSUE_CMD,
         SEV_PDH_CERT_EXPORT, SEV_GET_ID, SEV_GET_ID2);
  return 0;
}
"""


def test_ioctl_layouts_match_linux_psp_sev_h(tmp_path: Path) -> None:
    """Independent oracle: the C compiler on the installed kernel UAPI header."""
    if shutil.which("gcc") is None or not Path("/usr/include/linux/psp-sev.h").exists():
        pytest.fail("gcc and linux-libc-dev are part of tools/setup's runtime packages")
    src = tmp_path / "sev.c"
    src.write_text(C_PROGRAM)
    subprocess.run(["gcc", "-o", str(tmp_path / "sev"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "sev")], capture_output=True, text=True, check=True)
    sizes, offsets, consts = (list(map(int, line.split())) for line in out.stdout.splitlines())
    assert sizes == [
        ctypes.sizeof(plat.SevIssueCmd),
        ctypes.sizeof(plat.SevUserDataPdhCertExport),
        ctypes.sizeof(plat.SevUserDataGetId),
        ctypes.sizeof(plat.SevUserDataGetId2),
    ]
    assert offsets == [
        plat.SevIssueCmd.error.offset,
        plat.SevUserDataPdhCertExport.cert_chain_address.offset,
        plat.SevUserDataPdhCertExport.cert_chain_len.offset,
    ]
    assert consts == [
        plat.SEV_ISSUE_CMD,
        plat.SEV_PDH_CERT_EXPORT,
        plat.SEV_GET_ID,
        plat.SEV_GET_ID2,
    ]


def _data() -> plat.PlatformData:
    return plat.PlatformData(
        pdh=bytes(range(256)) * 8 + b"\x01" * (0x824 - 2048),
        cert_chain=b"\x02" * (3 * 0x824),
        chip_id=b"\x03" * 64,
        cek=b"\x04" * 0x824,
        source="test",
    )


def test_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "platform.json"
    plat.write_cache(path, _data())
    assert plat.read_cache(path) == _data()
    assert path.stat().st_mode & 0o777 == 0o644


def test_missing_cache_names_the_refresh_command(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="refresh-platform"):
        plat.read_cache(tmp_path / "none.json")


def test_from_sev_info_libvirt_typed_params() -> None:
    d = _data()
    info = {
        "pdh": base64.b64encode(d.pdh).decode(),
        "cert-chain": base64.b64encode(d.cert_chain).decode(),
        "cpu0-id": base64.b64encode(d.chip_id).decode(),
        "cbitpos": 51,
    }
    got = plat.from_sev_info(info)
    assert (got.pdh, got.cert_chain, got.chip_id) == (d.pdh, d.cert_chain, d.chip_id)
    del info["cpu0-id"]
    with pytest.raises(ParseError, match="cpu0-id"):
        plat.from_sev_info(info)


@pytest.mark.parametrize("field", ["pdh", "cert_chain", "chip_id"])
def test_wrong_sizes_rejected(field: str) -> None:
    kwargs = {"pdh": b"\0" * 0x824, "cert_chain": b"\0" * (3 * 0x824), "chip_id": b"\0" * 64}
    kwargs[field] = kwargs[field][:-1] if field != "chip_id" else b""
    with pytest.raises(ParseError):
        plat.PlatformData(**kwargs)


def test_read_dev_sev_without_device_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"cannot open .*sev: No such file"):
        plat.read_dev_sev(tmp_path / "sev")


@pytest.mark.hw
def test_read_dev_sev_exports_a_chain_that_parses() -> None:
    """On an SEV host: the exported PDH is signed by the exported PEK."""
    from attestd.sev.chain import PlatformChain

    data = plat.read_dev_sev()
    chain = PlatformChain.from_export(data.pdh, data.cert_chain)
    assert chain.pdh.is_signed_by(chain.pek)
    assert len(data.chip_id) == 64
