"""docs/simulator.md's simulated-mode walk-through, run as written (the reader's two values,
the working directory and the port, substituted): service, trust anchor, host token, a
private libvirtd, prepare-domain --simulate, virsh start, the events API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from attestd.guest.secrets import SIM_SECRET_PORT
from tests.api.servers import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Simulated mode end to end, by hand"


def walkthrough(work: Path, port: int) -> str:
    """The section's sh blocks as one script, with the reader's directory and port."""
    text = (ROOT / "docs" / "simulator.md").read_text()
    section = text[text.index(SECTION) : text.index("### The simulated secret area")]
    script = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))
    assert script.count("W=/tmp/attestd-sim-walk") == 1
    script = script.replace("W=/tmp/attestd-sim-walk", f"W={work}")
    return "set -eo pipefail\n" + script.replace("127.0.0.1:8080", f"127.0.0.1:{port}")


def _kill(pidfile: Path) -> None:
    try:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


def test_simulated_walkthrough_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "w"
    script = walkthrough(work, free_port())
    uri = f"qemu+unix:///system?socket={work}/libvirt/run/libvirt-sock"
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["virsh", "-c", uri, "destroy", "sim-guest"], capture_output=True)
        _kill(work / "libvirtd.pid")
        _kill(work / "service.pid")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Domain 'sim-guest' started" in done.stdout
    assert "secret injected" in done.stdout
    events = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("{")))
    last = events["events"][-1]
    assert (last["kind"], last["outcome"]) == ("validate", "released")
    assert "walk-through" not in done.stdout  # the registered passphrase is never shown
    # prepare-domain --simulate added the simulated secret area's channel
    assert f'name="{SIM_SECRET_PORT}"' in (work / "guest-attestd.xml").read_text()
