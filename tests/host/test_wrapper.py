"""``attestd-qemu`` argv handling (libvirt 9.0's real command line) and pass-through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from attestd.host.wrapper import guest_name, monitor_chardev, option_value, replace_fd

# shape of libvirt 9.0.0's QEMU argv for a TCG domain (trimmed)
LIBVIRT_ARGV = [
    "-name", "guest=e2e-wrapped,debug-threads=on", "-S",
    "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw",'
    '"file":"/var/lib/libvirt/qemu/domain-1-e2e-wrapped/master-key.aes"}',
    "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
    "-uuid", "0b0e2b7a-5a0a-4d62-8b1a-0c2f7b9d1e33",
    "-chardev", "socket,id=charmonitor,fd=28,server=on,wait=off",
    "-mon", "chardev=charmonitor,id=monitor,mode=control",
]  # fmt: skip


def test_finds_libvirts_monitor_fd_name_and_uuid() -> None:
    assert monitor_chardev(LIBVIRT_ARGV) == (10, 28)
    assert guest_name(LIBVIRT_ARGV) == "e2e-wrapped"
    assert option_value(LIBVIRT_ARGV, "-uuid") == "0b0e2b7a-5a0a-4d62-8b1a-0c2f7b9d1e33"
    assert replace_fd(LIBVIRT_ARGV[10], 5) == "socket,id=charmonitor,fd=5,server=on,wait=off"


def test_probe_and_other_chardevs_are_not_a_launch() -> None:
    probe = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=tcg",
             "-qmp", "unix:/var/lib/libvirt/qemu/qmp-XYZ/qmp.monitor,server=on"]  # fmt: skip
    assert monitor_chardev(probe) is None and option_value(probe, "-uuid") is None
    other = ["-chardev", "socket,id=charserial0,fd=30,server=on", "-chardev", "pty,id=x"]
    assert monitor_chardev(other) is None


def test_pass_through_behaves_like_qemu(tmp_path: Path) -> None:
    wrapper = str(Path(sys.executable).with_name("attestd-qemu"))
    env = {"ATTESTD_HOST_CONFIG": str(tmp_path / "missing.toml"), "PATH": "/usr/bin:/bin"}
    for args in (["-version"], ["-machine", "help"], ["-no-such-option"]):
        direct = subprocess.run(
            ["/usr/bin/qemu-system-x86_64", *args], capture_output=True, text=True, check=False
        )
        wrapped = subprocess.run(
            [wrapper, *args], capture_output=True, env=env, text=True, check=False
        )
        assert (wrapped.returncode, wrapped.stdout) == (direct.returncode, direct.stdout)
        assert wrapped.stderr == direct.stderr


def test_marked_domain_without_launch_state_never_execs_qemu(tmp_path: Path) -> None:
    wrapper = str(Path(sys.executable).with_name("attestd-qemu"))
    config = tmp_path / "host.toml"
    # qemu_binary would run and leave a trace if the wrapper exec'd it
    trace = tmp_path / "qemu-ran"
    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\ntouch {trace}\n")
    fake.chmod(0o755)
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nqemu_binary = "{fake}"\n')
    base = {"ATTESTD_HOST_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    marked = {**base, "ATTESTD_DOMAIN": "0f7c2c1e-3a52-4d0f-9f0e-1c7b9b4f7a11"}
    for env, argv in ((marked, LIBVIRT_ARGV), (marked, ["-machine", "none"])):
        result = subprocess.run(
            [wrapper, *argv], capture_output=True, env=env, text=True, check=False
        )
        assert result.returncode == 1 and not trace.exists()
        assert result.stderr.startswith("attestd-qemu: ")
    assert (
        "has no launch state: is the attestd hook installed"
        in subprocess.run(
            [wrapper, *LIBVIRT_ARGV], capture_output=True, env=marked, text=True, check=False
        ).stderr
    )
    # the same launch without the marker is a plain domain: passed through
    result = subprocess.run([wrapper, *LIBVIRT_ARGV], env=base, check=False)
    assert result.returncode == 0 and trace.exists()
