"""``attestd snp verify`` through the real console script: every vector, policies, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attestd.sev.snp.certs import GUID_ARK, GUID_VCEK, CertTable
from tests.sev.snp.vectors import BY_NAME, SNP, VECTORS, Vector, genoa_from_trustee_json

BIN = Path(sys.executable).parent
#: A time when every real vector's certificates were valid (the VLEK: 2024-12-10 .. 2025-12-10).
AT = "2025-06-01T00:00:00Z"


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTD_")}
    environ.update(env or {})
    return subprocess.run(
        [str(BIN / "attestd"), "snp", "verify", *argv],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
        timeout=60,
    )


def verify(*argv: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = run(*argv, *(() if "--at" in argv else ("--at", AT)), env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def leaf_option(vector: Vector) -> list[str]:
    option = "--cert-chain" if vector.leaf_file.suffix == ".pem" else "--vcek"
    return [option, str(vector.leaf_file)]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_every_real_report(vector: Vector) -> None:
    code, out = verify("--report", str(vector.report_file), *leaf_option(vector))
    assert code == 0 and out["verified"] is True, out
    assert out["generation"] == "milan" and out["anchor"] == "milan"
    assert out["version"] == vector.version and out["vmpl"] == vector.vmpl
    assert out["signing-key"] == vector.signing_key
    assert out["policy"]["value"] == hex(vector.policy)
    bl, tee, snp, ucode = vector.reported_tcb
    assert out["reported-tcb"] == {"bootloader": bl, "tee": tee, "snp": snp, "microcode": ucode}
    for key in ("current-tcb", "measurement", "host-data", "report-data", "chip-id"):
        assert key in out
    assert len(out["measurement"]) == 96 and len(out["chip-id"]) == 128


def test_policy_options() -> None:
    debug = BY_NAME["go-sev-guest-debug"]
    code, out = verify("--report", str(debug.report_file), *leaf_option(debug), "--no-debug")
    assert code == 1 and out["verified"] is False
    assert [r["code"] for r in out["reasons"]] == ["policy_debug_not_allowed"]
    vlek = BY_NAME["trustee-vlek-v3-vmpl1"]
    strict = ["--report", str(vlek.report_file), *leaf_option(vlek)]
    code, out = verify(*strict, "--max-vmpl", "1")
    assert code == 1 and [r["code"] for r in out["reasons"]] == ["provisional_firmware"]
    args = [*strict, "--allow-provisional"]  # CURRENT microcode 220 > COMMITTED 219
    code, out = verify(*args, "--max-vmpl", "0", "--signing-key", "vcek", "--min-tcb", "4,0,25,0")
    assert code == 1
    assert [r["code"] for r in out["reasons"]] == [
        "reported_tcb_below_minimum",
        "vmpl_too_high",
        "signing_key_not_allowed",
    ]
    measurement = out["measurement"]
    code, out = verify(*args, "--measurement", measurement, "--max-vmpl", "1", "--no-debug")
    assert code == 0 and out["reasons"] == [] and out["policy-checked"] is True
    code, out = verify(*args, "--measurement", "00" * 48, "--host-data", "11" * 32)
    assert [r["code"] for r in out["reasons"]] == ["measurement_not_accepted", "host_data_mismatch"]


def test_genoa_and_cert_table_and_turin_generation(tmp_path: Path) -> None:
    raw, vcek = genoa_from_trustee_json()
    (tmp_path / "report.bin").write_bytes(raw)
    (tmp_path / "report.hex").write_text(raw.hex() + "\n")
    (tmp_path / "table.bin").write_bytes(CertTable({GUID_ARK: b"ignored", GUID_VCEK: vcek}).pack())
    for report in ("report.bin", "report.hex"):
        code, out = verify(
            "--report", str(tmp_path / report), "--cert-table", str(tmp_path / "table.bin")
        )
        assert code == 0 and out["generation"] == "genoa"
        assert out["certificate"]["product-name"].startswith("Genoa")
    code, out = verify(
        "--report", str(tmp_path / "report.bin"), "--vcek", str(SNP / "vcek_turin.der")
    )
    assert code == 1 and out["failure"]["code"] == "generation_mismatch"


def test_refusals_name_the_failing_link(tmp_path: Path) -> None:
    vector = BY_NAME["trustee-milan-v2"]
    raw = bytearray(vector.report_file.read_bytes())
    raw[0x90] ^= 1
    (tmp_path / "flipped.bin").write_bytes(bytes(raw))
    code, out = verify("--report", str(tmp_path / "flipped.bin"), "--vcek", str(vector.leaf_file))
    assert code == 1 and out["verified"] is False
    assert out["failure"] == {
        "code": "signature_invalid",
        "detail": "the report signature does not verify with the VCEK",
    }
    code, out = verify("--report", str(vector.report_file), "--vcek", str(SNP / "vcek_turin.der"))
    assert code == 1 and out["failure"]["code"] in {"signature_invalid", "generation_mismatch"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "expected 1184 bytes"),
        (b"not a report", "expected 1184 bytes"),
        (b"\x07" + bytes(1183), "unsupported version"),
    ],
)
def test_bad_reports_are_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "r").write_bytes(content)
    vector = BY_NAME["trustee-milan-v2"]
    result = run("--report", str(tmp_path / "r"), "--vcek", str(vector.leaf_file))
    assert "Traceback" not in result.stderr
    if result.returncode == 1 and result.stdout:
        out = json.loads(result.stdout)
        assert out["failure"]["code"] == "report_malformed" and message in out["failure"]["detail"]
    else:
        assert result.returncode == 1 and "[malformed_input]" in result.stderr
        assert message in result.stderr


def test_usage_and_file_errors(tmp_path: Path) -> None:
    vector = BY_NAME["trustee-milan-v2"]
    report = ["--report", str(vector.report_file)]
    cases = [
        ([*report], 2, "give the signing certificate"),
        ([*report, "--vcek", str(vector.leaf_file), "--cert-table", "x"], 2, "one of"),
        ([*report, "--vcek", str(vector.leaf_file), "--min-tcb", "1,2"], 2, "--min-tcb"),
        ([*report, "--vcek", str(vector.leaf_file), "--measurement", "zz"], 2, "hex digits"),
        ([*report, "--vcek", str(vector.leaf_file), "--min-firmware", "1.x"], 2, "MAJOR"),
        (
            ["--report", str(tmp_path / "missing"), "--vcek", str(vector.leaf_file)],
            1,
            "cannot read",
        ),
        ([*report, "--vcek", str(tmp_path)], 1, "is not a regular file"),
        (
            [*report, "--vcek", str(vector.leaf_file), "--trust-anchors", str(tmp_path / "no")],
            1,
            "does not exist",
        ),
    ]
    for argv, status, message in cases:
        result = run(*argv)
        assert result.returncode == status, (argv, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "garbage.der").write_bytes(b"\x30\x03\x02\x01\x00")
    code, out = verify(*report, "--vcek", str(tmp_path / "garbage.der"))
    assert code == 1 and out["failure"]["code"] == "certificate_invalid"


def test_the_real_vlek_has_expired_by_now() -> None:
    vlek = BY_NAME["trustee-vlek-v3-vmpl1"]
    code, out = verify("--report", str(vlek.report_file), *leaf_option(vlek), "--at", "now")
    assert code == 1 and out["failure"]["code"] == "certificate_expired"  # today
    code, out = verify("--report", str(vlek.report_file), *leaf_option(vlek), "--at", "2026-01-01")
    assert code == 1 and out["failure"]["code"] == "certificate_expired"
    assert "the VLEK expired at 2025-12-10" in out["failure"]["detail"]
    bad = run("--report", str(vlek.report_file), *leaf_option(vlek), "--at", "yesterday")
    assert bad.returncode == 2 and "--at must be an ISO 8601 time" in bad.stderr


def test_crl_option_and_cache(tmp_path: Path) -> None:
    """--crl checks the ASK against the ARK's CRL; `attestd snp crl import` caches it."""
    from attestd.sim.snp import ReportRequest, SnpPlatform

    platform = SnpPlatform.create(name="sim-crl", rsa_bits=2048)
    anchors = tmp_path / "anchors"
    platform.write_anchor(anchors)
    (tmp_path / "report.bin").write_bytes(
        platform.report(ReportRequest(report_data=bytes(64), measurement=bytes(48)))
    )
    (tmp_path / "vcek.der").write_bytes(platform.vcek)
    (tmp_path / "ok.crl").write_bytes(platform.crl())
    (tmp_path / "revoked.crl").write_bytes(platform.crl(revoke=("ask",)))
    (tmp_path / "junk.crl").write_bytes(b"not a crl")
    env = {"ATTESTD_DATA_DIR": str(tmp_path / "data"), "ATTESTD_TRUST_ANCHORS_DIR": str(anchors)}
    base = ["--report", str(tmp_path / "report.bin"), "--vcek", str(tmp_path / "vcek.der")]
    now = ("--at", "now")
    code, out = verify(*base, *now, env=env)
    assert code == 0 and out["revocation"] == "no-crl"
    code, out = verify(*base, *now, "--require-crl", env=env)
    assert code == 1 and out["failure"]["code"] == "crl_missing"
    code, out = verify(*base, *now, "--crl", str(tmp_path / "ok.crl"), env=env)
    assert code == 0 and out["revocation"] == "checked"
    code, out = verify(*base, *now, "--crl", str(tmp_path / "revoked.crl"), env=env)
    assert code == 1 and out["failure"]["code"] == "certificate_revoked"
    junk = run(*base, *now, "--crl", str(tmp_path / "junk.crl"), env=env)
    assert junk.returncode != 0 and "Traceback" not in junk.stderr and "CRL" in junk.stderr

    def crl_import(name: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTD_")}
        return subprocess.run(
            [str(BIN / "attestd"), "snp", "crl", "import", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env={**environ, **env},
            check=False,
            timeout=60,
        )

    done = crl_import("ok.crl")
    assert done.returncode == 0, done.stderr
    assert "crl-sim-crl.der (next update" in done.stdout
    assert (tmp_path / "data" / "cek" / "vcek" / "crl-sim-crl.der").is_file()
    code, out = verify(*base, *now, "--require-crl", env=env)  # from the cache
    assert code == 0 and out["revocation"] == "checked"
    for name in ("junk.crl",):
        refused = crl_import(name)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
    other = SnpPlatform.create(name="other", rsa_bits=2048)
    (tmp_path / "other.crl").write_bytes(other.crl())
    refused = crl_import("other.crl")
    assert refused.returncode != 0 and "not issued and signed by any trusted ARK" in refused.stderr
