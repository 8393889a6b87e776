"""A small Linux guest for the demo and the guest end-to-end test (TCG, no disk image).

The kernel comes from Debian's ``linux-image-*-amd64`` package (``apt-get download``
+ ``dpkg -x``, once, into a cache dir outside git: ``$ATTESTD_CACHE_DIR`` or
``~/.cache/attestd``); the initramfs holds busybox, the modules for virtio
(block, console, 9p, net), dm-crypt, ext4 and ``qemu_fw_cfg``, and an ``/init``
script that names the virtio-serial ports under ``/dev/virtio-ports`` (there is no udev)
and, when the guest has a NIC, configures it for QEMU's user-mode network (libvirt's
``<interface type='user'>``: the guest is 10.0.2.15, the host's 127.0.0.1 is 10.0.2.2). The host's
``/usr`` (python3, cryptsetup, e2fsprogs, util-linux and their libraries) is
shared read-only over 9p (tag ``hostusr``); a second 9p share (tag ``work``)
carries the agent (as a zipapp, :func:`build_zipapp`) and ``step.sh`` in and the
guest's output (``step.log``) back. ``/init`` runs ``/work/step.sh`` and powers off.

Used by ``tools/demo.py`` (under libvirt) and ``tests/guest`` (plain QEMU).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
import zipapp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_console", "9pnet_virtio", "9p", "dm_mod", "dm_crypt",
    "xts", "aesni_intel", "ext4", "virtio_net", "qemu_fw_cfg",
)  # fmt: skip
#: 9p mount options of both shares
NINEP = "trans=virtio,version=9p2000.L,msize=262144"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
echo "init: start $(cat /proc/uptime)"
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
o=@NINEP@
mount -t 9p -o $o,ro,cache=loose hostusr /usr
mount -t 9p -o $o work /work
mkdir -p /dev/disk/by-id /dev/virtio-ports
for d in /sys/block/vd*; do
    s=$(cat $d/serial 2>/dev/null)
    [ -n "$s" ] && ln -s ../../${d##*/} /dev/disk/by-id/virtio-$s
done
for p in /sys/class/virtio-ports/*; do
    n=$(cat $p/name 2>/dev/null)
    [ -n "$n" ] && ln -s ../${p##*/} /dev/virtio-ports/$n
done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
echo "init: ready $(cat /proc/uptime)"
/bin/busybox sh /work/step.sh > /work/step.log 2>&1
echo "init: done $(cat /proc/uptime)"
sync
/bin/busybox poweroff -f
""".replace("@NINEP@", NINEP)


def cache_dir() -> Path:
    """``$ATTESTD_CACHE_DIR`` or ``~/.cache/attestd``, plus ``guest-e2e``."""
    base = os.environ.get("ATTESTD_CACHE_DIR") or Path.home() / ".cache" / "attestd"
    path = Path(base) / "guest-e2e"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _out(argv: Sequence[str], cwd: Path | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd).stdout


def _kernel_package() -> str:
    """The versioned package ``linux-image-amd64`` depends on (apt lists updated if empty)."""
    for attempt in range(2):
        if attempt:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
        deps = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        names = [ln.split()[-1] for ln in deps.splitlines() if "Depends: linux-image-" in ln]
        if names:
            return names[0]
    raise RuntimeError("apt knows no linux-image-amd64 dependency")


@dataclass(frozen=True)
class Kernel:
    """A kernel image and the ordered modules the initramfs loads."""

    vmlinuz: Path
    modules: tuple[Path, ...]


def module_base(root: Path, version: str) -> Path:
    """The ``depmod -b`` / ``modprobe -d`` base of an unpacked kernel package.

    Debian 12's kernel packages ship ``lib/modules/<version>``; Debian 13's (merged /usr)
    only ``usr/lib/modules/<version>``.
    """
    for base in (root, root / "usr"):
        if (base / "lib" / "modules" / version).is_dir():
            return base
    raise RuntimeError(f"{root} has neither lib/modules/{version} nor usr/lib/modules/{version}")


def copy_module(ko: Path, dest: Path) -> str:
    """Copy one module into ``dest`` as a plain ``.ko`` (busybox insmod loads no ``.ko.xz``)."""
    if ko.name.endswith(".ko.xz"):
        name = ko.name.removesuffix(".xz")
        (dest / name).write_bytes(lzma.decompress(ko.read_bytes()))
        return name
    shutil.copy(ko, dest / ko.name)
    return ko.name


