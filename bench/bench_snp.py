"""Median cost of an SEV-SNP attestation: the crypto floor and the service's pair.

Usage: ``.venv/bin/python -m bench.bench_snp [RUNS]`` (default 200 runs per case).

* crypto floor: ``check_report`` (parse, VCEK chain to the ASK with names and dates,
  the ASK against the ARK's CRL, ECDSA P-384 signature, TCB and chip id) and ``accept``
  + the JWE (ECDH-ES+A256KW, A256GCM) of a payload;
* the pair a guest makes: ``POST /attest/challenge`` + ``POST /attest`` through the
  Flask app on SQLite (a software SNP platform, its anchor trusted).
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

from jwcrypto import jwk

from attestd.api import create_app
from attestd.config import Settings
from attestd.sev.snp.certs import SnpCrl
from attestd.sev.snp.verify import (
    SnpReferencePolicy,
    accept,
    check_report,
    report_data_binding,
)
from attestd.sim.snp import ReportRequest, SnpPlatform
from attestd.trust.crl import CrlStore
from bench.bench_chain import _report

VM = "6f1c2b7e-3c1a-4d8e-9a51-0c2b9d1f7e11"


def main(argv: list[str]) -> int:
    runs = int(argv[1]) if len(argv) > 1 else 200
    platform = SnpPlatform.create(name="bench-snp")
    anchors = (platform.anchor(),)
    key = jwk.JWK.generate(kty="EC", crv="P-384")
    public = {k: v for k, v in key.export_public(as_dict=True).items() if k in "kty crv x y"}
    digest = bytes(48)
    nonce = base64.b64encode(bytes(32)).decode()
    raw = platform.report(ReportRequest(report_data_binding(nonce, public), digest))
    crls = {platform.name: SnpCrl.from_der(platform.crl())}
    _report(
        "check_report (chain, CRL, signature, TCB, chip)",
        lambda: check_report(raw, anchors, leaf=platform.vcek, crls=crls),
        runs,
    )
    verified = check_report(raw, anchors, leaf=platform.vcek, crls=crls).verified
    assert verified is not None
    policy = SnpReferencePolicy(measurements=[digest])
    payload = b"x" * 1024

    def release() -> object:
        return accept(verified, policy, nonce=nonce, tee_key=public).encrypt_payload(
            payload, public
        )

    _report("accept + JWE of a 1 KiB payload", release, runs)

    with tempfile.TemporaryDirectory() as tmp:
        anchor_dir = Path(tmp) / "anchors"
        platform.write_anchor(anchor_dir)
        settings = Settings(
            data_dir=Path(tmp),
            kds_offline=True,
            trust_anchors_dir=anchor_dir,
            public_urls=("https://attest.example/v1",),
            guest_pin="sha256//" + base64.b64encode(bytes(32)).decode(),
            attest_vm_rate=0,  # one VM's pairs as fast as they go
        )
        crl_store = CrlStore.from_settings(settings)  # kds_offline
        crl_store.import_crl(platform.crl(), anchors)  # the service checks the ASK's revocation
        app = create_app(settings)
        client = app.test_client()
        owner = app.extensions["attestd"].services.principals.create_owner("bench")
        auth = {"Authorization": f"Bearer {owner}"}
        body = {
            "scheme": "amd-sev-snp",
            "policy": 0x30000,
            "launch-digests": [digest.hex()],
            "secrets": [{"type": "secret-file", "name": "s", "values": {"K": "v" * 512}}],
        }
        resp = client.post(f"/v1/vm/{VM}", json=body, headers=auth)
        assert resp.status_code == 201, resp.json
        # the HOST_DATA a guest launched with the VM's initdata reports
        host_data = bytes.fromhex(
            client.get(f"/v1/vm/{VM}/initdata", headers=auth).json["host-data"]
        )
        vcek = base64.b64encode(platform.vcek).decode()

        def pair() -> object:
            got = client.post(f"/v1/vm/{VM}/attest/challenge").json["nonce"]
            binding = report_data_binding(got, public)
            report = platform.report(ReportRequest(binding, digest, host_data=host_data))
            attest = {
                "nonce": got,
                "tee-pubkey": public,
                "report": base64.b64encode(report).decode(),
                "vcek": vcek,
            }
            answer = client.post(f"/v1/vm/{VM}/attest", json=attest)
            assert answer.status_code == 200, answer.json
            return answer

        _report("challenge + attest pair (SQLite, incl. signing)", pair, runs)
        _report(
            "  of which the simulator signing the report",
            lambda: platform.report(ReportRequest(bytes(64), digest)),
            runs,
        )
        app.extensions["attestd"].services.store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
