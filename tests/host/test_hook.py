"""``hooks/qemu`` as libvirt runs it: argv + stdin XML, against a local stub service."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestd.host.domain import PLACEHOLDER, AttestdMetadata, prepare_domain
from attestd.host.platform import PlatformData, write_cache
from attestd.host.state import read_state
from tests.conftest import PROJECT_ROOT
from tests.host.stubservice import StubService

HOOK = PROJECT_ROOT / "hooks" / "qemu"
GODH = b"G" * 0x824
SESSION = b"S" * 0x80


def sev_xml(name: str, dom_id: int, *, policy: str = "0x0001") -> str:
    return f"""<domain type='kvm' id='{dom_id}'><name>{name}</name>
<uuid>{uuidlib.uuid4()}</uuid><vcpu>4</vcpu>
<os><type>hvm</type><loader type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader></os>
<launchSecurity type='sev'><policy>{policy}</policy></launchSecurity>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


@pytest.fixture
def stub() -> Iterator[StubService]:
    service = StubService()
    yield service
    service.close()


@pytest.fixture
def host(tmp_path: Path) -> dict[str, str]:
    """Host config under tmp_path; returns the environment for the hook."""
    (tmp_path / "lib").mkdir()
    config = tmp_path / "host.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nplatform_cache = "{tmp_path / "platform.json"}"\n'
        f'libvirt_lib_dir = "{tmp_path / "lib"}"\nallow_http = true\nretries = 0\n'
        f'token_file = "{tmp_path / "token"}"\n'
    )
    (tmp_path / "token").write_text("host-token-123\n")
    write_cache(
        tmp_path / "platform.json",
        PlatformData(pdh=b"P" * 0x824, cert_chain=b"C" * (3 * 0x824), chip_id=b"I" * 64),
    )
    return {**os.environ, "ATTESTD_HOST_CONFIG": str(config)}


def run_hook(
    argv: list[str], xml: str, env: dict[str, str], python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, str(HOOK), *argv], input=xml, capture_output=True, text=True, env=env, timeout=60
    )


def prepared(xml: str, service: str) -> tuple[str, AttestdMetadata]:
    meta = AttestdMetadata(service=service, vm_id=uuidlib.uuid4())
    return prepare_domain(xml, meta, emulator=None), meta


def test_start_begin_rewrites_sev_files_in_place(
    tmp_path: Path, host: dict[str, str], stub: StubService
) -> None:
    xml, meta = prepared(sev_xml("a-very-long-guest-name-indeed", 12), stub.url)
    stub.routes[f"/v1/vm/{meta.vm_id}/launch"] = (
        200,
        {"launch-id": "L1", "owner-cert": base64.b64encode(GODH).decode(),
         "session": base64.b64encode(SESSION).decode(), "policy": 1},
    )  # fmt: skip
    libdir = tmp_path / "lib" / "domain-12-a-very-long-guest-na"
    libdir.mkdir()
    files = {}
    for name in ("dh_cert", "session"):
        path = libdir / f"{name}.base64"
        path.write_text(PLACEHOLDER)
        path.chmod(0o600)
        files[name] = path.stat().st_ino
    result = run_hook(["a-very-long-guest-name-indeed", "start", "begin", "-"], xml, host)
    assert result.returncode == 0, result.stderr
    assert (libdir / "dh_cert.base64").read_bytes() == base64.b64encode(GODH)
    assert (libdir / "session.base64").read_bytes() == base64.b64encode(SESSION)
    for name, inode in files.items():
        st = (libdir / f"{name}.base64").stat()
        assert (st.st_ino, st.st_mode & 0o777) == (inode, 0o600)  # same file, same mode
    [(_, body, headers)] = stub.requests
    assert headers["Authorization"] == "Bearer host-token-123"
    assert base64.b64decode(body["pdh"]) == b"P" * 0x824
    uuid = xml.split("<uuid>")[1].split("</uuid>")[0]
    state = read_state(tmp_path / "state", uuid)
    assert state is not None and state.launch_id == "L1" and state.cpu_count == 4
    assert state.godh_cert is None  # real SEV: blobs only in libvirt's files
    result = run_hook(["a-very-long-guest-name-indeed", "release", "end", "-"], xml, host)
    assert result.returncode == 0 and read_state(tmp_path / "state", uuid) is None


