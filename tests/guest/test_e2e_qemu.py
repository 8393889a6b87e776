"""End to end: attestd-guest bootstrap inside a Linux guest under QEMU (TCG).

The agent runs as a standalone zipapp (stdlib only) with the guest's python3 (the host's, over 9p).
Three virtio disks, the payload in a secret table delivered as a file over 9p:

* ``data``: blank -> LUKS2-formatted, ext4, mounted; a marker file is written.
* ``logs``: LUKS2 made on the host with the bootstrap passphrase in slot 0 and a
  stale passphrase in slot 1 -> opened, slot 1 removed, ext4, mounted.
* ``bad``: LUKS2 with a passphrase the payload does not know -> fails alone.

Second boot, after ``data`` grew by 32 MiB: unlocked without reformatting, the
marker is still there, the filesystem is resized. Everything is checked from the
guest's own output (the agent's JSON, ``df``, ``cat``, ``cryptsetup luksDump``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.guest import qemu_guest
from tests.guest.helpers import CHEAP_PBKDF, luks_format_file, payload_doc, payload_table, sh
from tools.guestimage import build_zipapp

STEP = """\
export PYTHONDONTWRITEBYTECODE=1
agent="/usr/bin/python3 -S /work/attestd-guest.pyz --run-dir /run/attestd {pbkdf}"
echo "step: start $(cat /proc/uptime)"
$agent bootstrap --secret-table /work/table.bin > /work/result.json
echo "bootstrap-exit=$?"
echo "step: bootstrapped $(cat /proc/uptime)"
echo "marker-before=$(cat /data/marker 2>/dev/null)"
echo "written-in-boot-{boot}" > /data/marker
grep /dev/mapper /proc/mounts
df -k /data | tail -1 | awk '{{print "data-kib=" $2}}'
cryptsetup luksDump /dev/disk/by-id/virtio-logs | grep -E '^  [0-9]+: luks2' | wc -l \
    | sed 's/^/logs-keyslots=/'
umount /data /logs
echo "step: end $(cat /proc/uptime)"
"""


def _facts(log: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([a-z-]+)=(.*)$", log, re.M))


@pytest.mark.slow
def test_bootstrap_in_a_qemu_guest(tmp_path: Path) -> None:
    kernel = qemu_guest.ensure_kernel()
    initrd = qemu_guest.build_initramfs(kernel, tmp_path / "initrd.cpio")
    work = tmp_path / "work"
    work.mkdir()
    build_zipapp(work / "attestd-guest.pyz")  # the agent ships alone

    data, logs, bad = (tmp_path / f"{n}.img" for n in ("data", "logs", "bad"))
    with data.open("wb") as fh:
        fh.truncate(64 << 20)
    luks_format_file(logs, b"pw-logs", size_mib=40)
    (tmp_path / "stale.key").write_bytes(b"stale")
    sh("cryptsetup", "luksAddKey", "--batch-mode", *CHEAP_PBKDF, "--key-file=-",
       f"--new-keyfile={tmp_path / 'stale.key'}", str(logs), stdin=b"pw-logs")  # fmt: skip
    luks_format_file(bad, b"not-the-payload-passphrase", size_mib=40)
    doc = payload_doc(
        data={"device": "virtio:data", "passphrase": "pw-data"},
        logs={"device": "virtio:logs", "passphrase": "pw-logs", "mount_point": "/logs"},
        bad={"device": "/dev/disk/by-id/virtio-bad", "passphrase": "pw-bad"},
    )
    (work / "table.bin").write_bytes(payload_table(doc))
    disks = [qemu_guest.Disk(p, p.stem) for p in (data, logs, bad)]
    pbkdf = " ".join(CHEAP_PBKDF)

    # first boot
    (work / "step.sh").write_text(STEP.format(pbkdf=pbkdf, boot=1))
    serial = qemu_guest.boot(kernel, initrd, disks, work)
    step_log = (work / "step.log").read_text()
    facts = _facts(step_log)
    assert facts.get("bootstrap-exit") == "1", serial[-3000:] + step_log
    result = json.loads((work / "result.json").read_text())
    vols = result["volumes"]
    assert result["status"] == "failed"
    assert vols["data"]["actions"] == ["luks-formatted", "opened", "mkfs", "mounted"]
    assert vols["logs"]["actions"] == ["opened", "removed-keyslots:1", "mkfs", "mounted"]
    assert vols["bad"]["status"] == "error"
    assert vols["bad"]["error"] == "luksOpen failed: the passphrase opens no keyslot"
    assert facts["marker-before"] == ""
    assert facts["logs-keyslots"] == "1"
    assert "/dev/mapper/data /data ext4" in step_log
    assert "/dev/mapper/logs /logs ext4" in step_log
    assert "/dev/mapper/bad" not in step_log
    size_first = int(facts["data-kib"])

    # second boot, after the data disk grew by 32 MiB
    with data.open("r+b") as fh:
        fh.truncate(96 << 20)
    (work / "step.sh").write_text(STEP.format(pbkdf=pbkdf, boot=2))
    serial = qemu_guest.boot(kernel, initrd, disks, work)
    step_log = (work / "step.log").read_text()
    facts = _facts(step_log)
    assert facts.get("bootstrap-exit") == "1", serial[-3000:] + step_log
    vols = json.loads((work / "result.json").read_text())["volumes"]
    assert vols["data"]["actions"] == ["opened", "resized", "mounted"]
    assert vols["logs"]["actions"] == ["opened", "mounted"]
    assert vols["bad"]["status"] == "error"
    assert facts["marker-before"] == "written-in-boot-1"
    assert int(facts["data-kib"]) > size_first + 24 * 1024
    # the host agrees: bad still has its only keyslot, logs lost the stale one
    for passphrase in ("pw-data", "pw-logs", "pw-bad"):
        assert passphrase not in serial + step_log
    assert sh("cryptsetup", "luksDump", str(bad)).count(": luks2") == 1
    assert sh("cryptsetup", "luksDump", str(logs)).count(": luks2") == 1
