"""``bash tools/demo``: the whole attestd story on the SEV or SEV-SNP simulator, then torn down.

Run as root on a Debian machine prepared by ``tools/setup --dev``. Everything lives in
one temporary directory and a private mount namespace; nothing on the host changes
(except empty mount points libvirt's directories are bound over) and nothing is left
running. Steps:

1. the guest image (Debian's kernel, a busybox initramfs, the ``attestd-guest`` zipapp);
2. a simulated SEV platform (``attestd-sim init``) and its ARK/ASK as trust anchor;
3. ``attestd serve`` on a free loopback port (SQLite in the temporary directory);
4. an owner and a host token;
5. the owner registers the VM: the firmware (qboot) and two LUKS2 volumes, one with
   the owner's passphrase, one whose passphrase the service generates;
6. a private libvirtd with the attestd hook (``attestd-host install-hook``);
7. ``attestd-host refresh-platform --source sim`` and ``prepare-domain --simulate``;
8. ``virsh start``: hook -> ``/launch``; ``attestd-qemu`` holds the first ``cont`` ->
   simulated LAUNCH_MEASURE -> ``/validate`` -> simulated LAUNCH_SECRET, whose table
   reaches the guest through the simulated secret area; the guest's ``attestd-guest``
   formats, opens and mounts both disks;
9. a second ``virsh start``: the disks are opened, not formatted again;
10. the owner accepts another firmware only (``PUT``): ``virsh start`` is refused, the
    events API says why, nothing is released and the guest never runs.

``--scheme amd-sev-snp`` (:class:`SnpDemo`) tells the same story on the simulated SEV-SNP
platform: ``attestd-sim snp init``, its anchor and CRL (step 2); the service over HTTPS,
guests trusting its key pin (3); the owner registers the policy, the launch digest of
``attestd digest --mode snp`` and the two volumes, and reads the HOST_DATA of the initdata
the service made (5); ``prepare-domain --scheme amd-sev-snp --simulate`` (7); each ``virsh
start`` makes the hook start the domain's simulated PSP, and the guest's ``attestd-guest
snp-bootstrap`` attests over QEMU's user-mode network (8, 9); after the owner accepts
another launch digest only, the guest runs but gets nothing and the events API says why (10).

Exit status 0 when every step passed, 1 otherwise (the failing step is named).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from attestd.guest import initdata
from tools import guestimage, tlscert
from tools.libvirtd import Libvirtd, prepare_root, start_libvirtd

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
QBOOT = guestimage.QBOOT
DOMAIN = "attestd-demo"
PBKDF = "--pbkdf-memory=1024 --pbkdf-parallel=1 --pbkdf-force-iterations=4"
DATA_PASSPHRASE = "owner-chosen passphrase for data"  # noqa: S105 - the demo's own value
BOOT_TIMEOUT = 300.0
STEPS = 10

#: What the guest runs (``/init`` of tools/guestimage.py runs /work/step.sh).
STEP = f"""\
export PYTHONDONTWRITEBYTECODE=1
echo "guest: booted after $(cut -d' ' -f1 /proc/uptime) s"
python3 -S /work/attestd-guest.pyz --run-dir /run/attestd {PBKDF} bootstrap > /work/result.json
echo "bootstrap-exit=$?"
grep /dev/mapper /proc/mounts
echo "marker-before=$(cat /data/marker 2>/dev/null)"
echo "written in boot $(cat /work/boot)" > /data/marker
umount /data /scratch
"""


class DemoFailed(Exception):
    """A step did not do what it should."""


def say(line: str = "") -> None:
    print(f"        {line}" if line else "", flush=True)


def run(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)
    if check and done.returncode != 0:
        raise DemoFailed(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def domain_xml(root: Path, kernel: Path, initrd: Path) -> str:
    """The guest: qboot (the measured firmware), direct kernel boot, two disks, 9p shares."""
    disks = [(name, root / f"{name}.img") for name in ("data", "scratch")]
    return guestimage.domain_xml(DOMAIN, kernel, initrd, root / "work", disks)


class Demo:
    """The demo's state; :meth:`teardown` undoes whatever was started."""

    steps = STEPS

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.service: subprocess.Popen[bytes] | None = None
        self.libvirtd: Libvirtd | None = None
        self.url = ""
        self.owner: dict[str, str] = {}
        self.vm = uuid.uuid4()
        self.host_config = root / "attestd" / "host.toml"
        self.token_file = root / "attestd" / "host-token"
        #: how requests checks the service's certificate (a CA file for the HTTPS service)
        self.verify: bool | str = True
        self.step = 0

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        self.step += 1
        started = time.monotonic()
        print(f"[{self.step:2d}/{self.steps}] {title}", flush=True)
        try:
            yield
        except DemoFailed as exc:
            raise DemoFailed(f"step {self.step} ({title}): {exc}") from exc
        print(f"        ok ({time.monotonic() - started:.1f} s)", flush=True)

    def service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ATTESTD_CONFIG": "",
                "ATTESTD_DATA_DIR": str(self.root / "service"),
                "ATTESTD_TRUST_ANCHORS_DIR": str(self.root / "anchors"),
                "ATTESTD_KDS_OFFLINE": "1",
                "ATTESTD_REQUIRE_HOST_TOKEN": "1",
                "ATTESTD_WORKERS": "1",
            }
        )
        env.pop("ATTESTD_DATABASE_URL", None)
        return env

    def attestd_host(self, *args: str) -> str:
        return run([str(BIN / "attestd-host"), "--config", str(self.host_config), *args])

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.libvirtd is not None
        done = self.libvirtd.virsh(*args, check=False, timeout=BOOT_TIMEOUT)
        if check and done.returncode != 0:
            raise DemoFailed(f"virsh {' '.join(args)}: {done.stderr.strip()}")
        return done

    def api(self, method: str, path: str, body: Any = None) -> Any:
        reply = requests.request(
            method, f"{self.url}{path}", json=body, headers=self.owner, timeout=30,
            verify=self.verify,
        )  # fmt: skip
        if reply.status_code >= 300:
            raise DemoFailed(f"{method} {path}: HTTP {reply.status_code} {reply.text.strip()}")
        return reply.json() if reply.content else None

    def registration(self, firmware_hash: str) -> dict[str, Any]:
        return {
            "scheme": "amd-sev",
            "policy": 1,
            "cpu-count": 1,
            "firmware-hashes": [firmware_hash],
            "secrets": [
                {"type": "volume", "name": "data", "device": "virtio:data",
                 "passphrase": DATA_PASSPHRASE, "mount-point": "/data"},
                {"type": "volume", "name": "scratch", "device": "virtio:scratch",
                 "generate": True, "mount-point": "/scratch"},
            ],
        }  # fmt: skip

    def guest_image(self, step: str) -> tuple[guestimage.Kernel, Path]:
        """The guest's kernel and initramfs, the agent and ``step`` in ``work``, two disks."""
        self.work.mkdir()
        kernel = guestimage.ensure_kernel()
        initrd = guestimage.build_initramfs(kernel, self.root / "initrd.cpio")
        guestimage.build_zipapp(self.work / "attestd-guest.pyz")
        (self.work / "step.sh").write_text(step)
        for name in ("data", "scratch"):
            with (self.root / f"{name}.img").open("wb") as fh:
                fh.truncate(48 << 20)
        say(f"kernel {kernel.vmlinuz}, two blank 48 MiB disks: data, scratch")
        return kernel, initrd

    def start_service(self, port: int, *gunicorn: str) -> None:
        """``attestd serve`` on ``port`` (with ``gunicorn`` options); wait for ``/healthz``."""
        scheme = "https" if gunicorn else "http"
        (self.root / "service").mkdir(exist_ok=True)
        log = (self.root / "service.log").open("ab")
        self.service = subprocess.Popen(
            [str(BIN / "attestd"), "serve", "--bind", f"127.0.0.1:{port}",
             *(["--", *gunicorn] if gunicorn else [])],
            env=self.service_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                health = f"{scheme}://127.0.0.1:{port}/healthz"
                if requests.get(health, timeout=5, verify=self.verify).ok:
                    break
            except requests.RequestException:
                pass
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(f"the service did not come up; see {self.root}/service.log")
            time.sleep(0.3)

    def create_tokens(self) -> None:
        """``attestd owner create alice`` and ``attestd host create demo-host``."""
        env = self.service_env()
        owner = run([str(BIN / "attestd"), "owner", "create", "alice"], env=env)
        self.owner = {"Authorization": f"Bearer {owner.strip().splitlines()[-1]}"}
        host = run([str(BIN / "attestd"), "host", "create", "demo-host"], env=env)
        (self.root / "attestd").mkdir()
        self.token_file.write_text(host.strip().splitlines()[-1] + "\n")
        self.token_file.chmod(0o600)
        say("owner token for alice; host token in the host's token_file")

    def start_libvirtd(self) -> None:
        """The attestd hook into the private libvirt root, then its libvirtd."""
        self.attestd_host("install-hook", "--dir", str(self.root / "etc/hooks/qemu.d"))
        self.libvirtd = start_libvirtd(self.root)
        say(f"virsh -c '{self.libvirtd.uri}'")

    def wait_shut_off(self, started: float) -> None:
        deadline = started + BOOT_TIMEOUT
        while self.virsh("domstate", DOMAIN).stdout.strip() != "shut off":
            if time.monotonic() > deadline:
                raise DemoFailed(f"the guest did not finish within {BOOT_TIMEOUT:.0f} s")
            time.sleep(1)

    # -- the steps --------------------------------------------------------------------------

    def run(self) -> None:
        print("attestd demo: a confidential VM's launch on the SEV simulator, end to end")
        print(f"        working directory {self.root}")
        with self.stage("guest image: Debian kernel, busybox initramfs, attestd-guest zipapp"):
            kernel, initrd = self.guest_image(STEP)

        with self.stage("simulated SEV platform: attestd-sim init, trust anchor for the service"):
            sim = self.root / "sim"
            run([str(BIN / "attestd-sim"), "init", "--dir", str(sim), "--name", "demo-sim"])
            anchors = self.root / "anchors"
            run(
                [str(BIN / "attestd-sim"), "trust-anchor", "--dir", str(sim), "--out", str(anchors)]
            )
            say(f"ARK/ASK of the simulator in {anchors}/demo-sim (ATTESTD_TRUST_ANCHORS_DIR)")

        with self.stage("service: attestd serve on a free loopback port"):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}/v1"
            self.start_service(port)
            say(f"{self.url} (SQLite in {self.root}/service, host tokens required)")

        with self.stage("tokens: attestd owner create alice, attestd host create demo-host"):
            self.create_tokens()

        qboot_hash = hashlib.sha256(QBOOT.read_bytes()).hexdigest()
        with self.stage(f"owner registers VM {self.vm}"):
            reply = self.api("POST", f"/vm/{self.vm}", self.registration(qboot_hash))
            say(f"accepted firmware: sha256(qboot.rom) = {qboot_hash[:16]}...")
            kinds = [s.get("name", s["type"]) for s in reply["registration"]["secrets"]]
            say(f"volumes: {', '.join(kinds)} (data: owner passphrase; scratch: generated)")

        with self.stage("host: private libvirtd (own mount namespace) with the attestd hook"):
            prepare_root(self.root)
            self.host_config.write_text(
                f'state_dir = "{self.root / "state"}"\n'
                f'platform_cache = "{self.root / "platform.json"}"\n'
                f'sim_state_dir = "{sim}"\n'
                f'token_file = "{self.token_file}"\n'
                "allow_http = true\n",
                encoding="utf-8",
            )
            self.start_libvirtd()

        with self.stage("host: refresh-platform --source sim, prepare-domain --simulate, define"):
            self.attestd_host("refresh-platform", "--source", "sim")
            plain = self.root / "guest.xml"
            plain.write_text(domain_xml(self.root, kernel.vmlinuz, initrd))
            prepared = self.root / "guest-attestd.xml"
            self.attestd_host(
                "prepare-domain", "--simulate", "--xml", str(plain), "--service", self.url,
                "--vm-id", str(self.vm), "-o", str(prepared),
            )  # fmt: skip
            self.virsh("define", str(prepared))
            say("emulator attestd-qemu, <attestd:launch simulate='yes'>, simulated secret area")

        with self.stage("virsh start #1: attested, secret delivered, disks formatted and mounted"):
            first = self.boot(1)
            self.expect(first, "data", ["luks-formatted", "opened", "mkfs", "mounted"])
            self.expect(first, "scratch", ["luks-formatted", "opened", "mkfs", "mounted"])

        with self.stage("virsh start #2: attested again, disks unlocked, not reformatted"):
            second = self.boot(2)
            self.expect(second, "data", ["opened", "mounted"])
            self.expect(second, "scratch", ["opened", "mounted"])
            if second["marker-before"] != "written in boot 1":
                raise DemoFailed(f"data lost its content: {second['marker-before']!r}")
            say("/data still holds the file written in boot 1")

        with self.stage("owner accepts another firmware only (PUT): virsh start is refused"):
            self.refused_start()

        print()
        print("demo: all steps passed")
        events = f"{self.url}/vm/{self.vm}/events"
        print(f"        events API:  curl -H 'Authorization: Bearer <owner token>' {events}")
        print(f"        service log: {self.root}/service.log")
        print(f"        host logs:   {self.root}/log/qemu/{DOMAIN}.log (attestd-qemu), "
              f"{self.root}/libvirtd.log")  # fmt: skip
        print(f"        guest:       {self.work}/console.log, {self.work}/step.log")

    def start_guest(self, number: int) -> None:
        """``virsh start`` of boot ``number`` (the guest's files of the last boot removed),
        what the host did, then wait until the guest powered off."""
        for name in ("step.log", "result.json", "agent.err", "console.log"):
            (self.work / name).unlink(missing_ok=True)
        (self.work / "boot").write_text(f"{number}\n")
        started = time.monotonic()
        self.virsh("start", DOMAIN)
        say(f"virsh start {DOMAIN}: Domain '{DOMAIN}' started")
        self.show_host()
        self.wait_shut_off(started)

    def boot(self, number: int) -> dict[str, Any]:
        """``virsh start``, wait until the guest powered off, return its facts."""
        self.start_guest(number)
        log = (self.work / "step.log").read_text(errors="replace")
        facts: dict[str, Any] = dict(guestimage.step_facts(log))
        for line in log.splitlines():
            if "SIMULATED secret area" in line or line.startswith("guest:"):
                say(line.replace("attestd-guest: ", "guest attestd-guest: "))
        if facts.get("bootstrap-exit") != "0":
            raise DemoFailed(f"attestd-guest bootstrap failed:\n{log}")
        facts["result"] = json.loads((self.work / "result.json").read_text())
        for line in log.splitlines():
            if line.startswith("/dev/mapper/"):
                say(f"guest mounts: {' '.join(line.split()[:3])}")
        return facts

    def show_host(self) -> None:
        """What attestd-qemu did, from the domain's log."""
        log = self.root / "log" / "qemu" / f"{DOMAIN}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        marks = ("holding the first cont", "measurement", "secret injected", "guest running")
        shown = [ln for ln in lines[-40:] if "attestd-qemu" in ln and any(m in ln for m in marks)]
        for line in shown[-4:]:
            say("host " + line.split(" INFO ", 1)[-1][:100])

    def expect(self, facts: dict[str, Any], volume: str, actions: list[str]) -> None:
        got = facts["result"]["volumes"][volume]
        if got.get("actions") != actions:
            raise DemoFailed(f"volume {volume}: expected {actions}, got {got}")
        say(f"guest volume {volume}: {', '.join(actions)}")

    def refused_start(self) -> None:
        other = hashlib.sha256(b"some other firmware build").hexdigest()
        self.api("PUT", f"/vm/{self.vm}", self.registration(other))
        say(f"PUT /vm/{self.vm}: accepted firmware now {other[:16]}... only")
        (self.work / "console.log").unlink(missing_ok=True)
        done = self.virsh("start", DOMAIN, check=False)
        if done.returncode == 0:
            raise DemoFailed("virsh start succeeded although the firmware is not accepted")
        error = done.stderr.strip().splitlines()
        say(f"virsh start: {error[0]}")
        for line in textwrap.wrap(error[-1], 88, break_on_hyphens=False):
            say(f"    {line}")
        if self.virsh("domstate", DOMAIN).stdout.strip() != "shut off":
            raise DemoFailed("the refused domain is not shut off")
        events = self.api("GET", f"/vm/{self.vm}/events")["events"]
        last = events[-1]
        if last["kind"] != "validate" or last["outcome"] == "released":
            raise DemoFailed(f"last event is not a refused validation: {last}")
        reason = last["detail"].get("reason") or last["detail"]
        say(f"events API: {last['kind']} {last['outcome']}: {reason}")
        for line in last["detail"].get("tried", [])[:2]:
            say(f"            tried: {line}")
        if not self.nothing_released():
            raise DemoFailed("the simulated firmware holds a secret for the refused launch")
        say("simulated firmware: no LAUNCH_SECRET for this launch; guest CPUs never ran")
        console = self.work / "console.log"
        if console.exists() and console.stat().st_size:
            raise DemoFailed("the refused guest wrote to its console")

    def nothing_released(self) -> bool:
        from attestd.sim.platform import SimulatedPlatform

        result = json.loads(next((self.root / "state").glob("*.sim.json")).read_text())
        platform = SimulatedPlatform.load(self.root / "sim")
        return platform.secret_table(int(result["handle"])) is None

    def teardown(self) -> None:
        if self.libvirtd is not None:
            self.libvirtd.virsh("destroy", DOMAIN, check=False)
            self.libvirtd.virsh("undefine", DOMAIN, check=False)
            self.libvirtd.stop()
            self.libvirtd = None
        if self.service is not None:
            if self.service.poll() is None:
                os.killpg(self.service.pid, signal.SIGTERM)
                try:
                    self.service.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.service.pid, signal.SIGKILL)
                    self.service.wait()
            self.service = None


