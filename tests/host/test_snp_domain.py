"""prepare-domain for SEV-SNP: launchSecurity, HOST_DATA, initdata over fw_cfg; no hook work."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from attestd.errors import ParseError
from attestd.guest import initdata
from attestd.host.domain import (
    FWCFG_INITDATA,
    NAMESPACE,
    AttestdMetadata,
    parse_domain,
    prepare_domain,
    prepare_snp_domain,
)
from tests.conftest import PROJECT_ROOT

VM = uuidlib.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
PIN = initdata.format_pin(hashlib.sha256(b"service key").digest())
DOC = initdata.build(["https://attest.example/v1"], VM, pin=PIN)


def snp_xml(*, kernel: bool = True, launch: str = "") -> str:
    boot = "<kernel>/boot/vmlinuz</kernel><initrd>/boot/initrd.img</initrd>" if kernel else ""
    return f"""<domain type='kvm'><name>snp1</name><uuid>{VM}</uuid>
<memory unit='MiB'>512</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type>
<loader type='rom'>/usr/share/OVMF/OVMF.amdsev.fd</loader>{boot}</os>{launch}
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


def test_snp_domain_gets_policy_host_data_and_initdata() -> None:
    out = prepare_snp_domain(
        snp_xml(), policy=0x30000, initdata=DOC, service="https://attest.example/v1"
    )
    root = ET.fromstring(out)
    sev = root.find("launchSecurity")
    assert sev is not None and sev.attrib == {"type": "sev-snp", "kernelHashes": "yes"}
    assert sev.findtext("policy") == "0x00030000"
    assert base64.b64decode(sev.findtext("hostData") or "") == hashlib.sha256(DOC).digest()
    entry = root.find(f"sysinfo[@type='fwcfg']/entry[@name='{FWCFG_INITDATA}']")
    assert entry is not None and base64.b64decode(entry.text or "") == DOC
    snp_meta = root.find(f"metadata/{{{NAMESPACE}}}snp")
    assert snp_meta is not None and snp_meta.get("vm-id") == str(VM)
    info = parse_domain(out)
    assert info.is_snp and info.metadata is None and info.marker is None


def test_no_kernel_hashes_without_direct_kernel_boot() -> None:
    out = prepare_snp_domain(snp_xml(kernel=False), policy=0x30000, initdata=DOC, service="x")
    sev = ET.fromstring(out).find("launchSecurity")
    assert sev is not None and "kernelHashes" not in sev.attrib


def test_reprepare_is_idempotent_and_keeps_id_block() -> None:
    launch = (
        "<launchSecurity type='sev-snp' authorKey='no'><policy>0x1</policy>"
        "<idBlock>AAAA</idBlock><hostData>old</hostData></launchSecurity>"
    )
    once = prepare_snp_domain(snp_xml(launch=launch), policy=0x30000, initdata=DOC, service="s")
    twice = prepare_snp_domain(once, policy=0x30000, initdata=DOC, service="s")
    assert once == twice
    sev = ET.fromstring(twice).find("launchSecurity")
    assert sev is not None and sev.get("authorKey") == "no" and sev.findtext("idBlock") == "AAAA"
    assert len(ET.fromstring(twice).findall("sysinfo/entry")) == 1


def test_sev_attestd_domain_becomes_snp_without_hook_metadata() -> None:
    sev = snp_xml(launch="<launchSecurity type='sev'><policy>0x1</policy></launchSecurity>")
    with pytest.raises(ParseError, match="type='sev'"):
        prepare_snp_domain(sev, policy=0x30000, initdata=DOC, service="s")
    meta = AttestdMetadata(service="https://a/v1", vm_id=VM, simulate=True)
    plain = prepare_domain(snp_xml(), meta, emulator=None)
    out = prepare_snp_domain(plain, policy=0x30000, initdata=DOC, service="s")
    assert parse_domain(out).metadata is None


