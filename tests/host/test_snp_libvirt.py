"""The prepared SNP domain under real libvirt 11.3 / QEMU 10.0 (Debian 13), in a private root.

Debian 12's libvirt (9.0) has no SEV-SNP, so the domain is defined by the libvirtd of a
Debian 13 root (``tools/snp-libvirt-root``, cached; built here if missing: about 3 min
and 80 MB from the Debian mirror, measured 175 s) run in private mount and PID
namespaces with tmpfs state directories, so parallel runs share the root read-only.

This machine has no SEV-SNP: QEMU's ``query-sev-capabilities`` fails and libvirt then
drops its SEV flags. The test therefore lets libvirt probe QEMU, and adds to the probed
capability cache exactly what an SNP host's probe adds (the ``sev-guest`` and
``sev-snp-guest`` flags and the ``<sev>`` platform data with cbitpos 51, as on Milan
and Genoa); everything after that, the validation of the XML at define time and the
command line of ``virsh domxml-to-native``, is libvirt's own.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from attestd.guest import initdata
from attestd.host.domain import prepare_snp_domain
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

VM = uuid.UUID("0c9f4f1e-6d0b-4b8e-9a57-1c1f3a2b4d5e")

#: Runs inside the root: probe, add the SNP host's capabilities, define, print the argv.
INSIDE = r"""
set -eu
mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu /var/log/libvirt/qemu
start() {
    /usr/sbin/libvirtd --daemon --pid-file=/run/libvirtd.pid
    for _ in $(seq 1 300); do [ -S /run/libvirt/libvirt-sock ] && return 0; sleep 0.1; done
    echo "libvirtd did not start" >&2; exit 1
}
stop() {
    pid=$(cat /run/libvirtd.pid); kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
virsh() { /usr/bin/virsh -q -c qemu:///system "$@"; }
start
virsh version --daemon >&2
virsh domcapabilities --virttype qemu --emulatorbin /usr/bin/qemu-system-x86_64 >/dev/null
stop
caps=$(grep -l '<emulator>/usr/bin/qemu-system-x86_64<' /var/cache/libvirt/qemu/capabilities/*.xml)
flags="  <flag name='sev-guest'/>\\n  <flag name='sev-snp-guest'/>"
sev="  <sev>\\n    <cbitpos>51</cbitpos>\\n    <reducedPhysBits>1</reducedPhysBits>\\n"
sev="$sev    <maxGuests>0</maxGuests>\\n    <maxESGuests>0</maxESGuests>\\n"
sev="$sev    <pdh>AA==</pdh>\\n    <certChain>AA==</certChain>\\n  </sev>"
sed -i "s|^  <flag name='sev-guest-kernel-hashes'/>|$flags\\n&|; s|^</qemuCaps>|$sev\\n&|" "$caps"
start
virsh define /work/domain.xml >&2
virsh domxml-to-native qemu-argv --domain snp1
virsh dumpxml snp1 > /work/defined.xml
stop
"""

#: Runs as root on the host: private namespaces, tmpfs state, a minimal /dev (no KVM).
OUTSIDE = r"""
set -eu
root=$1 work=$2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
for node in null zero random urandom full tty; do
    touch "$root/dev/$node"; mount --bind "/dev/$node" "$root/dev/$node"
done
for dir in run tmp var/lib/libvirt var/cache/libvirt var/log/libvirt etc/libvirt/qemu; do
    mount -t tmpfs -o mode=755 tmpfs "$root/$dir"
done
mkdir -p "$root/run/work"  # the test's directory, visible inside as /work
mount --bind "$work" "$root/run/work"
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    /bin/sh -c 'ln -s /run/work /tmp/work && sed "s|/work/|/tmp/work/|g" /tmp/work/inside.sh | sh'
"""


def snp_root() -> Path:
    """The cached root: $ATTESTD_SNP_LIBVIRT_ROOT, else $ATTESTD_FRESH_CACHE/snp-libvirt-trixie."""
    explicit = os.environ.get("ATTESTD_SNP_LIBVIRT_ROOT")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("ATTESTD_FRESH_CACHE", "/var/cache/attestd-fresh-root"))
    return cache / "snp-libvirt-trixie"


def ensure_root() -> Path:
    """The root, built once (under a lock, so parallel workers wait for one build)."""
    root = snp_root()
    if (root / ".attestd-ready").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / ".snp-libvirt-trixie.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".attestd-ready").is_file():
            subprocess.run(
                ["bash", str(PROJECT_ROOT / "tools" / "snp-libvirt-root"), str(root)],
                check=True, timeout=1200,
            )  # fmt: skip
    return root


def test_prepared_snp_domain_under_libvirt_11(tmp_path: Path) -> None:
    root = ensure_root()
    pin = initdata.format_pin(hashlib.sha256(b"service key").digest())
    document = initdata.build(["https://attest.example/v1"], VM, pin=pin)
    plain = f"""<domain type='qemu'><name>snp1</name><uuid>{VM}</uuid>
<memory unit='MiB'>512</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/usr/share/qemu/bios.bin</loader>
<kernel>/boot/vmlinuz</kernel><cmdline>console=ttyS0 attestd.pin={pin}</cmdline></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""
    policy = 0x30000 | (1 << 19)  # the default plus DEBUG: a value other than the default
    prepared = prepare_snp_domain(
        plain, policy=policy, initdata=document, service="https://attest.example/v1"
    )
    (tmp_path / "domain.xml").write_text(prepared)
    (tmp_path / "inside.sh").write_text(INSIDE)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
         "bash", "-c", OUTSIDE, "snp-libvirt", str(root), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"Running against daemon: 11\.", result.stderr)
    argv = result.stdout
    found = re.search(r"-object '(\{\"qom-type\":\"sev-snp-guest\"[^']*)'", argv)
    assert found is not None, argv
    snp = json.loads(found.group(1))
    assert snp["policy"] == policy
    assert snp["kernel-hashes"] is True
    assert base64.b64decode(snp["host-data"]) == hashlib.sha256(document).digest()
    assert "confidential-guest-support=lsec0" in argv and snp["id"] == "lsec0"
    fw_cfg = re.search(r"-fw_cfg name=opt/attestd/initdata,string=(\S+)", argv)
    assert fw_cfg is not None and base64.b64decode(fw_cfg.group(1)) == document
    # libvirt kept what attestd wrote
    defined = (tmp_path / "defined.xml").read_text()
    assert "<launchSecurity type='sev-snp' kernelHashes='yes'>" in defined
    assert "urn:attestd:libvirt:1" in defined
