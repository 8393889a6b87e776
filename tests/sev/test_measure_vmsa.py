"""SEV-ES VMSA pages: layout, flavours and the sevctl known-answer pages."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from attestd.errors import ParseError, Unsupported
from attestd.sev.measure.ovmf import Ovmf
from attestd.sev.measure.vmsa import (
    BSP_RESET_EIP,
    VMSA_SIZE,
    SevEsSaveArea,
    VmcbSeg,
    VmsaFlavour,
    build_vmsa,
    cpu_signature,
    vcpu_signature,
    vmsa_pages,
)

SEVCTL = "sev/kat/sevctl"
FIRMWARE = f"{SEVCTL}/OVMF.amdsev.fd_trimmed_edk2-ovmf-20220126gitbb1bba3d77-4.el9"


def test_sizes_asserted_at_import() -> None:
    assert ctypes.sizeof(SevEsSaveArea) == VMSA_SIZE == 4096
    assert ctypes.sizeof(VmcbSeg) == 16
    # Offsets from Linux asm/svm.h (static_asserts there).
    assert SevEsSaveArea.efer.offset == 0xD0
    assert SevEsSaveArea.rip.offset == 0x178
    assert SevEsSaveArea.g_pat.offset == 0x268
    assert SevEsSaveArea.rdx.offset == 0x310
    assert SevEsSaveArea.sev_features.offset == 0x3B0
    assert SevEsSaveArea.xcr0.offset == 0x3E8
    assert SevEsSaveArea.x87_dp.offset == 0x400
    assert SevEsSaveArea.fpreg_ymm.offset == 0x570


def test_cpu_signatures() -> None:
    # AMD's published CPUID Fn0000_0001_EAX values.
    assert vcpu_signature("EPYC-v4") == 0x00800F12
    assert vcpu_signature("EPYC-Rome") == 0x00830F10
    assert vcpu_signature("EPYC-Milan") == 0x00A00F11
    assert vcpu_signature("EPYC-Genoa") == 0x00A10F10
    assert cpu_signature(6, 0x55, 7) == 0x00050657


def test_unknown_vcpu_type_and_bad_signature_inputs() -> None:
    with pytest.raises(Unsupported, match="EPYC-Milan"):
        vcpu_signature("Skylake-Server")
    with pytest.raises(ParseError):
        cpu_signature(23, 256, 0)
    with pytest.raises(ParseError):
        cpu_signature(23, 1, 16)
    with pytest.raises(ParseError):
        build_vmsa(1 << 32, 0)
    with pytest.raises(ParseError):
        build_vmsa(BSP_RESET_EIP, -1)


@pytest.mark.parametrize("index", [0, 1])
def test_sevctl_kat_pages_are_the_legacy_flavour(testdata: Path, index: int) -> None:
    """sevctl's vmsa{0,1}.bin (EPYC-Milan, pre-6.10 host) reproduce byte for byte."""
    expected = (testdata / SEVCTL / f"vmsa{index}.bin").read_bytes()
    ap_eip = Ovmf.from_bytes((testdata / FIRMWARE).read_bytes()).sev_es_reset_eip
    assert ap_eip is not None
    pages = vmsa_pages(2, ap_eip, vcpu_signature("EPYC-Milan"), VmsaFlavour.LEGACY)
    assert pages[index] == expected
    assert pages[index] != vmsa_pages(2, ap_eip, 0x00A00F11, VmsaFlavour.CURRENT)[index]


def test_flavours_differ_only_in_mxcsr_and_fcw() -> None:
    legacy = build_vmsa(0x80B004, 0x00800F12, VmsaFlavour.LEGACY)
    current = build_vmsa(0x80B004, 0x00800F12, VmsaFlavour.CURRENT)
    diff = [i for i in range(VMSA_SIZE) if legacy[i] != current[i]]
    assert diff == [0x408, 0x409, 0x410, 0x411]
    area = SevEsSaveArea.from_buffer_copy(current)
    assert (area.mxcsr, area.x87_fcw) == (0x1F80, 0x37F)
    legacy_area = SevEsSaveArea.from_buffer_copy(legacy)
    assert (legacy_area.mxcsr, legacy_area.x87_fcw) == (0, 0)


def test_bsp_and_ap_reset_addresses() -> None:
    bsp, ap, ap2 = vmsa_pages(3, 0x80B004, 0x00800F12)
    assert ap is ap2
    b = SevEsSaveArea.from_buffer_copy(bsp)
    a = SevEsSaveArea.from_buffer_copy(ap)
    assert (b.cs.base, b.rip) == (0xFFFF0000, 0xFFF0)
    assert (a.cs.base, a.rip) == (0x800000, 0xB004)
    assert b.rdx == a.rdx == 0x00800F12
    assert b.sev_features == 0


def test_vcpu_count_must_be_positive() -> None:
    assert len(vmsa_pages(1, 0, 0)) == 1
    with pytest.raises(ParseError):
        vmsa_pages(0, 0x80B004, 0)
