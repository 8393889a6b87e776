"""End to end, simulated SEV-SNP: owner registers → prepare-domain → literal ``virsh start``
→ the guest's ``attestd-guest snp-bootstrap`` attests over the network → LUKS2 unlocked.

Real parts: the service (Flask app under werkzeug, HTTPS, SQLite) trusting the SNP
simulator's roots, a private libvirtd whose hook starts the simulated PSP from the
started domain's XML (``attestd-sim snp serve``), QEMU TCG with the small guest of
``tools/guestimage.py`` (Debian's kernel, busybox initramfs, host ``/usr`` over 9p, the
agent as a zipapp) on QEMU's user-mode network. The initdata comes from the service
(``GET /vm/<uuid>/initdata``) via ``prepare-domain`` and reaches the guest over fw_cfg.

Boots: formatted; unlocked (files in place); then three launches that get nothing and
say why: another kernel command line (service: measurement), tampered initdata (guest:
HOST_DATA, before any network), initdata and HOST_DATA rewritten together (service:
host-data).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import ssl
import subprocess
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from attestd.api import create_app
from attestd.config import Settings
from attestd.guest import initdata
from attestd.host.domain import FWCFG_INITDATA, NAMESPACE, SNP_ELEMENT
from attestd.sim.snp import SnpPlatform
from tests.conftest import PROJECT_ROOT
from tests.host.conftest import VENV_BIN, host_settings
from tests.snpfix import import_crl
from tools import guestimage
from tools.libvirtd import Libvirtd
from tools.tlscert import self_signed

pytestmark = pytest.mark.slow
OVMF = PROJECT_ROOT / "tests" / "data" / "ovmf" / "OVMF.amdsev.fd"
NAME = "e2e-snp"
PBKDF = "--pbkdf-memory=1024 --pbkdf-parallel=1 --pbkdf-force-iterations=4"
BOOT_TIMEOUT = 240.0
#: What the guest runs (tools/guestimage.py's /init runs /work/step.sh, then powers off).
STEP = f"""\
export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/usr/lib/python3/dist-packages
agent="/usr/bin/python3 -S /work/attestd-guest.pyz --run-dir /run/attestd {PBKDF}"
$agent snp-bootstrap > /work/result.json 2> /work/agent.err
echo "bootstrap-exit=$?"
echo "marker-before=$(cat /data/marker 2>/dev/null)"
echo "written-in-boot-$(cat /work/boot)" > /data/marker
grep /dev/mapper /proc/mounts
echo "app-env=$(cat /run/attestd/env/app 2>/dev/null | tr '\\n' ' ')"
umount /data
"""


@dataclass
class SnpService:
    url: str
    owner: dict[str, str]
    host_config: Path
    sim_state: Path
    ca: str

    def events(self, vm: uuidlib.UUID) -> list[dict[str, Any]]:
        reply = requests.get(
            f"{self.url}/vm/{vm}/events", headers=self.owner, timeout=10, verify=self.ca
        )
        assert reply.status_code == 200, reply.text
        events: list[dict[str, Any]] = reply.json()["events"]
        return events


class _Late:
    """The WSGI app, set once the port (which the settings name) is known."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def snp_service(libvirtd: Libvirtd) -> Iterator[SnpService]:
    """The service over HTTPS on 127.0.0.1 (the guest's 10.0.2.2), trusting the SNP simulator.

    The guest trusts it by the key pin in the initdata the service makes.
    """
    root = libvirtd.root / "snp"
    root.mkdir()
    platform = SnpPlatform.create(name="sim-snp-e2e", rsa_bits=2048)
    platform.save(root / "sim")
    platform.write_anchor(root / "anchors")
    cert, key, spki = self_signed(root)
    pin = initdata.format_pin(hashlib.sha256(spki).digest())
    late = _Late()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, late, threaded=True, ssl_context=context)
    port = server.server_port
    (root / "data").mkdir()
    settings = Settings(
        data_dir=root / "data",
        database_url=f"sqlite:///{root / 'data' / 'attestd.sqlite3'}",
        trust_anchors_dir=root / "anchors",
        kds_offline=True,
        public_urls=(f"https://10.0.2.2:{port}/v1",),
        guest_pin=pin,
    )
    import_crl(settings, platform)  # offline: the ARK's CRL is imported, as an operator does
    late.app = create_app(settings)
    principals = late.app.extensions["attestd"].services.principals
    owner = {"Authorization": f"Bearer {principals.create_owner('alice')}"}
    token = root / "host-token"
    token.write_text(principals.create_host("snp-host", owner="alice") + "\n")
    host = host_settings(libvirtd.root)  # the hook's state_dir: the PSP socket lives there
    config = root / "host.toml"
    config.write_text(
        f'state_dir = "{host.state_dir}"\nsim_state_dir = "{root / "sim"}"\n'
        f'token_file = "{token}"\nca_bundle = "{cert}"\n',
        encoding="utf-8",
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SnpService(f"https://127.0.0.1:{port}/v1", owner, config, root / "sim", str(cert))
    finally:
        server.shutdown()
        thread.join(10)
        late.app.extensions["attestd"].store.dispose()


@dataclass
class Guest:
    kernel: guestimage.Kernel
    initrd: Path
    work: Path
    data: Path

    def xml(self, vm: uuidlib.UUID, cmdline: str = guestimage.CMDLINE) -> str:
        return guestimage.domain_xml(
            NAME, self.kernel.vmlinuz, self.initrd, self.work, [("data", self.data)],
            cmdline=cmdline, network=True, uuid=str(vm),
        )  # fmt: skip


def registration() -> dict[str, Any]:
    return {
        "scheme": "amd-sev-snp",
        "policy": "0x30000",
        "secrets": [
            {"type": "volume", "name": "data", "device": "virtio:data",
             "passphrase": "snp data passphrase", "mount-point": "/data"},
            {"type": "env", "name": "app", "values": {"MODE": "snp-e2e"}},
        ],
    }  # fmt: skip


def measurement(guest: Guest, cmdline: str = guestimage.CMDLINE) -> str:
    """The launch digest of the guest as the owner builds it (OVMF, kernel, initrd, cmdline)."""
    return SnpPlatform.measure(
        OVMF.read_bytes(),
        kernel=guest.kernel.vmlinuz.read_bytes(),
        initrd=guest.initrd.read_bytes(),
        cmdline=cmdline,
    ).hex()


def prepare(libvirtd: Libvirtd, svc: SnpService, xml: str, name: str) -> Path:
    """``attestd-host prepare-domain --scheme amd-sev-snp --simulate`` (initdata from the
    service), as the operator runs it; returns the prepared XML file."""
    plain, prepared = libvirtd.root / f"{name}.xml", libvirtd.root / f"{name}-attestd.xml"
    plain.write_text(xml, encoding="utf-8")
    result = subprocess.run(
        [str(VENV_BIN / "attestd-host"), "--config", str(svc.host_config), "prepare-domain",
         "--xml", str(plain), "--service", svc.url, "--scheme", "amd-sev-snp", "--simulate",
         "--firmware", str(OVMF), "--sim-state", str(svc.sim_state), "-o", str(prepared)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(from the service)" in result.stderr
    return prepared


def boot(libvirtd: Libvirtd, guest: Guest, number: int) -> dict[str, str]:
    """Literal ``virsh start``; wait for the guest to power off; its facts and outputs."""
    for name in ("step.log", "result.json", "agent.err", "console.log"):
        (guest.work / name).unlink(missing_ok=True)
    (guest.work / "boot").write_text(f"{number}\n")
    libvirtd.virsh("start", NAME)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while libvirtd.virsh("domstate", NAME).stdout.strip() != "shut off":
        assert time.monotonic() < deadline, "the guest did not power off"
        time.sleep(0.5)
    log = (guest.work / "step.log").read_text(errors="replace")
    facts = guestimage.step_facts(log)
    facts["log"] = log
    facts["err"] = (guest.work / "agent.err").read_text(errors="replace")
    facts["result"] = (guest.work / "result.json").read_text(errors="replace")
    return facts


def redefine(libvirtd: Libvirtd, xml_file: Path, edit: Any = None) -> ET.Element:
    """``virsh define`` the prepared XML, after ``edit(root)`` if given; returns the root."""
    root = ET.parse(xml_file).getroot()
    if edit is not None:
        edit(root)
    path = libvirtd.root / f"{NAME}-defined.xml"
    path.write_text(ET.tostring(root, encoding="unicode"), encoding="utf-8")
    libvirtd.virsh("define", str(path))
    return root


def _fwcfg(root: ET.Element) -> ET.Element:
    entry = root.find(f"sysinfo[@type='fwcfg']/entry[@name='{FWCFG_INITDATA}']")
    assert entry is not None and entry.text
    return entry


def _retimed(root: ET.Element) -> bytes:
    """The domain's initdata with another retry budget (same service, same pin)."""
    document = base64.b64decode(_fwcfg(root).text or "")
    changed = dataclasses.replace(initdata.parse(document), retry_seconds=30).encode()
    assert changed != document
    return changed


def _tamper_initdata(root: ET.Element) -> None:
    _fwcfg(root).text = base64.b64encode(_retimed(root)).decode()


def _rewrite_initdata_and_host_data(root: ET.Element) -> None:
    document = _retimed(root)
    _fwcfg(root).text = base64.b64encode(document).decode()
    meta = root.find(f"metadata/{{{NAMESPACE}}}{SNP_ELEMENT}")
    assert meta is not None
    meta.set("host-data", hashlib.sha256(document).hexdigest())


def _last_attest(svc: SnpService, vm: uuidlib.UUID) -> dict[str, Any]:
    attests = [e for e in svc.events(vm) if e["kind"] == "attest"]
    assert attests, svc.events(vm)
    return attests[-1]


def test_snp_virsh_start_attests_and_unlocks_then_refusals_say_why(
    libvirtd: Libvirtd, snp_service: SnpService, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    kernel = guestimage.ensure_kernel()
    guest = Guest(kernel, guestimage.build_initramfs(kernel, tmp_path / "initrd"), work,
                  tmp_path / "data.img")  # fmt: skip
    guestimage.build_zipapp(work / "attestd-guest.pyz")
    (work / "step.sh").write_text(STEP)
    with guest.data.open("wb") as fh:
        fh.truncate(48 << 20)
    vm = uuidlib.uuid4()
    body = registration() | {"launch-digests": [measurement(guest)]}
    reply = requests.post(f"{snp_service.url}/vm/{vm}", json=body, headers=snp_service.owner,
                          timeout=10, verify=snp_service.ca)  # fmt: skip
    assert reply.status_code == 201, reply.text
    prepared = prepare(libvirtd, snp_service, guest.xml(vm), NAME)
    psp_pid = host_settings(libvirtd.root).state_dir / f"{vm}.psp.pid"
    try:
        redefine(libvirtd, prepared)
        first = boot(libvirtd, guest, 1)
        assert first.get("bootstrap-exit") == "0", first
        result = json.loads(first["result"])
        assert result["volumes"]["data"]["actions"] == ["luks-formatted", "opened", "mkfs",
                                                        "mounted"]  # fmt: skip
        assert "/dev/mapper/data /data ext4" in first["log"]
        assert not psp_pid.exists()  # released with the domain
        assert _last_attest(snp_service, vm)["outcome"] == "released"

        second = boot(libvirtd, guest, 2)
        assert second.get("bootstrap-exit") == "0", second
        assert json.loads(second["result"])["volumes"]["data"]["actions"] == ["opened", "mounted"]
        assert second["marker-before"] == "written-in-boot-1"
        assert "MODE" in second["app-env"] and "snp-e2e" in second["app-env"], second
        assert "snp data passphrase" not in second["log"] + second["err"]

        # another kernel command line: the PSP measures it, the service refuses
        redefine(libvirtd, prepared, lambda root: root.find("os/cmdline").__setattr__(
            "text", guestimage.CMDLINE + " quiet"))  # fmt: skip
        other = boot(libvirtd, guest, 3)
        assert other.get("bootstrap-exit") == "7", other
        # the guest (no token) learns only not_accepted; the owner's events say why
        assert "not_accepted" in other["err"], other["err"]
        assert "measurement_not_accepted" not in other["err"], other["err"]
        refused = _last_attest(snp_service, vm)
        assert refused["outcome"] != "released"
        assert "measurement_not_accepted" in json.dumps(refused["detail"]["failed"])

        # tampered initdata: the guest refuses before it talks to anyone
        events_before = len(snp_service.events(vm))
        redefine(libvirtd, prepared, _tamper_initdata)
        tampered = boot(libvirtd, guest, 4)
        assert tampered.get("bootstrap-exit") == "7", tampered
        assert "HOST_DATA" in tampered["err"], tampered["err"]
        assert len(snp_service.events(vm)) == events_before

        # initdata and HOST_DATA rewritten together: the service refuses the host-data
        redefine(libvirtd, prepared, _rewrite_initdata_and_host_data)
        rewritten = boot(libvirtd, guest, 5)
        assert rewritten.get("bootstrap-exit") == "7", rewritten
        assert "not_accepted" in rewritten["err"], rewritten["err"]
        refused = _last_attest(snp_service, vm)
        assert refused["outcome"] != "released"
        assert refused["detail"]["failed"] == [
            "host_data_mismatch: HOST_DATA is not the expected value"
        ]
        # nothing was unlocked by a refused boot: the marker is still boot 2's
        assert rewritten["marker-before"] == ""
    finally:
        libvirtd.virsh("destroy", NAME, check=False)
        libvirtd.virsh("undefine", NAME, check=False)
    assert not psp_pid.exists()
