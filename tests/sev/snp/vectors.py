"""The real SEV-SNP vectors of ``tests/data/sev/snp`` (PROVENANCE.md) and a cached simulator.

Not a test module: the SNP tests, the simulator tests and the command tests share it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestd.sev.snp.report import Generation
from attestd.sim.snp import SnpPlatform
from tests.conftest import TESTDATA

SNP = TESTDATA / "sev" / "snp"


@dataclass(frozen=True)
class Vector:
    """One real report with its leaf certificate and what PROVENANCE.md says of it."""

    name: str
    report_file: Path
    leaf_file: Path
    signing_key: str
    vmpl: int
    policy: int
    version: int
    #: (bootloader, tee, snp, microcode) of REPORTED_TCB
    reported_tcb: tuple[int, int, int, int]

    def raw_file(self) -> bytes:
        return self.report_file.read_bytes()

    def leaf(self) -> bytes:
        """The leaf certificate as DER (the first certificate of a PEM bundle)."""
        data = self.leaf_file.read_bytes()
        if b"-----BEGIN" in data:
            first = x509.load_pem_x509_certificates(data)[0]
            return first.public_bytes(serialization.Encoding.DER)
        return data


VECTORS = (
    Vector(
        "trustee-milan-v2",
        SNP / "trustee/test-report.bin",
        SNP / "trustee/test-vcek.der",
        "vcek",
        0,
        0x3001F,
        2,
        (3, 0, 8, 115),
    ),
    Vector(
        "trustee-vlek-v3-vmpl1",
        SNP / "trustee/test-vlek-report.bin",
        SNP / "trustee/test-vlek.der",
        "vlek",
        1,
        0x30000,
        3,
        (4, 0, 24, 217),
    ),
    Vector(
        "go-sev-guest-debug",
        SNP / "go-sev-guest/attestation.bin",
        SNP / "go-sev-guest/vcek.testcer",
        "vcek",
        0,
        0xB0000,
        2,
        (2, 0, 5, 68),
    ),
    Vector(
        "virtee-milan-hex",
        SNP / "report_milan.hex",
        SNP / "vcek_milan.der",
        "vcek",
        0,
        0x30000,
        2,
        (3, 0, 8, 115),
    ),
    Vector(
        "azure-hcl",
        SNP / "trustee/az-hcl-report.bin",
        SNP / "trustee/az-hcl-vcek.pem",
        "vcek",
        0,
        0x3001F,
        2,
        (3, 0, 8, 115),
    ),
)
BY_NAME = {v.name: v for v in VECTORS}


def _tcb(obj: dict[str, int | None], turin: bool) -> int:
    if turin:
        order = [obj["fmc"], obj["bootloader"], obj["tee"], obj["snp"], 0, 0, 0, obj["microcode"]]
    else:
        order = [obj["bootloader"], obj["tee"], 0, 0, 0, 0, obj["snp"], obj["microcode"]]
    return int.from_bytes(bytes(v or 0 for v in order), "little")


def genoa_from_trustee_json() -> tuple[bytes, bytes]:
    """Rebuild the 1184 report bytes from Trustee's serde JSON (reserved bytes zero) + its VCEK.

    Written from the table in snp.md §1, independently of attestd's layout.
    """
    doc = json.loads((SNP / "trustee/e2e-evidence-genoa.json").read_text())
    r = doc["attestation_report"]
    turin = r["cpuid_fam_id"] == 0x1A
    out = bytearray(0x4A0)

    def put(offset: int, data: bytes) -> None:
        out[offset : offset + len(data)] = data

    def u(offset: int, value: int, size: int) -> None:
        put(offset, value.to_bytes(size, "little"))

    u(0x000, r["version"], 4)
    u(0x004, r["guest_svn"], 4)
    u(0x008, r["policy"], 8)
    put(0x010, bytes(r["family_id"]))
    put(0x020, bytes(r["image_id"]))
    u(0x030, r["vmpl"], 4)
    u(0x034, r["sig_algo"], 4)
    u(0x038, _tcb(r["current_tcb"], turin), 8)
    u(0x040, r["plat_info"], 8)
    u(0x048, r["key_info"], 4)
    put(0x050, bytes(r["report_data"]))
    put(0x090, bytes(r["measurement"]))
    put(0x0C0, bytes(r["host_data"]))
    put(0x0E0, bytes(r["id_key_digest"]))
    put(0x110, bytes(r["author_key_digest"]))
    put(0x140, bytes(r["report_id"]))
    put(0x160, bytes(r["report_id_ma"]))
    u(0x180, _tcb(r["reported_tcb"], turin), 8)
    put(0x188, bytes([r["cpuid_fam_id"], r["cpuid_mod_id"], r["cpuid_step"]]))
    put(0x1A0, bytes(r["chip_id"]))
    u(0x1E0, _tcb(r["committed_tcb"], turin), 8)
    put(0x1E8, bytes([r["current"]["build"], r["current"]["minor"], r["current"]["major"]]))
    put(0x1EC, bytes([r["committed"]["build"], r["committed"]["minor"], r["committed"]["major"]]))
    u(0x1F0, _tcb(r["launch_tcb"], turin), 8)
    put(0x2A0, bytes(r["signature"]["r"]))
    put(0x2A0 + 72, bytes(r["signature"]["s"]))
    (vcek,) = (c for c in doc["cert_chain"] if c["cert_type"] == "VCEK")
    return bytes(out), bytes(vcek["data"])


@functools.cache
def sim_platform(generation: Generation = Generation.MILAN, version: int = 3) -> SnpPlatform:
    """One simulated SNP platform (with a VLEK) per generation and report version, per process."""
    return SnpPlatform.create(
        name=f"sim-{generation.value}", generation=generation, vlek=True, report_version=version
    )
