"""SEV-ES initial VMSA pages as KVM/QEMU hand them to LAUNCH_UPDATE_VMSA.

The layout mirrors ``struct sev_es_save_area`` in the Linux kernel
(``arch/x86/include/asm/svm.h``; AMD APM vol. 2, table B-4), padded to one
4 KiB page. The register values are the x86 reset state (APM vol. 2 §14.1.3)
as modified by KVM (EFER.SVME, CR4.MCE, LDTR/TR) and QEMU's ``x86_cpu_reset``
(segment attributes, PAT, RDX = CPUID signature).

Two flavours exist because Linux 6.10 started to initialise the FPU state of
the VMSA (MXCSR 0x1f80, x87 FCW 0x37f); earlier host kernels (and libvirt's
``virt-qemu-sev-validate``) leave both zero. The launch digest differs.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from enum import StrEnum

from attestd.errors import ParseError, Unsupported

VMSA_SIZE = 4096

#: Reset vector of the boot processor (BSP); APs start at the OVMF SEV-ES reset block.
BSP_RESET_EIP = 0xFFFFFFF0


class VmsaFlavour(StrEnum):
    """Which host kernel built the VMSA: >= 6.10 (``current``) or older (``legacy``)."""

    CURRENT = "current"
    LEGACY = "legacy"


class VmcbSeg(ctypes.LittleEndianStructure):
    """``struct vmcb_seg``: u16 selector || u16 attrib || u32 limit || u64 base."""

    _pack_ = 1
    _fields_ = (
        ("selector", c_uint16),
        ("attrib", c_uint16),
        ("limit", c_uint32),
        ("base", c_uint64),
    )


class SevEsSaveArea(ctypes.LittleEndianStructure):
    """``struct sev_es_save_area`` (Linux ``asm/svm.h``), padded to a 4 KiB VMSA page."""

    _pack_ = 1
    _fields_ = (
        ("es", VmcbSeg),
        ("cs", VmcbSeg),
        ("ss", VmcbSeg),
        ("ds", VmcbSeg),
        ("fs", VmcbSeg),
        ("gs", VmcbSeg),
        ("gdtr", VmcbSeg),
        ("ldtr", VmcbSeg),
        ("idtr", VmcbSeg),
        ("tr", VmcbSeg),
        ("vmpl0_ssp", c_uint64),
        ("vmpl1_ssp", c_uint64),
        ("vmpl2_ssp", c_uint64),
        ("vmpl3_ssp", c_uint64),
        ("u_cet", c_uint64),
        ("reserved_0xc8", c_uint8 * 2),
        ("vmpl", c_uint8),
        ("cpl", c_uint8),
        ("reserved_0xcc", c_uint8 * 4),
        ("efer", c_uint64),
        ("reserved_0xd8", c_uint8 * 104),
        ("xss", c_uint64),
        ("cr4", c_uint64),
        ("cr3", c_uint64),
        ("cr0", c_uint64),
        ("dr7", c_uint64),
        ("dr6", c_uint64),
        ("rflags", c_uint64),
        ("rip", c_uint64),
        ("dr0", c_uint64),
        ("dr1", c_uint64),
        ("dr2", c_uint64),
        ("dr3", c_uint64),
        ("dr0_addr_mask", c_uint64),
        ("dr1_addr_mask", c_uint64),
        ("dr2_addr_mask", c_uint64),
        ("dr3_addr_mask", c_uint64),
        ("reserved_0x1c0", c_uint8 * 24),
        ("rsp", c_uint64),
        ("s_cet", c_uint64),
        ("ssp", c_uint64),
        ("isst_addr", c_uint64),
        ("rax", c_uint64),
        ("star", c_uint64),
        ("lstar", c_uint64),
        ("cstar", c_uint64),
        ("sfmask", c_uint64),
        ("kernel_gs_base", c_uint64),
        ("sysenter_cs", c_uint64),
        ("sysenter_esp", c_uint64),
        ("sysenter_eip", c_uint64),
        ("cr2", c_uint64),
        ("reserved_0x248", c_uint8 * 32),
        ("g_pat", c_uint64),
        ("dbgctl", c_uint64),
        ("br_from", c_uint64),
        ("br_to", c_uint64),
        ("last_excp_from", c_uint64),
        ("last_excp_to", c_uint64),
        ("reserved_0x298", c_uint8 * 80),
        ("pkru", c_uint32),
        ("tsc_aux", c_uint32),
        ("reserved_0x2f0", c_uint8 * 24),
        ("rcx", c_uint64),
        ("rdx", c_uint64),
        ("rbx", c_uint64),
        ("reserved_0x320", c_uint64),
        ("rbp", c_uint64),
        ("rsi", c_uint64),
        ("rdi", c_uint64),
        ("r8", c_uint64),
        ("r9", c_uint64),
        ("r10", c_uint64),
        ("r11", c_uint64),
        ("r12", c_uint64),
        ("r13", c_uint64),
        ("r14", c_uint64),
        ("r15", c_uint64),
        ("reserved_0x380", c_uint8 * 16),
        ("guest_exit_info_1", c_uint64),
        ("guest_exit_info_2", c_uint64),
        ("guest_exit_int_info", c_uint64),
        ("guest_nrip", c_uint64),
        ("sev_features", c_uint64),
        ("vintr_ctrl", c_uint64),
        ("guest_exit_code", c_uint64),
        ("virtual_tom", c_uint64),
        ("tlb_id", c_uint64),
        ("pcpu_id", c_uint64),
        ("event_inj", c_uint64),
        ("xcr0", c_uint64),
        ("reserved_0x3f0", c_uint8 * 16),
        # Floating point area (0x400)
        ("x87_dp", c_uint64),
        ("mxcsr", c_uint32),
        ("x87_ftw", c_uint16),
        ("x87_fsw", c_uint16),
        ("x87_fcw", c_uint16),
        ("x87_fop", c_uint16),
        ("x87_ds", c_uint16),
        ("x87_cs", c_uint16),
        ("x87_rip", c_uint64),
        ("fpreg_x87", c_uint8 * 80),
        ("fpreg_xmm", c_uint8 * 256),
        ("fpreg_ymm", c_uint8 * 256),
        ("reserved_0x670", c_uint8 * (VMSA_SIZE - 0x670)),
    )


assert ctypes.sizeof(VmcbSeg) == 16
assert ctypes.sizeof(SevEsSaveArea) == VMSA_SIZE
assert SevEsSaveArea.mxcsr.offset == 0x408
assert SevEsSaveArea.x87_fcw.offset == 0x410


def cpu_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX for a family/model/stepping (AMD CPUID spec #25481)."""
    if not (0 <= family <= 0xFF + 0xF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise ParseError(f"invalid CPU family/model/stepping {family}/{model}/{stepping}")
    base_family = min(family, 0xF)
    ext_family = family - base_family
    return (
        (ext_family << 20)
        | ((model >> 4) << 16)
        | (base_family << 8)
        | ((model & 0xF) << 4)
        | stepping
    )


#: QEMU vCPU models (``target/i386/cpu.c`` builtin_x86_defs) → (family, model, stepping).
VCPU_TYPES: dict[str, tuple[int, int, int]] = {
    **dict.fromkeys(("EPYC", "EPYC-v1", "EPYC-v2", "EPYC-v3", "EPYC-v4", "EPYC-IBPB"), (23, 1, 2)),
    **dict.fromkeys(("EPYC-Rome", "EPYC-Rome-v1", "EPYC-Rome-v2", "EPYC-Rome-v3"), (23, 49, 0)),
    **dict.fromkeys(("EPYC-Milan", "EPYC-Milan-v1", "EPYC-Milan-v2"), (25, 1, 1)),
    **dict.fromkeys(("EPYC-Genoa", "EPYC-Genoa-v1"), (25, 17, 0)),
    "EPYC-Turin": (26, 0, 0),
}


def vcpu_signature(vcpu_type: str) -> int:
    """The CPUID signature QEMU puts in RDX for a named vCPU model."""
    try:
        family, model, stepping = VCPU_TYPES[vcpu_type]
    except KeyError:
        raise Unsupported(
            f"unknown vCPU type {vcpu_type!r}; known: {', '.join(VCPU_TYPES)}"
        ) from None
    return cpu_signature(family, model, stepping)


def _seg(selector: int, attrib: int, base: int = 0) -> VmcbSeg:
    return VmcbSeg(selector=selector, attrib=attrib, limit=0xFFFF, base=base)


def build_vmsa(
    eip: int,
    vcpu_sig: int,
    flavour: VmsaFlavour = VmsaFlavour.CURRENT,
    *,
    sev_features: int = 0,
) -> bytes:
    """One 4 KiB VMSA page for a QEMU vCPU starting at ``eip``.

    ``sev_features`` is 0 for SEV-ES and the guest features (SEV_FEATURES) for SEV-SNP.
    """
    if not 0 <= eip <= 0xFFFFFFFF:
        raise ParseError(f"reset address {eip:#x} is not a 32-bit address")
    if not 0 <= vcpu_sig <= 0xFFFFFFFF:
        raise ParseError(f"vCPU signature {vcpu_sig:#x} is not 32-bit")
    if not 0 <= sev_features < 1 << 64:
        raise ParseError("SEV features must be a 64-bit value")
    data = 0x93  # present, writable, accessed data segment
    area = SevEsSaveArea(
        es=_seg(0, data),
        cs=_seg(0xF000, 0x9B, base=eip & 0xFFFF0000),
        ss=_seg(0, data),
        ds=_seg(0, data),
        fs=_seg(0, data),
        gs=_seg(0, data),
        gdtr=_seg(0, 0),
        ldtr=_seg(0, 0x82),
        idtr=_seg(0, 0),
        tr=_seg(0, 0x8B),
        efer=0x1000,  # KVM: EFER.SVME
        cr4=0x40,  # KVM: CR4.MCE
        cr0=0x10,
        dr7=0x400,
        dr6=0xFFFF0FF0,
        rflags=0x2,
        rip=eip & 0xFFFF,
        g_pat=0x0007040600070406,
        rdx=vcpu_sig,
        sev_features=sev_features,
        xcr0=0x1,
    )
    if flavour is VmsaFlavour.CURRENT:
        area.mxcsr = 0x1F80
        area.x87_fcw = 0x37F
    return bytes(area)


def vmsa_pages(
    vcpus: int,
    ap_eip: int,
    vcpu_sig: int,
    flavour: VmsaFlavour = VmsaFlavour.CURRENT,
    *,
    sev_features: int = 0,
) -> list[bytes]:
    """The VMSA pages in launch order: the BSP, then ``vcpus - 1`` identical AP pages."""
    if vcpus < 1:
        raise ParseError("SEV-ES needs at least one vCPU")
    bsp = build_vmsa(BSP_RESET_EIP, vcpu_sig, flavour, sev_features=sev_features)
    if vcpus == 1:
        return [bsp]
    ap = build_vmsa(ap_eip, vcpu_sig, flavour, sev_features=sev_features)
    return [bsp] + [ap] * (vcpus - 1)