@pytest.mark.parametrize(
    ("policy", "document", "message"),
    [
        (0x10000, DOC, "bit 17"),
        (1 << 64, DOC, "bit 17"),
        (0x30000, b"not toml", "not TOML"),
        (0x30000, DOC.replace(b"0.1.0", b"9"), "version"),
    ],
)
def test_bad_policy_or_initdata_refused(policy: int, document: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        prepare_snp_domain(snp_xml(), policy=policy, initdata=document, service="s")


def test_hook_passes_snp_domains_through(tmp_path: Path) -> None:
    """Even with a stale <attestd:launch>, start begin on an SNP domain contacts nothing."""
    meta = AttestdMetadata(service="http://127.0.0.1:9/v1", vm_id=VM, simulate=True)
    live = snp_xml().replace("<domain type='kvm'>", "<domain type='kvm' id='7'>")
    xml = prepare_domain(live, meta, emulator=None).replace(
        "</os>", "</os><launchSecurity type='sev-snp'><policy>0x30000</policy></launchSecurity>"
    )
    info = parse_domain(xml)
    assert info.metadata is not None and info.is_snp and info.id == 7
    config = tmp_path / "host.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nretries = 0\n')
    env = {**os.environ, "ATTESTD_HOST_CONFIG": str(config)}
    for op, subop in (("prepare", "begin"), ("start", "begin"), ("release", "end")):
        result = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "hooks" / "qemu"), "snp1", op, subop, "-"],
            input=xml, capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (0, "")
    assert not (tmp_path / "state").exists()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "host.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    argv = [str(PROJECT_ROOT / ".venv" / "bin" / "attestd-host"), "--config", str(config)]
    return subprocess.run(
        [*argv, "prepare-domain", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_prepare_domain_snp(tmp_path: Path) -> None:
    (tmp_path / "d.xml").write_text(snp_xml())
    result = _cli(
        tmp_path, "--xml", str(tmp_path / "d.xml"), "--scheme", "amd-sev-snp",
        "--service", "https://attest.example/v1", "--pin", PIN, "--policy", "0x30000",
        "--initdata-out", str(tmp_path / "initdata.toml"), "-o", str(tmp_path / "out.xml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = (tmp_path / "initdata.toml").read_bytes()
    assert document == DOC  # vm-id defaults to the domain's UUID
    assert f"host-data {hashlib.sha256(DOC).hexdigest()}" in result.stderr
    out = (tmp_path / "out.xml").read_text()
    assert out == prepare_snp_domain(
        snp_xml(), policy=0x30000, initdata=DOC, service="https://attest.example/v1"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheme", "amd-sev-snp"], "(offline: give --scheme, and for amd-sev-snp --pin"),
        (["--scheme", "amd-sev-snp", "--pin", "sha256//AA=="], "32-byte"),
        (["--scheme", "amd-sev-snp", "--pin", PIN, "--autostart"], "--autostart has no meaning"),
        (["--scheme", "amd-sev-snp", "--pin", PIN, "--no-wrapper"], "--no-wrapper has no mean"),
        (["--scheme", "amd-sev-snp", "--policy", "0x10000"], "bit 17"),
        (["--scheme", "amd-sev", "--pin", PIN], "--pin is for --scheme amd-sev-snp"),
    ],
)
def test_cli_prepare_domain_snp_errors(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "d.xml").write_text(snp_xml())
    result = _cli(
        tmp_path, "--xml", str(tmp_path / "d.xml"), "--service", "https://a.example/v1", *args
    )
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_examples_agree() -> None:
    """examples/libvirt/snp-domain.xml carries snp-initdata.toml and its HOST_DATA, which
    examples/service/registration-snp.json registers; re-preparing changes nothing."""
    examples = PROJECT_ROOT / "examples"
    document = (examples / "libvirt" / "snp-initdata.toml").read_bytes()
    xml = (examples / "libvirt" / "snp-domain.xml").read_text()
    root = ET.fromstring(xml)
    entry = root.findtext(f"sysinfo[@type='fwcfg']/entry[@name='{FWCFG_INITDATA}']") or ""
    assert base64.b64decode(entry) == document
    host_data = initdata.host_data(document)
    assert base64.b64decode(root.findtext("launchSecurity/hostData") or "") == host_data
    registration = json.loads((examples / "service" / "registration-snp.json").read_text())
    assert registration["host-data"] == host_data.hex()
    assert initdata.parse(document).vm_id == parse_domain(xml).uuid
    again = ET.fromstring(prepare_snp_domain(xml, policy=0x30000, initdata=document, service="s"))
    for element in (again, root):
        sev = element.find("launchSecurity")
        assert sev is not None and sev.attrib == {"type": "sev-snp", "kernelHashes": "yes"}
        assert sev.findtext("policy") == "0x00030000"
        assert base64.b64decode(sev.findtext("hostData") or "") == host_data