def test_policy_mismatch_aborts(tmp_path: Path, host: dict[str, str], stub: StubService) -> None:
    xml, meta = prepared(sev_xml("g", 3, policy="0x0005"), stub.url)
    stub.routes[f"/v1/vm/{meta.vm_id}/launch"] = (
        200,
        {"launch-id": "L1", "owner-cert": base64.b64encode(GODH).decode(),
         "session": base64.b64encode(SESSION).decode(), "policy": 1},
    )  # fmt: skip
    result = run_hook(["g", "start", "begin", "-"], xml, host)
    assert result.returncode == 1
    assert "domain policy 0x0005 differs from the registered policy 0x0001" in result.stderr


def test_unreachable_service_aborts_with_clear_message(host: dict[str, str]) -> None:
    xml, meta = prepared(sev_xml("g", 3), "http://127.0.0.1:9/v1")
    result = run_hook(["g", "start", "begin", "-"], xml, host)
    assert result.returncode == 1
    assert result.stderr.startswith("attestd: g: service http://127.0.0.1:9/v1 unreachable")
    # which URL, what went wrong and what to check, on one line
    assert result.stderr.strip().splitlines() == [
        "attestd: g: service http://127.0.0.1:9/v1 unreachable: POST "
        f"http://127.0.0.1:9/v1/vm/{meta.vm_id}/launch: Connection refused; check that the attestd "
        "service runs (curl http://127.0.0.1:9/healthz) and that this host reaches it (service "
        "URL in the domain's metadata, DNS, firewall)"
    ]


def test_other_domains_pass_through_without_importing_attestd(host: dict[str, str]) -> None:
    plain = sev_xml("other", 4)
    start = time.monotonic()
    # /usr/bin/python3 has no attestd: a pass-through must not need it
    result = run_hook(["other", "start", "begin", "-"], plain, host, python="/usr/bin/python3")
    assert result.returncode == 0 and result.stderr == ""
    assert time.monotonic() - start < 2.0
    attestd_xml, _ = prepared(plain, "https://a.example/v1")
    for phase in (["prepare", "begin"], ["started", "begin"], ["stopped", "end"]):
        result = run_hook(["other", *phase, "-"], attestd_xml, host, python="/usr/bin/python3")
        assert result.returncode == 0  # phases attestd does not use
    result = run_hook(
        ["other", "start", "begin", "-"], attestd_xml, host, python="/usr/bin/python3"
    )
    assert result.returncode != 0 and "attestd" in result.stderr  # it does import for these


def test_missing_platform_cache_names_the_fix(tmp_path: Path, host: dict[str, str]) -> None:
    (tmp_path / "platform.json").unlink()
    xml, _ = prepared(sev_xml("g", 3), "https://a.example/v1")
    result = run_hook(["g", "start", "begin", "-"], xml, host)
    assert result.returncode == 1 and "attestd-host refresh-platform" in result.stderr


def test_wrapped_domain_without_its_marker_is_refused(host: dict[str, str]) -> None:
    xml, meta = prepared(sev_xml("g", 3), "https://a.example/v1")
    xml = xml.replace("/usr/bin/qemu-system-x86_64", "/opt/attestd/.venv/bin/attestd-qemu")
    result = run_hook(["g", "start", "begin", "-"], xml, host)
    assert result.returncode == 1
    assert "without the matching <qemu:env name='ATTESTD_DOMAIN'> marker" in result.stderr
    marked = prepare_domain(xml, meta, emulator=None)  # keeps the wrapper, adds the marker
    assert "ATTESTD_DOMAIN" in marked
    marked_for_other = marked.replace(f'value="{meta.vm_id}"', f'value="{uuidlib.uuid4()}"')
    result = run_hook(["g", "start", "begin", "-"], marked_for_other, host)
    assert result.returncode == 1 and "marker" in result.stderr


def test_hook_code_never_loads_libvirt() -> None:
    code = "import sys, attestd.host.hook, attestd.host.sim; sys.exit('libvirt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    # the check can fail: the agent module does load it once used
    code_agent = (
        "import sys, attestd.host.agent as a; a._libvirt(); sys.exit('libvirt' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code_agent], check=False).returncode == 1
