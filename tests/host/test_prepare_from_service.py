"""``attestd-host prepare-domain`` without --scheme: the service says what the VM is.

A real attestd (the Flask app under werkzeug, SQLite) with ``public_urls`` set; the
command runs as a subprocess with a host token, as an operator would run it.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from attestd.api import create_app
from attestd.config import Settings
from attestd.guest import initdata
from attestd.host.domain import FWCFG_INITDATA, parse_domain
from tests.conftest import PROJECT_ROOT

VM = uuidlib.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
PIN = initdata.format_pin(hashlib.sha256(b"service key").digest())
DOMAIN = f"""<domain type='kvm'><name>snp1</name><uuid>{VM}</uuid>
<memory unit='MiB'>512</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type>
<loader type='rom'>/usr/share/OVMF/OVMF.amdsev.fd</loader></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""
SNP_BODY: dict[str, Any] = {
    "scheme": "amd-sev-snp",
    "policy": "0x30100",
    "launch-digests": ["ab" * 48],
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    data = tmp_path / "data"
    data.mkdir()
    app = create_app(
        Settings(
            data_dir=data,
            kds_offline=True,
            public_urls=("https://attest.example/v1",),
            guest_pin=PIN,
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["attestd"].store.dispose()


def owner(app: Flask, name: str) -> dict[str, str]:
    token = app.extensions["attestd"].services.principals.create_owner(name)
    return {"Authorization": f"Bearer {token}"}


def prepare(
    tmp_path: Path,
    app: Flask,
    url: str,
    *extra: str,
    owner_name: str | None = "alice",
    domain: str = DOMAIN,
) -> subprocess.CompletedProcess[str]:
    token = app.extensions["attestd"].services.principals.create_host(
        f"host-{len(list(tmp_path.glob('token*')))}", owner=owner_name
    )
    token_file = tmp_path / f"token{len(list(tmp_path.glob('token*')))}"
    token_file.write_text(token + "\n")
    config = tmp_path / "host.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nallow_http = true\ntoken_file = "{token_file}"\n'
    )
    (tmp_path / "d.xml").write_text(domain)
    argv = [str(PROJECT_ROOT / ".venv" / "bin" / "attestd-host"), "--config", str(config)]
    return subprocess.run(
        [*argv, "prepare-domain", "--xml", str(tmp_path / "d.xml"), "--service", url,
         "-o", str(tmp_path / "out.xml"), *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_snp_vm_takes_policy_initdata_and_host_data_from_the_service(
    tmp_path: Path, service: tuple[Flask, str]
) -> None:
    app, url = service
    alice = owner(app, "alice")
    client = app.test_client()
    assert client.post(f"/v1/vm/{VM}", json=SNP_BODY, headers=alice).status_code == 201
    served = client.get(f"/v1/vm/{VM}/initdata", headers=alice).json
    result = prepare(tmp_path, app, url, "--initdata-out", str(tmp_path / "initdata.toml"))
    assert result.returncode == 0, result.stderr
    assert f"host-data {served['host-data']} (from the service)" in result.stderr
    document = (tmp_path / "initdata.toml").read_bytes()
    assert document == served["initdata"].encode()
    root = ET.fromstring((tmp_path / "out.xml").read_text())
    sev = root.find("launchSecurity")
    assert sev is not None and sev.get("type") == "sev-snp"
    assert sev.findtext("policy") == "0x00030100"
    host_data = base64.b64decode(sev.findtext("hostData") or "")
    assert host_data == hashlib.sha256(document).digest() == bytes.fromhex(served["host-data"])
    entry = root.find(f"sysinfo[@type='fwcfg']/entry[@name='{FWCFG_INITDATA}']")
    assert entry is not None and base64.b64decode(entry.text or "") == document
    # an owner who pinned host-data gets it written, with a warning
    pinned = {**SNP_BODY, "host-data": "cd" * 32}
    assert client.put(f"/v1/vm/{VM}", json=pinned, headers=alice).status_code == 200
    result = prepare(tmp_path, app, url)
    assert result.returncode == 0, result.stderr
    assert "pinned by the owner" in result.stderr
    sev = ET.fromstring((tmp_path / "out.xml").read_text()).find("launchSecurity")
    assert sev is not None
    assert base64.b64decode(sev.findtext("hostData") or "") == bytes.fromhex("cd" * 32)


def test_sev_vm_is_prepared_for_sev_and_other_owners_vms_are_not_found(
    tmp_path: Path, service: tuple[Flask, str]
) -> None:
    app, url = service
    alice = owner(app, "alice")
    owner(app, "bob")
    sev = {"scheme": "amd-sev", "policy": 1, "firmware-hashes": ["ab" * 32]}
    assert app.test_client().post(f"/v1/vm/{VM}", json=sev, headers=alice).status_code == 201
    sev_domain = DOMAIN.replace(
        "</os>", "</os><launchSecurity type='sev'><policy>0x0001</policy></launchSecurity>"
    )
    result = prepare(tmp_path, app, url, domain=sev_domain)
    assert result.returncode == 0, result.stderr
    info = parse_domain((tmp_path / "out.xml").read_text())
    assert not info.is_snp and info.metadata is not None and info.metadata.vm_id == VM
    refused = prepare(tmp_path, app, url, owner_name="bob")
    assert refused.returncode != 0
    assert "unknown_vm" in refused.stderr and "Traceback" not in refused.stderr
