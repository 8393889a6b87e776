"""``bash tools/demo`` (its Python core, ``tools/demo.py``) end to end: the guest e2e's big
sibling. Real service, simulator, private libvirtd, QEMU (TCG) and the guest's attestd-guest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_step_and_tears_down() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--clean"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
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
    # torn down: no daemon or guest of the demo is left
    left = subprocess.run(["pgrep", "-af", "attestd-demo-"], capture_output=True, text=True)
    assert left.stdout == ""
