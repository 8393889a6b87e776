"""Simulated SNP on the host: the prepared domain, and ``hooks/qemu`` running the domain's PSP.

The hook is run as libvirt runs it (argv + the domain XML on stdin); the PSP it starts
is a real ``attestd-sim snp serve`` process, asked for reports as the guest asks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestd.errors import ParseError
from attestd.guest import initdata
from attestd.guest.snpreport import SimulatorSource
from attestd.host.domain import NAMESPACE, SimSnp, parse_domain, prepare_snp_domain
from attestd.sev.snp.report import AttestationReport
from attestd.sim.snp import SnpPlatform
from attestd.sim.snp_psp import REPORT_DATA_SIZE, REQUEST
from tests.conftest import PROJECT_ROOT, TESTDATA

HOOK = PROJECT_ROOT / "hooks" / "qemu"
OVMF = TESTDATA / "ovmf" / "OVMF.amdsev.fd"
VM = uuidlib.UUID("0c9b7a52-3b2e-4a57-9d1e-5f3c2a1b0e99")
PIN = initdata.format_pin(hashlib.sha256(b"service key").digest())
DOC = initdata.build(["https://attest.example/v1"], VM, pin=PIN)
CMDLINE = "console=ttyS0 root=/dev/vda"


def state(tmp_path: Path) -> Path:
    """The host's state dir (short: a unix socket path has at most 107 bytes)."""
    link = tmp_path / "state-link"
    if not link.exists():
        link.symlink_to(tempfile.mkdtemp(prefix="psp-", dir="/tmp"))
    return Path(os.readlink(link))


def plain_xml(tmp_path: Path, *, dom_id: int | None = None) -> str:
    ident = f" id='{dom_id}'" if dom_id is not None else ""
    return f"""<domain type='qemu'{ident}><name>snp-sim</name><uuid>{VM}</uuid>
<memory unit='MiB'>256</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><loader type='rom'>/usr/share/qemu/qboot.rom</loader>
<kernel>{tmp_path / "vmlinuz"}</kernel><initrd>{tmp_path / "initrd"}</initrd>
<cmdline>{CMDLINE}</cmdline></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


def sim_xml(tmp_path: Path, **kwargs: object) -> str:
    sim = SimSnp(policy=0x30000, host_data=bytes(32), firmware=OVMF, sim_state=tmp_path / "sim")
    return prepare_snp_domain(
        plain_xml(tmp_path, dom_id=3),
        policy=0x30000,
        initdata=DOC,
        service="https://attest.example/v1",
        simulate=sim,
        psp_socket=state(tmp_path) / f"{VM}.psp",
        **kwargs,  # type: ignore[arg-type]
    )


def test_simulated_domain_has_no_launch_security_but_the_psp_channel(tmp_path: Path) -> None:
    xml = sim_xml(tmp_path)
    root = ET.fromstring(xml)
    assert root.find("launchSecurity") is None
    meta = root.find(f"metadata/{{{NAMESPACE}}}snp")
    assert meta is not None
    assert meta.get("simulate") == "yes" and meta.get("policy") == "0x30000"
    assert meta.get("host-data") == hashlib.sha256(DOC).hexdigest()  # the initdata's, not zero
    info = parse_domain(xml)
    assert info.sim_snp is not None and not info.is_snp
    assert info.sim_snp.host_data == hashlib.sha256(DOC).digest()
    assert info.sim_snp.firmware == OVMF
    assert info.snp_psp_socket == str(state(tmp_path) / f"{VM}.psp")
    assert info.kernel == tmp_path / "vmlinuz" and info.cmdline == CMDLINE
    assert root.find("sysinfo[@type='fwcfg']/entry") is not None  # the initdata, as for real SNP
    # prepared again: one channel, same XML
    again = prepare_snp_domain(
        xml, policy=0x30000, initdata=DOC, service="https://attest.example/v1",
        simulate=SimSnp(policy=0x30000, host_data=bytes(32), firmware=OVMF,
                        sim_state=tmp_path / "sim"),
        psp_socket=state(tmp_path) / f"{VM}.psp",
    )  # fmt: skip
    assert again == xml


def test_simulated_domain_refuses_launch_security(tmp_path: Path) -> None:
    xml = plain_xml(tmp_path).replace("</os>", "</os><launchSecurity type='sev-snp'/>")
    with pytest.raises(ParseError, match="must not have <launchSecurity>"):
        prepare_snp_domain(
            xml, policy=0x30000, initdata=DOC, service="https://attest.example/v1",
            simulate=SimSnp(policy=0x30000, host_data=bytes(32)), psp_socket=tmp_path / "p",
        )  # fmt: skip


@pytest.fixture
def host(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Host config, launch files and an SNP platform under tmp_path; the hook's environment."""
    config = tmp_path / "host.toml"
    config.write_text(f'state_dir = "{state(tmp_path)}"\n')
    (tmp_path / "vmlinuz").write_bytes(b"kernel bytes")
    (tmp_path / "initrd").write_bytes(b"initrd bytes")
    SnpPlatform.create(name="hook-snp", rsa_bits=2048).save(tmp_path / "sim")
    env = {**os.environ, "ATTESTD_HOST_CONFIG": str(config)}
    yield env
    hook(["snp-sim", "release", "end", "-"], sim_xml(tmp_path), env)  # never leave a PSP behind


