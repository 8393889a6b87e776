"""The docs/guest-owner.md's curl walk-throughs (SEV, then SEV-SNP with the software SNP
platform), run literally against ``attestd serve`` (gunicorn), and gunicorn's chunked
bodies over the limit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.servers import Server
from tests.snpfix import GUEST_PIN, PUBLIC_URLS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_LIMIT = 5 * 1024 * 1024
SNP_HEADING = "## An SEV-SNP VM"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    env = dict(os.environ)
    env.update(
        {
            "ATTESTD_DATA_DIR": str(tmp_path / "data"),
            "ATTESTD_CONFIG": "",
            "ATTESTD_KDS_OFFLINE": "1",
            "ATTESTD_MAX_FIRMWARE_SIZE": str(FIRMWARE_LIMIT),
            "ATTESTD_TRUST_ANCHORS_DIR": str(tmp_path / "anchors"),
            # the service makes each SNP VM's initdata (its SHA-256 is the expected HOST_DATA)
            "ATTESTD_PUBLIC_URLS": ",".join(PUBLIC_URLS),
            "ATTESTD_GUEST_PIN": GUEST_PIN,
        }
    )
    env.pop("ATTESTD_DATABASE_URL", None)
    (tmp_path / "data").mkdir()
    (tmp_path / "anchors").mkdir()
    srv = Server(env)
    srv.start()
    yield srv
    srv.kill()
    srv.log.close()


def _owner_token(server: Server, name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "attestd.cli", "owner", "create", name],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return out.strip().splitlines()[-1]


def _sh_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S))


def _walkthrough(base: str, token: str, ovmf: Path) -> str:
    """The guide's SEV sh blocks, with the three values a reader substitutes."""
    text = (ROOT / "docs" / "guest-owner.md").read_text()
    script = _sh_blocks(text.split(SNP_HEADING)[0])
    script = re.sub(r"(?m)^export ATTESTD=.*$", f"export ATTESTD={base}/v1", script)
    script = re.sub(r"(?m)^export TOKEN=.*$", f"export TOKEN={token}", script)
    script = re.sub(r"(?m)^OVMF=.*$", f"OVMF={ovmf}", script)
    # `attestd digest` / `attestd owner create` lines are the operator's, not curl calls
    return "set -euo pipefail\n" + "\n".join(
        line for line in script.splitlines() if not line.startswith("attestd ")
    )


def _snp_walkthrough(base: str, token: str, ovmf: Path, sim: Path, anchors: Path) -> str:
    """Section 1's block, then the SNP section's sh blocks, with the reader's values."""
    text = (ROOT / "docs" / "guest-owner.md").read_text()
    before, snp = text.split(SNP_HEADING)
    first = re.findall(r"```sh\n(.*?)```", before, re.S)[0]
    script = first + _sh_blocks(snp)
    for name, value in (("ATTESTD", f"{base}/v1"), ("TOKEN", token)):
        script = re.sub(rf"(?m)^export {name}=.*$", f"export {name}={value}", script)
    for name, value in (("SIM", sim), ("ANCHORS", anchors)):
        script = re.sub(rf"(?m)^{name}=\S*", f"{name}={value}", script)
    return f"set -euo pipefail\nOVMF={ovmf}  # section 2\n" + script


def test_guest_owner_walkthrough_runs_literally(server: Server, testdata: Path) -> None:
    token = _owner_token(server, "alice")
    assert token.startswith("ato_")
    script = _walkthrough(server.url, token, testdata / "ovmf" / "OVMF.amdsev.fd")
    assert script.count("curl ") >= 7
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[0] == {"next": None, "vms": []}
    assert lines[1]["created"] is True and lines[1]["size"] == 4194304
    registered, shown, replaced, events = lines[2:6]
    assert registered["revision"] == 1 and shown == registered
    assert replaced["revision"] == 2 and replaced["registration"]["scheme"] == "amd-sev"
    assert [e["kind"] for e in events["events"]] == ["registered", "replaced"]
    for secret in ("unlocks-the-root-disk-in-grub", "s3cret", "production"):
        assert secret not in done.stdout
    assert token not in (Path(server.env["ATTESTD_DATA_DIR"]) / "serve.log").read_text()


def test_snp_walkthrough_runs_literally(server: Server, testdata: Path, tmp_path: Path) -> None:
    """Register an SNP VM, challenge, sign a report with ``attestd-sim snp``, attest, decrypt."""
    token = _owner_token(server, "alice")
    anchors = Path(server.env["ATTESTD_TRUST_ANCHORS_DIR"])
    script = _snp_walkthrough(
        server.url, token, testdata / "ovmf" / "OVMF.amdsev.fd", tmp_path / "sim", anchors
    )
    assert script.count("attestd-sim snp ") >= 5 and script.count("curl ") >= 6
    assert "attestd snp crl import" in script
    env = dict(server.env)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    listed, registered, payload, replay, events = lines
    assert listed == {"next": None, "vms": []}
    assert registered["revision"] == 1
    assert registered["registration"]["scheme"] == "amd-sev-snp"
    assert payload["version"] == 1
    assert payload["env"] == {"app.env": {"APP_MODE": "production"}}
    assert replay["code"] == 409 and replay["errors"]["reason"] == "nonce_rejected"
    kinds = [(e["kind"], e.get("outcome")) for e in events["events"]]
    assert kinds[0][0] == "registered"
    assert kinds[1:] == [("attest", "released"), ("attest", "refused")]
    assert events["events"][1]["detail"]["revocation"] == "checked"  # the imported CRL
    assert "production" not in json.dumps(events)
    assert token not in (Path(server.env["ATTESTD_DATA_DIR"]) / "serve.log").read_text()


def test_chunked_firmware_over_the_limit_is_413_under_gunicorn(
    server: Server, tmp_path: Path
) -> None:
    token = _owner_token(server, "alice")
    image = tmp_path / "big.fd"
    image.write_bytes(b"\x5a" * (FIRMWARE_LIMIT + 4096))
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            str(tmp_path / "reply"),
            "-w",
            "%{http_code}",
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{image}",
            f"{server.url}/v1/firmware",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout == "413", done.stdout + done.stderr
    reply = json.loads((tmp_path / "reply").read_text())
    assert reply["errors"]["reason"] == "too_large"
