"""Chain verification through the installed console scripts (real processes, real exit codes).

``attestd-sim`` writes a trust anchor directory; ``attestd chain verify`` exits 0 only for
a fully anchored chain, with extra anchors taken from ``ATTESTD_TRUST_ANCHORS_DIR``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TESTDATA

BIN = Path(sys.executable).parent
PLATFORM = TESTDATA / "sev" / "platform"


def _run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTD_")}
    base["ATTESTD_CONFIG"] = str(tmp_path / "attestd.toml")
    (tmp_path / "attestd.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, env={**base, **env}
    )


def test_chain_verify_exit_status_real_chains(tmp_path: Path) -> None:
    pdh = PLATFORM / "rome/pdh.cert"
    chain = tmp_path / "chain.b64"
    parts = (PLATFORM / "rome" / n for n in ("pek.cert", "oca.cert", "cek.cert"))
    chain.write_bytes(base64.b64encode(b"".join(p.read_bytes() for p in parts)))
    verify = [str(BIN / "attestd"), "chain", "verify", "--pdh", str(pdh), "--cert-chain"]
    ok = _run([*verify, str(chain)], tmp_path)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert (lines[0], lines[-1]) == ("generation: rome", "chain verified: rome")
    assert len([line for line in lines if line.startswith("ok:")]) == 7

    unsigned = tmp_path / "naples.chain"
    parts = (PLATFORM / "naples" / n for n in ("pek.cert", "oca.cert", "cek.uns.cert"))
    unsigned.write_bytes(b"".join(p.read_bytes() for p in parts))
    naples = [str(BIN / "attestd"), "chain", "verify", "--pdh", str(PLATFORM / "naples/pdh.cert")]
    naples += ["--cert-chain", str(unsigned)]
    bad = _run([*naples, "--offline", "--cache", str(tmp_path / "cache")], tmp_path)
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith("FAIL: CEK is not signed by any ASK")
    assert bad.stdout.splitlines()[-1] == "chain NOT verified"
    fixed = _run([*naples, "--cek", str(PLATFORM / "naples/cek.cert")], tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.splitlines()[-1] == "chain verified: naples"


def test_sim_trust_anchor_directory_via_environment(tmp_path: Path) -> None:
    state, anchors = tmp_path / "sim", tmp_path / "anchors"
    sim = str(BIN / "attestd-sim")
    assert _run([sim, "init", "--dir", str(state), "--rsa-bits", "2048"], tmp_path).returncode == 0
    written = _run([sim, "trust-anchor", "--dir", str(state), "--out", str(anchors)], tmp_path)
    assert written.returncode == 0, written.stderr
    (anchor,) = [p for p in anchors.iterdir() if p.is_dir()]
    assert sorted(p.name for p in anchor.iterdir()) == ["ark.cert", "ask.cert"]
    export = _run([sim, "export", "--dir", str(state), "--format", "text"], tmp_path)
    assert export.returncode == 0, export.stderr
    info = tmp_path / "nodesevinfo.txt"
    info.write_text(export.stdout)
    verify = [str(BIN / "attestd"), "chain", "verify", "--nodesevinfo", str(info)]
    untrusted = _run(verify, tmp_path)
    assert untrusted.returncode == 1
    assert "FAIL: CEK is not signed by any trusted ASK" in untrusted.stdout
    trusted = _run(verify, tmp_path, ATTESTD_TRUST_ANCHORS_DIR=str(anchors))
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert trusted.stdout.splitlines()[-1] == f"chain verified: {anchor.name}"
