"""/launch on real AMD platform chains (captured from hardware; see testdata PROVENANCE)."""

from __future__ import annotations

import base64
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from attestd.sev.certs import SevCertificate
from tests.api.simhost import VM, sev
from tests.servicefix import make_owner


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rome(testdata: Path) -> dict[str, bytes]:
    base = testdata / "sev" / "platform" / "rome"
    return {name: (base / f"{name}.cert").read_bytes() for name in ("pdh", "pek", "oca", "cek")}


def test_real_rome_chain_gets_a_session(
    app: Flask, client: FlaskClient, testdata: Path, ovmf: bytes
) -> None:
    owner = make_owner(app, "alice")
    rome = _rome(testdata)
    body = sev(ovmf, **{"cloud-cert": _b64(rome["oca"])})
    assert client.post(f"/v1/vm/{VM}", json=body, headers=owner).status_code == 201
    launch = {
        "pdh": _b64(rome["pdh"]),
        "cert-chain": _b64(rome["pek"] + rome["oca"] + rome["cek"]),
        "cek": _b64(rome["cek"]),
    }
    resp = client.post(f"/v1/vm/{VM}/launch", json=launch)
    assert resp.status_code == 200, resp.json
    godh = SevCertificate.unpack(base64.b64decode(resp.json["owner-cert"]))
    assert int(godh.usage) == 0x1003  # PDH usage, as the firmware expects
    assert len(base64.b64decode(resp.json["session"])) == 0x80
    events = client.get(f"/v1/vm/{VM}/events", headers=owner).json["events"]
    assert events[-1]["detail"]["generation"] == "rome"

    tampered = bytearray(rome["pdh"])
    tampered[0x500] ^= 1  # inside the PEK signature over the PDH
    bad = dict(launch, pdh=_b64(bytes(tampered)))
    resp = client.post(f"/v1/vm/{VM}/launch", json=bad)
    assert resp.status_code == 403 and resp.json["errors"]["reason"] == "chain_invalid"


def test_real_naples_chain_with_a_foreign_cek_is_refused(
    app: Flask, client: FlaskClient, testdata: Path, ovmf: bytes
) -> None:
    owner = make_owner(app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    base = testdata / "sev" / "platform" / "naples-2019"
    launch = {
        "pdh": _b64((base / "pdh.cert").read_bytes()),
        "cert-chain": _b64((base / "pek_oca_cek.cert").read_bytes()),
        "cek": _b64((base / "cek.cert.fixed").read_bytes()),  # a Rome chip's CEK
    }
    resp = client.post(f"/v1/vm/{VM}/launch", json=launch)
    assert resp.status_code == 403 and resp.json["errors"]["reason"] == "chain_invalid"


def test_real_unsigned_cek_without_kds_is_unavailable(
    app: Flask, client: FlaskClient, testdata: Path, ovmf: bytes
) -> None:
    owner = make_owner(app, "alice")
    assert client.post(f"/v1/vm/{VM}", json=sev(ovmf), headers=owner).status_code == 201
    base = testdata / "sev" / "platform" / "naos-api1.51"
    chip = bytes.fromhex((base / "getid_s0_out.txt").read_text().strip())
    launch = {
        "pdh": _b64((base / "pdh.cert").read_bytes()),
        "cert-chain": _b64((base / "cert_chain.cert").read_bytes()),
        "cpu-id": _b64(chip),
    }
    resp = client.post(f"/v1/vm/{VM}/launch", json=launch)  # kds_offline in the test settings
    assert resp.status_code == 422 and resp.json["errors"]["reason"] == "cek_required"