@pytest.fixture(autouse=True)
def _short_state(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(state(tmp_path), ignore_errors=True)


def hook(argv: list[str], xml: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HOOK), *argv], input=xml, capture_output=True, text=True,
        env=env, timeout=90, check=False,
    )  # fmt: skip


def test_hook_runs_the_psp_with_what_the_domain_is_started_with(
    tmp_path: Path, host: dict[str, str]
) -> None:
    xml = sim_xml(tmp_path)
    started = hook(["snp-sim", "start", "begin", "-"], xml, host)
    assert started.returncode == 0, started.stderr
    pid_file = state(tmp_path) / f"{VM}.psp.pid"
    pid = int(pid_file.read_text())
    sock = state(tmp_path) / f"{VM}.psp"
    evidence = SimulatorSource(sock).get(b"\x07" * 64)
    report = AttestationReport.unpack(evidence.report)
    expected = SnpPlatform.measure(
        OVMF.read_bytes(), kernel=b"kernel bytes", initrd=b"initrd bytes", cmdline=CMDLINE,
        vcpus=2,
    )  # fmt: skip
    assert report.measurement == expected
    assert report.host_data == hashlib.sha256(DOC).digest()
    assert report.policy == 0x30000 and report.vmpl == 0
    # one connection, many requests: what QEMU's virtio-serial chardev does
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        for byte in (b"\x01", b"\x02"):
            conn.sendall(REQUEST + byte * REPORT_DATA_SIZE)
            head = b""
            while len(head) < 12:
                head += conn.recv(12 - len(head))
            assert head[:4] == b"SNPA" and head[4:8] == bytes(4)
            rest = int.from_bytes(head[8:12], "little")
            body = b""
            while len(body) < rest + 4:
                body += conn.recv(rest + 4 - len(body))
            table = int.from_bytes(body[rest:], "little")
            while table:
                table -= len(conn.recv(table))
            assert AttestationReport.unpack(body[:rest]).report_data == byte * 64
    released = hook(["snp-sim", "release", "end", "-"], xml, host)
    assert released.returncode == 0, released.stderr
    assert not pid_file.exists() and not sock.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_hook_fails_the_start_with_the_psp_s_reason(tmp_path: Path, host: dict[str, str]) -> None:
    xml = sim_xml(tmp_path).replace(str(tmp_path / "sim"), str(tmp_path / "nowhere"))
    result = hook(["snp-sim", "start", "begin", "-"], xml, host)
    assert result.returncode == 1
    assert "the simulated PSP did not start" in result.stderr
    assert "no simulated SNP platform" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (state(tmp_path) / f"{VM}.psp.pid").exists()


def test_cli_prepares_a_simulated_domain_offline(tmp_path: Path) -> None:
    (tmp_path / "d.xml").write_text(plain_xml(tmp_path))
    config = tmp_path / "host.toml"
    config.write_text(f'state_dir = "{state(tmp_path)}"\n')
    result = subprocess.run(
        [str(Path(sys.executable).with_name("attestd-host")), "--config", str(config),
         "prepare-domain", "--xml", str(tmp_path / "d.xml"), "--scheme", "amd-sev-snp",
         "--simulate", "--firmware", str(OVMF), "--service", "https://attest.example/v1",
         "--pin", PIN, "-o", str(tmp_path / "out.xml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = parse_domain((tmp_path / "out.xml").read_text())
    assert info.launch_security is None and info.sim_snp is not None
    assert info.sim_snp.host_data == hashlib.sha256(DOC).digest()
    assert info.snp_psp_socket == str(state(tmp_path) / f"{VM}.psp")
