"""``bash tools/demo`` (its Python core, ``tools/demo.py``) end to end, SEV and SEV-SNP: the
guest e2e's big siblings. Real service, simulator, private libvirtd, QEMU (TCG) and the guest's
attestd-guest."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import tools.demo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tools.demo --clean *args`` as root, as ``bash tools/demo`` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tools.demo", "--clean", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def assert_torn_down(out: str) -> None:
    """No daemon or guest of this run (its working directory) is left."""
    root = re.search(r"working directory (\S+)", out)
    assert root is not None, out
    left = subprocess.run(["pgrep", "-af", root.group(1)], capture_output=True, text=True)
    assert left.stdout == ""
    assert not Path(root.group(1)).exists()  # --clean


def test_demo_runs_every_step_and_tears_down() -> None:
    done = demo()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for step in range(1, 11):
        assert f"[{step:2d}/10] " in out
    assert out.count("ok (") == 10
    # the guest read the service's release from the simulated secret area
    assert (
        out.count("reading the SIMULATED secret area /dev/virtio-ports/org.attestd.sim-secret") == 2
    )
    assert "guest volume data: luks-formatted, opened, mkfs, mounted" in out
    assert "guest volume scratch: luks-formatted, opened, mkfs, mounted" in out
    assert "guest volume data: opened, mounted" in out
    assert "guest volume scratch: opened, mounted" in out
    assert "/data still holds the file written in boot 1" in out
    # the refused start: the reason, from virsh and from the events API
    assert "virsh start: error: Failed to start domain 'attestd-demo'" in out
    assert "unable to execute QEMU command" in out and "HTTP 403" in out
    assert "events API: validate refused: measurement_mismatch" in out
    assert "is not an accepted firmware" in out
    assert "no LAUNCH_SECRET for this launch; guest CPUs never ran" in out
    assert "demo: all steps passed" in out
    assert "/events" in out and "service.log" in out
    assert "owner-chosen passphrase" not in out + done.stderr
    assert_torn_down(out)


def test_snp_demo_runs_every_step_and_tears_down() -> None:
    done = demo("--scheme", "amd-sev-snp")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "on the SEV-SNP simulator" in out
    for step in range(1, 11):
        assert f"[{step:2d}/10] " in out
    assert len(re.findall(r"^        ok \(\d+\.\d s\)$", out, re.MULTILINE)) == 10, out
    # every start: the hook's PSP measured what the owner registered, with the initdata's hash
    digest = re.search(r"attestd digest --mode snp .*: (\w{16})\.\.\.", out)
    host_data = re.search(r"initdata from the service: HOST_DATA = (\w{16})\.\.\.", out)
    assert digest is not None and host_data is not None, out
    started = f"simulated PSP up, measurement {digest[1]}..., host-data {host_data[1]}..."
    assert out.count(started) == 3
    # the guest attested over the network and unlocked its volumes, then again
    assert out.count("events API: attest released: report signed by the VCEK") == 2
    assert "guest volume data: luks-formatted, opened, mkfs, mounted" in out
    assert "guest volume scratch: luks-formatted, opened, mkfs, mounted" in out
    assert "guest volume data: opened, mounted" in out
    assert "guest volume scratch: opened, mounted" in out
    assert "/data still holds the file written in boot 1" in out
    # the refused start: the guest runs, gets nothing, and both sides say why
    assert "policy_violation" in out
    assert "attestd-guest snp-bootstrap exit status 7" in out
    assert "events API: attest refused: measurement_not_accepted" in out
    assert "nothing released: the guest opened no volume" in out
    assert "demo: all steps passed" in out
    assert "owner-chosen passphrase" not in out + done.stderr
    assert_torn_down(out)


def test_snp_demo_names_the_failing_step_and_tears_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A step that fails (here the owner's ``attestd digest``: the OVMF image is missing)
    ends the demo with status 1, names the step, prints no traceback and stops the service."""
    monkeypatch.setattr(tools.demo, "OVMF", tmp_path / "missing-OVMF.fd")
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        assert tools.demo.main(["--scheme", "amd-sev-snp"]) == 1
    finally:  # main() installs its own handlers for the demo's process
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    captured = capsys.readouterr()
    root = re.search(r"demo: logs kept in (\S+)", captured.err)
    assert root is not None, captured.err
    try:
        assert "[ 5/10] owner registers SEV-SNP VM" in captured.out
        assert "[ 6/10]" not in captured.out
        assert "demo: FAILED: step 5 (owner registers SEV-SNP VM" in captured.err
        assert "missing-OVMF.fd" in captured.err
        assert "Traceback" not in captured.out + captured.err
        assert "tearing down (libvirtd, service)" in captured.out
        port = re.search(r"https://127\.0\.0\.1:(\d+)/v1 \(SQLite", captured.out)
        assert port is not None, captured.out
        with pytest.raises(ConnectionRefusedError):  # the service is stopped
            socket.create_connection(("127.0.0.1", int(port[1])), timeout=5).close()
    finally:
        shutil.rmtree(root[1], ignore_errors=True)