def ensure_kernel() -> Kernel:
    """Download and unpack Debian's kernel once; keep only vmlinuz and the needed modules."""
    cache = cache_dir()
    package = _kernel_package()
    version = package.removeprefix("linux-image-")
    dest = cache / f"{version}-{hashlib.sha256(' '.join(MODULES).encode()).hexdigest()[:8]}"
    order = dest / "modules" / "order"
    if not order.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _out(["apt-get", "download", package], cwd=Path(tmp))
            deb = next(Path(tmp).glob("linux-image-*.deb"))
            root = Path(tmp) / "root"
            _out(["dpkg", "-x", str(deb), str(root)])
            base = module_base(root, version)
            _out(["depmod", "-b", str(base), version])
            staging = Path(tmp) / "slim"
            (staging / "modules").mkdir(parents=True)
            shutil.copy(root / "boot" / f"vmlinuz-{version}", staging / "vmlinuz")
            names: list[str] = []
            for module in MODULES:
                shown = _out(["modprobe", "-d", str(base), "-S", version, "--show-depends", module])
                for line in shown.splitlines():
                    if line.startswith("insmod "):
                        ko = Path(line.split()[1])
                        if ko.name.removesuffix(".xz") not in names:
                            names.append(copy_module(ko, staging / "modules"))
            (staging / "modules" / "order").write_text("\n".join(names) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
    names = order.read_text().split()
    return Kernel(dest / "vmlinuz", tuple(dest / "modules" / n for n in names))


def build_initramfs(kernel: Kernel, out: Path) -> Path:
    """An uncompressed newc cpio: busybox, modules, /init, mount points."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "usr", "work",
                  "etc", "modules", "root", "mnt"):  # fmt: skip
            (root / d).mkdir()
        (root / "lib").symlink_to("usr/lib")
        (root / "lib64").symlink_to("usr/lib64")
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        if Path("/etc/mke2fs.conf").exists():
            shutil.copy("/etc/mke2fs.conf", root / "etc" / "mke2fs.conf")
        for ko in kernel.modules:
            shutil.copy(ko, root / "modules" / ko.name)
        (root / "modules" / "order").write_text("\n".join(k.name for k in kernel.modules) + "\n")
        init = root / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        files = _out(["find", "."], cwd=root)
        with out.open("wb") as fh:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc"],
                cwd=root, input=files.encode(), stdout=fh, check=True,
            )  # fmt: skip
    return out


def build_zipapp(out: Path) -> Path:
    """``attestd-guest.pyz``: attestd/__init__.py plus attestd/guest, nothing else."""
    package = REPO / "attestd"
    staging = out.parent / "pyz-staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "attestd").mkdir(parents=True)
    shutil.copy(package / "__init__.py", staging / "attestd" / "__init__.py")
    shutil.copytree(package / "guest", staging / "attestd" / "guest",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    zipapp.create_archive(
        staging, out, interpreter="/usr/bin/env python3", main="attestd.guest.cli:run"
    )
    shutil.rmtree(staging)
    return out


QEMU = "/usr/bin/qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
CMDLINE = "console=ttyS0 panic=-1 loglevel=4"


def domain_xml(
    name: str,
    kernel: Path,
    initrd: Path,
    work: Path,
    disks: Sequence[tuple[str, Path]],
    *,
    cmdline: str = CMDLINE,
    network: bool = False,
    uuid: str | None = None,
) -> str:
    """This guest as a libvirt domain: qboot, direct kernel boot, ``disks`` as virtio
    disks (serial, file), the 9p shares, the console into ``work/console.log`` and, with
    ``network``, a virtio NIC on QEMU's user-mode network."""
    disk_xml = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='unsafe'/>
      <source file='{path}'/>
      <target dev='vd{chr(ord("a") + i)}' bus='virtio'/>
      <serial>{serial}</serial>
    </disk>"""
        for i, (serial, path) in enumerate(disks)
    )
    nic = "\n    <interface type='user'><model type='virtio'/></interface>" if network else ""
    uuid_xml = f"\n  <uuid>{uuid}</uuid>" if uuid else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>{uuid_xml}
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <loader type='rom'>{QBOOT}</loader>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>{disk_xml}
    <filesystem type='mount' accessmode='squash'>
      <source dir='/usr'/><target dir='hostusr'/><readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='squash'>
      <source dir='{work}'/><target dir='work'/>
    </filesystem>{nic}
    <serial type='file'><source path='{work / "console.log"}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def step_facts(log: str) -> dict[str, str]:
    """The ``key=value`` lines a guest's ``step.sh`` printed (the last one of a key wins)."""
    facts: dict[str, str] = {}
    for line in log.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key.replace("-", "").isalpha():
            facts[key] = value
    return facts