#: The OVMF image the simulated PSP measures (the domain boots qboot, fast under TCG).
OVMF = REPO / "tests" / "data" / "ovmf" / "OVMF.amdsev.fd"
SNP_POLICY = "0x30000"

#: What the SEV-SNP guest runs: attestd-guest attests over the network itself.
SNP_STEP = f"""\
export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/usr/lib/python3/dist-packages
echo "guest: booted after $(cut -d' ' -f1 /proc/uptime) s"
python3 -S /work/attestd-guest.pyz --run-dir /run/attestd {PBKDF} snp-bootstrap \
    > /work/result.json 2> /work/agent.err
echo "bootstrap-exit=$?"
grep /dev/mapper /proc/mounts
echo "marker-before=$(cat /data/marker 2>/dev/null)"
grep -q ' /data ' /proc/mounts && echo "written in boot $(cat /work/boot)" > /data/marker
umount /data /scratch 2>/dev/null
true
"""


class SnpDemo(Demo):
    """The same story on the simulated SEV-SNP platform (``--scheme amd-sev-snp``).

    The differences a user sees: the service runs over HTTPS and the guest trusts it by
    the key pin of its initdata (``HOST_DATA`` = SHA-256 of the initdata, in every
    report); the libvirt hook starts the simulated PSP of the domain (``attestd-sim snp
    serve``); the guest's ``attestd-guest snp-bootstrap`` fetches a report and attests
    over QEMU's user-mode network (the host's 127.0.0.1 is 10.0.2.2 to the guest); a
    refused launch runs the guest, which gets nothing.
    """

    steps = 10

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.guest_url = ""  # the service as the guest reaches it
        self.pin = ""  # the key pin of the service's certificate, in every initdata

    def service_env(self) -> dict[str, str]:
        env = super().service_env()
        if self.guest_url:
            env |= {"ATTESTD_PUBLIC_URLS": self.guest_url, "ATTESTD_GUEST_PIN": self.pin}
        return env

    def registration_snp(self, digest: str) -> dict[str, Any]:
        body = self.registration("")
        del body["firmware-hashes"], body["cpu-count"]
        return body | {"scheme": "amd-sev-snp", "policy": SNP_POLICY, "launch-digests": [digest]}

    def run(self) -> None:
        print("attestd demo: a confidential VM's launch on the SEV-SNP simulator, end to end")
        print(f"        working directory {self.root}")
        with self.stage("guest image: Debian kernel, busybox initramfs, attestd-guest zipapp"):
            kernel, initrd = self.guest_image(SNP_STEP)

        sim = self.root / "sim"
        with self.stage("simulated SEV-SNP platform: attestd-sim snp init, anchor and CRL"):
            sim_cli = [str(BIN / "attestd-sim"), "snp"]
            run([*sim_cli, "init", "--dir", str(sim), "--name", "demo-snp"])
            anchors = self.root / "anchors"
            run([*sim_cli, "export-anchor", "--dir", str(sim), "--out", str(anchors)])
            crl = self.root / "demo-snp.crl"
            run([*sim_cli, "crl", "--dir", str(sim), "--out", str(crl)])
            imported = run(
                [str(BIN / "attestd"), "snp", "crl", "import", str(crl)], env=self.service_env()
            )
            say(f"ARK/ASK/ASVK of the simulator in {anchors}/demo-snp")
            say(f"its ARK's CRL imported: {imported.strip().splitlines()[-1]}")

        with self.stage("service: attestd serve over HTTPS, guests pin its key"):
            port = free_port()
            self.url = f"https://127.0.0.1:{port}/v1"
            cert, key, spki = tlscert.self_signed(self.root, "attestd demo service")
            self.verify = str(cert)
            self.pin = initdata.format_pin(hashlib.sha256(spki).digest())
            self.guest_url = f"https://10.0.2.2:{port}/v1"
            self.start_service(port, "--certfile", str(cert), "--keyfile", str(key))
            say(f"{self.url} (SQLite in {self.root}/service, host tokens required)")
            say(f"guests reach it as {self.guest_url}, trusting the key {self.pin}")

        with self.stage("tokens: attestd owner create alice, attestd host create demo-host"):
            self.create_tokens()

        cmdline = guestimage.CMDLINE
        with self.stage(f"owner registers SEV-SNP VM {self.vm}"):
            digest = run(
                [str(BIN / "attestd"), "digest", "--mode", "snp", "--firmware", str(OVMF),
                 "--kernel", str(kernel.vmlinuz), "--initrd", str(initrd),
                 "--cmdline", cmdline, "--vcpus", "1"],
            ).strip().splitlines()[-1]  # fmt: skip
            say(f"attestd digest --mode snp (OVMF, kernel, initrd, command line): {digest[:16]}...")
            reply = self.api("POST", f"/vm/{self.vm}", self.registration_snp(digest))
            kinds = [s.get("name", s["type"]) for s in reply["registration"]["secrets"]]
            say(f"policy {SNP_POLICY}; volumes: {', '.join(kinds)} "
                "(data: owner passphrase; scratch: generated)")  # fmt: skip
            made = self.api("GET", f"/vm/{self.vm}/initdata")
            say(f"initdata from the service: HOST_DATA = {made['host-data'][:16]}...")

        with self.stage("host: private libvirtd (own mount namespace) with the attestd hook"):
            prepare_root(self.root)
            self.host_config.write_text(
                f'state_dir = "{self.root / "state"}"\n'
                f'sim_state_dir = "{sim}"\n'
                f'token_file = "{self.token_file}"\n'
                f'ca_bundle = "{self.verify}"\n',
                encoding="utf-8",
            )
            self.start_libvirtd()

        with self.stage("host: prepare-domain --scheme amd-sev-snp --simulate, define"):
            plain = self.root / "guest.xml"
            disks = [(name, self.root / f"{name}.img") for name in ("data", "scratch")]
            plain.write_text(
                guestimage.domain_xml(
                    DOMAIN, kernel.vmlinuz, initrd, self.work, disks, cmdline=cmdline,
                    network=True, uuid=str(self.vm),
                )
            )  # fmt: skip
            prepared = self.root / "guest-attestd.xml"
            done = subprocess.run(
                [str(BIN / "attestd-host"), "--config", str(self.host_config), "prepare-domain",
                 "--xml", str(plain), "--service", self.url, "--scheme", "amd-sev-snp",
                 "--simulate", "--firmware", str(OVMF), "-o", str(prepared)],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise DemoFailed(f"attestd-host prepare-domain: {done.stderr.strip()}")
            for line in done.stderr.strip().splitlines()[-2:]:
                say(f"prepare-domain: {line[:100]}")
            self.virsh("define", str(prepared))
            say("<attestd:snp simulate='yes'>, initdata on fw_cfg, PSP channel org.attestd.snp-psp")

        with self.stage("virsh start #1: attested, secrets released, disks formatted and mounted"):
            first = self.snp_boot(1)
            self.expect(first, "data", ["luks-formatted", "opened", "mkfs", "mounted"])
            self.expect(first, "scratch", ["luks-formatted", "opened", "mkfs", "mounted"])
            self.last_attest("released")

        with self.stage("virsh start #2: attested again, disks unlocked, not reformatted"):
            second = self.snp_boot(2)
            self.expect(second, "data", ["opened", "mounted"])
            self.expect(second, "scratch", ["opened", "mounted"])
            if second["marker-before"] != "written in boot 1":
                raise DemoFailed(f"data lost its content: {second['marker-before']!r}")
            say("/data still holds the file written in boot 1")
            self.last_attest("released")

        with self.stage("owner accepts another launch digest only (PUT): the guest gets nothing"):
            other = hashlib.sha384(b"some other guest build").hexdigest()
            self.api("PUT", f"/vm/{self.vm}", self.registration_snp(other))
            say(f"PUT /vm/{self.vm}: accepted launch digest now {other[:16]}... only")
            refused = self.snp_boot(3, refused=True)
            if refused["mounts"]:
                raise DemoFailed(f"the refused guest mounted volumes: {refused['mounts']}")
            event = self.last_attest("refused")
            for reason in event["detail"].get("failed", [])[:2]:
                say(f"events API: attest {event['outcome']}: {reason}")
            say("nothing released: the guest opened no volume")

        print()
        print("demo: all steps passed")
        events = f"{self.url}/vm/{self.vm}/events"
        print(f"        events API:  curl --cacert {self.verify} "
              f"-H 'Authorization: Bearer <owner token>' {events}")  # fmt: skip
        print(f"        service log: {self.root}/service.log")
        print(f"        host logs:   {self.root}/state/{self.vm}.psp.log (simulated PSP), "
              f"{self.root}/libvirtd.log")  # fmt: skip
        print(f"        guest:       {self.work}/console.log, {self.work}/step.log")

    def snp_boot(self, number: int, *, refused: bool = False) -> dict[str, Any]:
        """``virsh start``, wait until the guest powered off, return its facts."""
        self.start_guest(number)
        self.psp_stopped()
        step = self.work / "step.log"
        log = step.read_text(errors="replace") if step.exists() else ""
        facts: dict[str, Any] = dict(guestimage.step_facts(log))
        for line in log.splitlines():
            if line.startswith("guest:"):
                say(line)
        err = (self.work / "agent.err").read_text(errors="replace") if log else ""
        for line in err.splitlines():
            wrapped = textwrap.wrap(line, 88, break_on_hyphens=False)
            say(f"guest {wrapped[0]}")
            for more in wrapped[1:]:
                say(f"    {more}")
        exit_code = facts.get("bootstrap-exit")
        if refused:
            if exit_code in (None, "0"):
                raise DemoFailed(f"attestd-guest snp-bootstrap did not refuse:\n{log}{err}")
            say(f"guest: attestd-guest snp-bootstrap exit status {exit_code}")
        elif exit_code != "0":
            raise DemoFailed(f"attestd-guest snp-bootstrap failed:\n{log}{err}")
        else:
            facts["result"] = json.loads((self.work / "result.json").read_text())
        facts["mounts"] = [ln for ln in log.splitlines() if ln.startswith("/dev/mapper/")]
        for line in facts["mounts"]:
            say(f"guest mounts: {' '.join(line.split()[:3])}")
        return facts

    def last_attest(self, outcome: str) -> dict[str, Any]:
        """The VM's last ``attest`` event, which must be released (or must not be)."""
        attests = [e for e in self.api("GET", f"/vm/{self.vm}/events")["events"]
                   if e["kind"] == "attest"]  # fmt: skip
        if not attests:
            raise DemoFailed("the events API has no attest event")
        last: dict[str, Any] = attests[-1]
        if (last["outcome"] == "released") != (outcome == "released"):
            raise DemoFailed(f"last attest event is not {outcome}: {last}")
        if outcome == "released":
            detail = last["detail"]
            key = str(detail["signing_key"]).upper()
            say(f"events API: attest released: report signed by the {key} "
                f"({detail['generation']}), CRL {detail['revocation']}, measurement "
                f"{detail['measurement'][:16]}...")  # fmt: skip
        return last

    def show_host(self) -> None:
        """What the hook's simulated PSP measured, from its log."""
        log = self.root / "state" / f"{self.vm}.psp.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        started = [ln for ln in lines if "measurement" in ln]
        if not started:
            raise DemoFailed(f"the hook started no simulated PSP (see {log})")
        facts = dict(re.findall(r"(measurement|host-data|policy) (\w+)", started[-1]))
        say(f"host hook: simulated PSP up, measurement {facts['measurement'][:16]}..., "
            f"host-data {facts['host-data'][:16]}..., policy {facts['policy']}")  # fmt: skip

    def psp_stopped(self) -> None:
        """The hook stops the domain's PSP when the domain is released."""
        pid = self.root / "state" / f"{self.vm}.psp.pid"
        deadline = time.monotonic() + 10
        while pid.exists():
            if time.monotonic() > deadline:
                raise DemoFailed(f"the simulated PSP outlived its domain ({pid})")
            time.sleep(0.2)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clean", action="store_true", help="remove the logs too (kept by default)"
    )
    parser.add_argument(
        "--scheme", choices=("amd-sev", "amd-sev-snp"), default="amd-sev",
        help="the VM's registration scheme: SEV (default) or SEV-SNP, both simulated",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: run as root (it starts a private libvirtd)", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="attestd-demo-"))
    demo = SnpDemo(root) if args.scheme == "amd-sev-snp" else Demo(root)
    failed: str | None = None
    try:
        demo.run()
    except DemoFailed as exc:
        failed = str(exc)
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # a bug, not a failed step: one line, traceback on request
        if os.environ.get("ATTESTD_DEBUG") == "1":
            traceback.print_exc()
        failed = f"internal error ({type(exc).__name__}: {exc}); ATTESTD_DEBUG=1 shows where"
    finally:
        print("        tearing down (libvirtd, service)", flush=True)
        demo.teardown()
    if failed is not None:
        print(f"demo: FAILED: {failed}", file=sys.stderr)
        print(f"demo: logs kept in {root}", file=sys.stderr)
        return 1
    if args.clean:
        shutil.rmtree(root, ignore_errors=True)
    else:  # the logs stay; the disk images and the guest image go
        for bulky in (*root.glob("*.img"), root / "initrd.cpio", root / "work/attestd-guest.pyz"):
            bulky.unlink(missing_ok=True)
        print(f"demo: logs kept in {root} (rm -rf {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
