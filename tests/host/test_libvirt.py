"""Against a real libvirtd (QEMU driver) and real qemu-system-x86_64 (TCG).

Capability probing and plain domains work through the wrapper unchanged; the
hook sees the live XML with the attestd metadata, passes other domains through,
and a failing hook aborts the start with its message.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestd.host.platform import PlatformData, write_cache
from attestd.host.state import read_state
from tests.host.conftest import WRAPPER, host_settings
from tests.host.domains import attestd_domain, domain_xml
from tests.host.stubservice import StubService
from tools.libvirtd import Libvirtd

pytestmark = pytest.mark.slow
QEMU = "/usr/bin/qemu-system-x86_64"


@pytest.fixture
def stub() -> Iterator[StubService]:
    service = StubService()
    yield service
    service.close()


def define(libvirtd: Libvirtd, name: str, xml: str) -> str:
    path = libvirtd.root / f"{name}.xml"
    path.write_text(xml, encoding="utf-8")
    libvirtd.virsh("define", str(path))
    return name


def qemu_pid(libvirtd: Libvirtd, name: str) -> int:
    return int((libvirtd.root / "run" / "qemu" / f"{name}.pid").read_text().strip())


def fake_platform(root: Path) -> PlatformData:
    data = PlatformData(
        pdh=os.urandom(0x824), cert_chain=os.urandom(3 * 0x824), chip_id=os.urandom(64)
    )
    write_cache(host_settings(root).platform_cache, data)
    return data


def launch_answer(policy: int = 1) -> dict[str, object]:
    return {
        "launch-id": "L-1234",
        "owner-cert": base64.b64encode(b"G" * 0x824).decode(),
        "session": base64.b64encode(b"S" * 0x80).decode(),
        "policy": policy,
    }


def test_capability_probing_and_plain_domain_start_stop_through_wrapper(
    libvirtd: Libvirtd,
) -> None:
    caps = libvirtd.virsh(
        "domcapabilities", "--emulatorbin", WRAPPER, "--arch", "x86_64", "--virttype", "qemu"
    ).stdout
    assert f"<path>{WRAPPER}</path>" in caps
    assert "<machine>" in caps and "pc-i440fx" in caps
    name = define(libvirtd, "plain-wrapped", domain_xml("plain-wrapped", emulator=WRAPPER))
    try:
        libvirtd.virsh("start", name)
        assert libvirtd.virsh("domstate", name).stdout.strip() == "running"
        pid = qemu_pid(libvirtd, name)
        assert os.readlink(f"/proc/{pid}/exe") == QEMU  # the wrapper exec'd QEMU in place
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"charmonitor" in b" ".join(cmdline)
        assert not any(b"attestd-qmp.sock" in arg for arg in cmdline)  # no relay
        status = libvirtd.virsh("qemu-monitor-command", name, '{"execute":"query-status"}')
        assert json.loads(status.stdout)["return"]["status"] == "running"
        libvirtd.virsh("destroy", name)
        assert libvirtd.virsh("domstate", name).stdout.strip() == "shut off"
        uuid = libvirtd.virsh("domuuid", name).stdout.strip()
        assert not list(host_settings(libvirtd.root).state_dir.glob(f"{uuid}*"))  # hook passed
    finally:
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)


def test_hook_receives_live_xml_and_metadata(libvirtd: Libvirtd, stub: StubService) -> None:
    platform = fake_platform(libvirtd.root)
    xml, meta = attestd_domain("hooked", stub.url, wrapper=None, emulator=QEMU)
    stub.routes[f"/v1/vm/{meta.vm_id}/launch"] = (200, launch_answer(policy=1))
    name = define(libvirtd, "hooked", xml)
    settings = host_settings(libvirtd.root)
    try:
        libvirtd.virsh("start", "--paused", name)
        assert libvirtd.virsh("domstate", name).stdout.strip() == "paused"
        [(path, body, _headers)] = stub.requests
        assert path == f"/v1/vm/{meta.vm_id}/launch"
        assert base64.b64decode(body["pdh"]) == platform.pdh
        assert base64.b64decode(body["cert-chain"]) == platform.cert_chain
        assert base64.b64decode(body["cpu-id"]) == platform.chip_id
        uuid = libvirtd.virsh("domuuid", name).stdout.strip()
        state = read_state(settings.state_dir, uuid)
        assert state is not None
        assert state.domain_id == int(libvirtd.virsh("domid", name).stdout.strip())
        assert state.vm_id == str(meta.vm_id) and state.launch_id == "L-1234"
        assert state.path == "agent" and state.simulate and state.policy == 1
        assert state.firmware == "/usr/share/qemu/qboot.rom"
        assert state.godh_cert == base64.b64encode(b"G" * 0x824).decode()
        libvirtd.virsh("destroy", name)
        assert read_state(settings.state_dir, uuid) is None  # release end forgets it
    finally:
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)


def test_failing_hook_aborts_the_start_with_its_message(
    libvirtd: Libvirtd, stub: StubService
) -> None:
    fake_platform(libvirtd.root)
    xml, meta = attestd_domain("refused", stub.url, wrapper=WRAPPER, emulator=QEMU)
    stub.routes[f"/v1/vm/{meta.vm_id}/launch"] = (
        404,
        {"code": 404, "status": "Not Found", "message": "no such VM",
         "errors": {"reason": "unknown_vm"}},
    )  # fmt: skip
    name = define(libvirtd, "refused", xml)
    try:
        result = libvirtd.virsh("start", name, check=False)
        assert result.returncode != 0
        assert "Hook script execution failed" in result.stderr
        expected = f"attestd: refused: service refused /vm/{meta.vm_id}/launch: HTTP 404 unknown_vm"
        assert f"{expected}: no such VM" in result.stderr
        assert libvirtd.virsh("domstate", name).stdout.strip() == "shut off"
    finally:
        libvirtd.virsh("undefine", name, check=False)


def test_marked_domain_without_the_hook_is_refused_not_run_unattested(
    libvirtd: Libvirtd, stub: StubService
) -> None:
    xml, meta = attestd_domain("unhooked", stub.url, wrapper=WRAPPER, emulator=QEMU)
    assert "ATTESTD_DOMAIN" in xml
    name = define(libvirtd, "unhooked", xml)
    try:
        with libvirtd.without_hook():
            result = libvirtd.virsh("start", name, check=False)
        assert result.returncode != 0
        assert f"unhooked is an attestd domain (ATTESTD_DOMAIN={meta.vm_id})" in result.stderr
        assert "is the attestd hook installed" in result.stderr
        assert libvirtd.virsh("domstate", name).stdout.strip() == "shut off"
        assert stub.requests == []
    finally:
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)
