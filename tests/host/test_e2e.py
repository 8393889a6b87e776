"""End to end: real service + attestd.sim + real libvirtd/QEMU.

A plain ``virsh start`` of a simulated-SEV domain gets its secret injected
before the first ``cont``; a wrong measurement keeps the CPUs from ever running
and ``virsh start`` fails with the service's reason. The paused-start path runs
through the host agent. libvirtd restarting does not disturb the relay.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from attestd.api import create_app
from attestd.config import Settings
from attestd.host.agent import Agent
from attestd.host.cli import main as host_main
from attestd.host.domain import AttestdMetadata
from attestd.host.sim import SIM_RESULT_SUFFIX
from attestd.sev.secrets import LUKS_KEY_GUID, parse_secret_table
from attestd.sim.platform import GuestState, SimulatedPlatform
from tests.host.conftest import WRAPPER, host_settings
from tests.host.domains import QBOOT, attestd_domain, domain_xml
from tools.libvirtd import Libvirtd

pytestmark = pytest.mark.slow
QEMU = "/usr/bin/qemu-system-x86_64"
RAW_GUID = "0b5f7a3e-52a1-4c1b-9f0e-6e8a7b6c5d4f"


@dataclass
class Service:
    url: str
    owner: dict[str, str]
    root: Path
    #: rewrites the JSON body of a /validate request before the service sees it
    tamper_validate: Callable[[dict[str, Any]], None] | None = None

    def register(self, vm_id: uuidlib.UUID, firmware_hash: str) -> None:
        body: dict[str, Any] = {
            "scheme": "amd-sev",
            "policy": 1,
            "cpu-count": 1,
            "firmware-hashes": [firmware_hash],
            "secrets": [
                {"type": "luks-passphrase", "passphrase": "correct horse battery staple"},
                {"type": "raw", "guid": RAW_GUID, "data": base64.b64encode(b"raw!").decode()},
            ],
        }
        r = requests.post(f"{self.url}/vm/{vm_id}", json=body, headers=self.owner, timeout=10)
        assert r.status_code in (200, 201), r.text


class TamperingProxy:
    """WSGI middleware: a lying host's view of /validate (the service itself is real)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.svc: Service | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        tamper = self.svc.tamper_validate if self.svc is not None else None
        if tamper is not None and environ["PATH_INFO"].endswith("/validate"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            doc = json.loads(environ["wsgi.input"].read(length))
            tamper(doc)
            body = json.dumps(doc).encode()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        result: Iterable[bytes] = self.app(environ, start_response)
        return result


@pytest.fixture(scope="module")
def service(libvirtd: Libvirtd) -> Iterator[Service]:
    """The real service on a SQLite file, trusting the simulator's ARK; host token required."""
    root = libvirtd.root
    settings = host_settings(root)
    platform = SimulatedPlatform.create(name="simhost")
    platform.save(settings.sim_state_dir)
    platform.write_trust_anchor(root / "anchors")
    data = root / "service"
    data.mkdir()
    app = create_app(
        Settings(
            data_dir=data,
            database_url=f"sqlite:///{data / 'attestd.sqlite3'}",
            trust_anchors_dir=root / "anchors",
            kds_offline=True,
            require_host_token=True,
        )
    )
    svc = app.extensions["attestd"].services.principals
    owner = {"Authorization": f"Bearer {svc.create_owner('alice')}"}
    assert settings.token_file is not None
    settings.token_file.write_text(svc.create_host("host-under-test") + "\n")
    proxy = TamperingProxy(app)
    server = make_server("127.0.0.1", 0, proxy, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env_config = str(root / "attestd" / "host.toml")
    # the platform cache, as an operator makes it
    assert host_main(["--config", env_config, "refresh-platform", "--source", "sim"]) == 0
    proxy.svc = Service(f"http://127.0.0.1:{server.server_port}/v1", owner, root)
    yield proxy.svc
    server.shutdown()
    app.extensions["attestd"].store.dispose()


def qboot_hash() -> str:
    return hashlib.sha256(Path(QBOOT).read_bytes()).hexdigest()


def sim_guest(root: Path, domain_uuid: str) -> tuple[GuestState, bytes | None]:
    settings = host_settings(root)
    result = settings.state_dir / f"{domain_uuid}{SIM_RESULT_SUFFIX}"
    handle = json.loads(result.read_text())["handle"]
    platform = SimulatedPlatform.load(settings.sim_state_dir)
    return platform.guest_state(handle), platform.secret_table(handle)


def agent_domain(libvirtd: Libvirtd, service: Service, name: str) -> tuple[str, AttestdMetadata]:
    """An agent-path domain whose secret-area socket the agent (outside libvirtd's
    mount namespace) can reach."""
    return attestd_domain(
        name, service.url, wrapper=None, emulator=QEMU, channel=libvirtd.root / f"{name}.sock"
    )


def define(libvirtd: Libvirtd, name: str, xml: str) -> str:
    path = libvirtd.root / f"{name}.xml"
    path.write_text(xml, encoding="utf-8")
    libvirtd.virsh("define", str(path))
    return libvirtd.virsh("domuuid", name).stdout.strip()


def host_cli(libvirtd: Libvirtd, *argv: str) -> subprocess.CompletedProcess[str]:
    """``attestd-host --config <the test host.toml> ARGV... --connect <the private libvirtd>``."""
    config = str(libvirtd.root / "attestd" / "host.toml")
    cli = [str(Path(WRAPPER).with_name("attestd-host")), "--config", config]
    return subprocess.run(
        [*cli, *argv, "--connect", libvirtd.uri],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_registered_secrets(table: bytes | None) -> None:
    assert table is not None
    entries = {str(e.guid): e.data for e in parse_secret_table(table)}
    assert entries[str(LUKS_KEY_GUID)] == b"correct horse battery staple\0"
    assert entries[RAW_GUID] == b"raw!"


def test_plain_virsh_start_injects_before_first_cont_and_survives_reconnect(
    libvirtd: Libvirtd, service: Service
) -> None:
    xml, meta = attestd_domain("e2e-wrapped", service.url, wrapper=WRAPPER, emulator=QEMU)
    service.register(meta.vm_id, qboot_hash())
    uuid = define(libvirtd, "e2e-wrapped", xml)
    try:
        libvirtd.virsh("start", "e2e-wrapped")
        assert libvirtd.virsh("domstate", "e2e-wrapped").stdout.strip() == "running"
        state, table = sim_guest(libvirtd.root, uuid)
        # LAUNCH_SECRET is only accepted in LSECRET; RUNNING comes from the held cont
        assert state == GuestState.RUNNING
        assert_registered_secrets(table)
        log = (libvirtd.root / "log" / "qemu" / "e2e-wrapped.log").read_text()
        assert log.index("holding the first cont") < log.index("secret injected")
        # libvirtd restarts: it reconnects to the relay, which stays transparent
        libvirtd.restart()
        assert libvirtd.virsh("domstate", "e2e-wrapped").stdout.strip() == "running"
        libvirtd.virsh("suspend", "e2e-wrapped")
        libvirtd.virsh("resume", "e2e-wrapped")
        status = libvirtd.virsh("qemu-monitor-command", "e2e-wrapped", '{"execute":"query-status"}')
        assert json.loads(status.stdout)["return"]["status"] == "running"
    finally:
        libvirtd.virsh("destroy", "e2e-wrapped", check=False)
        libvirtd.virsh("undefine", "e2e-wrapped", check=False)


def test_wrong_measurement_cpus_never_run_and_start_fails_with_reason(
    libvirtd: Libvirtd, service: Service
) -> None:
    xml, meta = attestd_domain("e2e-wrong", service.url, wrapper=WRAPPER, emulator=QEMU)
    service.register(meta.vm_id, hashlib.sha256(b"some other firmware").hexdigest())
    uuid = define(libvirtd, "e2e-wrong", xml)
    try:
        result = libvirtd.virsh("start", "e2e-wrong", check=False)
        assert result.returncode != 0
        assert "unable to execute QEMU command 'cont'" in result.stderr
        assert "measurement_mismatch" in result.stderr
        assert libvirtd.virsh("domstate", "e2e-wrong").stdout.strip() == "shut off"
        state, table = sim_guest(libvirtd.root, uuid)
        assert state == GuestState.LSECRET and table is None  # never ran, nothing released
    finally:
        libvirtd.virsh("destroy", "e2e-wrong", check=False)
        libvirtd.virsh("undefine", "e2e-wrong", check=False)


def _later_build(doc: dict[str, Any]) -> None:
    doc["build-id"] += 1  # the host claims another firmware build than the one measured


def _flipped_measure(doc: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(doc["measurement"]))
    raw[0] ^= 1  # the HMAC part of measure || mnonce
    doc["measurement"] = base64.b64encode(raw).decode()


@pytest.mark.parametrize("tamper", [_later_build, _flipped_measure], ids=["build", "hmac"])
def test_firmware_matches_but_measurement_hmac_does_not(
    libvirtd: Libvirtd, service: Service, tamper: Callable[[dict[str, Any]], None]
) -> None:
    name = f"e2e-hmac-{tamper.__name__.strip('_')}"
    xml, meta = attestd_domain(name, service.url, wrapper=WRAPPER, emulator=QEMU)
    service.register(meta.vm_id, qboot_hash())  # the reported firmware hash is accepted
    uuid = define(libvirtd, name, xml)
    service.tamper_validate = tamper
    try:
        result = libvirtd.virsh("start", name, check=False)
        assert result.returncode != 0
        assert "unable to execute QEMU command 'cont'" in result.stderr
        assert "HTTP 403 measurement_mismatch" in result.stderr
        # the reported firmware is an accepted candidate, but the measure (HMAC) is not its
        assert f"firmware {qboot_hash()[:16]} (sev, kernel hashes off)" in result.stderr
        assert "is not an accepted firmware" not in result.stderr
        assert "launch measurement does not match any accepted launch digest" in result.stderr
        assert libvirtd.virsh("domstate", name).stdout.strip() == "shut off"
        state, table = sim_guest(libvirtd.root, uuid)
        assert state == GuestState.LSECRET and table is None  # never ran, nothing released
    finally:
        service.tamper_validate = None
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)


def test_wrapped_domain_started_paused_is_attested_on_resume(
    libvirtd: Libvirtd, service: Service
) -> None:
    xml, meta = attestd_domain("e2e-paused", service.url, wrapper=WRAPPER, emulator=QEMU)
    service.register(meta.vm_id, qboot_hash())
    uuid = define(libvirtd, "e2e-paused", xml)
    try:
        libvirtd.virsh("start", "--paused", "e2e-paused")
        assert libvirtd.virsh("domstate", "e2e-paused").stdout.strip() == "paused"
        assert not (host_settings(libvirtd.root).state_dir / f"{uuid}{SIM_RESULT_SUFFIX}").exists()
        libvirtd.virsh("resume", "e2e-paused")
        assert libvirtd.virsh("domstate", "e2e-paused").stdout.strip() == "running"
        state, table = sim_guest(libvirtd.root, uuid)
        assert state == GuestState.RUNNING
        assert_registered_secrets(table)
    finally:
        libvirtd.virsh("destroy", "e2e-paused", check=False)
        libvirtd.virsh("undefine", "e2e-paused", check=False)


def wait_state(libvirtd: Libvirtd, name: str, want: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := libvirtd.virsh("domstate", name).stdout.strip()) != want:
        assert time.monotonic() < deadline, f"{name} stayed {got}, wanted {want}"
        time.sleep(0.2)


@pytest.fixture
def agent(libvirtd: Libvirtd) -> Iterator[Agent]:
    running = Agent(host_settings(libvirtd.root), libvirtd.uri)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=30)


def test_agent_attests_paused_start_and_destroys_on_failure(
    libvirtd: Libvirtd, service: Service, agent: Agent
) -> None:
    good_xml, good = agent_domain(libvirtd, service, "e2e-agent")
    bad_xml, bad = agent_domain(libvirtd, service, "e2e-agent-bad")
    service.register(good.vm_id, qboot_hash())
    service.register(bad.vm_id, hashlib.sha256(b"not qboot").hexdigest())
    good_uuid = define(libvirtd, "e2e-agent", good_xml)
    bad_uuid = define(libvirtd, "e2e-agent-bad", bad_xml)
    try:
        libvirtd.virsh("start", "--paused", "e2e-agent")
        wait_state(libvirtd, "e2e-agent", "running")  # lifecycle event -> attest -> resume
        state, table = sim_guest(libvirtd.root, good_uuid)
        assert state == GuestState.RUNNING
        assert_registered_secrets(table)
        libvirtd.virsh("start", "--paused", "e2e-agent-bad")
        wait_state(libvirtd, "e2e-agent-bad", "shut off")  # destroyed, never resumed
        state, table = sim_guest(libvirtd.root, bad_uuid)
        assert state == GuestState.LSECRET and table is None
    finally:
        for name in ("e2e-agent", "e2e-agent-bad"):
            libvirtd.virsh("destroy", name, check=False)
            libvirtd.virsh("undefine", name, check=False)


def test_agent_destroys_an_agent_path_domain_started_without_the_hook(
    libvirtd: Libvirtd, service: Service, agent: Agent
) -> None:
    xml, meta = agent_domain(libvirtd, service, "e2e-nohook")
    service.register(meta.vm_id, qboot_hash())
    define(libvirtd, "e2e-nohook", xml)
    try:
        with libvirtd.without_hook():
            libvirtd.virsh("start", "e2e-nohook")  # no launch state, no attestation
        wait_state(libvirtd, "e2e-nohook", "shut off")  # ...so the agent destroys it
    finally:
        libvirtd.virsh("destroy", "e2e-nohook", check=False)
        libvirtd.virsh("undefine", "e2e-nohook", check=False)


def test_agent_destroys_unattested_running_domain_and_owns_autostart(
    libvirtd: Libvirtd, service: Service
) -> None:
    plain_xml, plain = agent_domain(libvirtd, service, "e2e-unpaused")
    auto_xml, auto = agent_domain(libvirtd, service, "e2e-auto")
    auto_xml = auto_xml.replace('simulate="yes"', 'simulate="yes" autostart="yes"')
    service.register(plain.vm_id, qboot_hash())
    service.register(auto.vm_id, qboot_hash())
    define(libvirtd, "e2e-unpaused", plain_xml)
    auto_uuid = define(libvirtd, "e2e-auto", auto_xml)
    running = Agent(host_settings(libvirtd.root), libvirtd.uri)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        wait_state(libvirtd, "e2e-auto", "running")  # agent autostart: paused, attested, resumed
        assert_registered_secrets(sim_guest(libvirtd.root, auto_uuid)[1])
        libvirtd.virsh("start", "e2e-unpaused")  # not --paused: runs without attestation
        wait_state(libvirtd, "e2e-unpaused", "shut off")  # ...so the agent destroys it
    finally:
        running.stop()
        thread.join(timeout=30)
        for name in ("e2e-unpaused", "e2e-auto"):
            libvirtd.virsh("destroy", name, check=False)
            libvirtd.virsh("undefine", name, check=False)


def test_attestd_host_start_command(libvirtd: Libvirtd, service: Service) -> None:
    xml, meta = agent_domain(libvirtd, service, "e2e-cli")
    service.register(meta.vm_id, qboot_hash())
    uuid = define(libvirtd, "e2e-cli", xml)
    try:
        result = host_cli(libvirtd, "start", "e2e-cli")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "domain e2e-cli attested and running\n"
        assert libvirtd.virsh("domstate", "e2e-cli").stdout.strip() == "running"
        assert_registered_secrets(sim_guest(libvirtd.root, uuid)[1])
        # a second launch of the same domain gets a fresh session and is attested again
        libvirtd.virsh("destroy", "e2e-cli")
        result = host_cli(libvirtd, "start", "e2e-cli")
        assert result.returncode == 0, result.stderr
    finally:
        libvirtd.virsh("destroy", "e2e-cli", check=False)
        libvirtd.virsh("undefine", "e2e-cli", check=False)


def test_attestd_host_start_of_a_wrapped_domain_tells_the_truth(
    libvirtd: Libvirtd, service: Service
) -> None:
    """A wrapped domain is not left paused and unvalidated behind an "attested" message."""
    xml, meta = attestd_domain("e2e-cli-wrapped", service.url, wrapper=WRAPPER, emulator=QEMU)
    service.register(meta.vm_id, qboot_hash())
    uuid = define(libvirtd, "e2e-cli-wrapped", xml)
    try:
        result = host_cli(libvirtd, "start", "e2e-cli-wrapped")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "domain e2e-cli-wrapped attested and running\n"
        assert libvirtd.virsh("domstate", "e2e-cli-wrapped").stdout.strip() == "running"
        state, table = sim_guest(libvirtd.root, uuid)
        assert state == GuestState.RUNNING
        assert_registered_secrets(table)
        # a refused validation: the start fails with the reason, the domain is not running
        libvirtd.virsh("destroy", "e2e-cli-wrapped")
        service.tamper_validate = lambda doc: doc.update(measurement=base64.b64encode(
            bytes(48)).decode())  # fmt: skip
        try:
            result = host_cli(libvirtd, "start", "e2e-cli-wrapped")
        finally:
            service.tamper_validate = None
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""
        assert "attestd-host: libvirt:" in result.stderr
        assert "HTTP 403 measurement_mismatch" in result.stderr
        assert libvirtd.virsh("domstate", "e2e-cli-wrapped").stdout.strip() == "shut off"
    finally:
        libvirtd.virsh("destroy", "e2e-cli-wrapped", check=False)
        libvirtd.virsh("undefine", "e2e-cli-wrapped", check=False)


def test_attestd_host_start_refuses_a_plain_domain(libvirtd: Libvirtd, service: Service) -> None:
    del service
    define(libvirtd, "e2e-cli-plain", domain_xml("e2e-cli-plain", emulator=QEMU))
    try:
        result = host_cli(libvirtd, "start", "e2e-cli-plain")
        assert result.returncode == 1 and result.stdout == ""
        assert "e2e-cli-plain is not an attestd domain" in result.stderr
        assert libvirtd.virsh("domstate", "e2e-cli-plain").stdout.strip() == "shut off"
    finally:
        libvirtd.virsh("undefine", "e2e-cli-plain", check=False)
