"""The boot integration files: systemd unit, LUKS key script, dracut and initramfs-tools."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from attestd.guest.cli import build_parser, config_from_args
from tests.conftest import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples"
KEYSCRIPT = EXAMPLES / "guest" / "attestd-luks-key"
GRUB_GUID = "736869e5-84f0-4973-92ec-06879ce3da0b"


def _unit(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).extend(value.split())
    return out


def test_unit_ordered_before_local_mounts() -> None:
    unit = _unit(EXAMPLES / "systemd" / "attestd-guest.service")
    assert {"cryptsetup-pre.target", "local-fs-pre.target"} <= set(unit["Before"])
    assert unit["DefaultDependencies"] == ["no"]
    assert unit["Type"] == ["oneshot"] and unit["RemainAfterExit"] == ["yes"]
    assert "sys-kernel-security.mount" in unit["After"]
    assert unit["ExecStart"][-1] == "bootstrap"
    # a private mount namespace would hide the volumes it mounts
    namespaced = ("ProtectHome", "ProtectSystem", "PrivateTmp", "PrivateDevices", "PrivateMounts")
    assert not any(key in unit for key in namespaced)


def _keyscript(
    secrets: Path, *args: str, shell: str = "sh", keep: bool = False
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"], "ATTESTD_SECRETS_DIR": str(secrets)}
    if keep:
        env["ATTESTD_KEEP_SECRET"] = "1"
    argv = [shell, str(KEYSCRIPT), *args] if shell == "sh" else [shell, "sh", str(KEYSCRIPT), *args]
    return subprocess.run(argv, env=env, capture_output=True, check=False)


@pytest.mark.parametrize("shell", ["sh", "busybox"])
def test_keyscript_prints_key_without_nul_and_erases(tmp_path: Path, shell: str) -> None:
    entry = tmp_path / GRUB_GUID
    entry.write_bytes(b"pass word\n\x01\x00")
    result = _keyscript(tmp_path, shell=shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"pass word\n\x01"
    assert not entry.exists()


def test_keyscript_writes_keyfile(tmp_path: Path) -> None:
    (tmp_path / GRUB_GUID).write_bytes(b"k3y\x00")
    keyfile = tmp_path / "run" / "cryptsetup-keys.d" / "root.key"
    result = _keyscript(tmp_path, str(keyfile), keep=True)
    assert result.returncode == 0, result.stderr
    assert keyfile.read_bytes() == b"k3y"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o400
    assert (tmp_path / GRUB_GUID).exists()


@pytest.mark.parametrize("data", [b"no-terminator", b"\x00", None])
def test_keyscript_refuses_bad_or_missing_entry(tmp_path: Path, data: bytes | None) -> None:
    if data is not None:
        (tmp_path / GRUB_GUID).write_bytes(data)
    result = _keyscript(tmp_path)
    assert result.returncode == 1 and result.stdout == b""
    assert b"attestd-luks-key:" in result.stderr
    if data is not None:
        assert (tmp_path / GRUB_GUID).exists()


def test_initramfs_hooks_parse() -> None:
    dracut = EXAMPLES / "guest" / "dracut" / "90attestd"
    assert (
        subprocess.run(["bash", "-n", str(dracut / "module-setup.sh")], check=False).returncode == 0
    )
    unit = _unit(dracut / "attestd-luks-key.service")
    assert unit["Before"] == ["cryptsetup-pre.target"]
    hook = EXAMPLES / "guest" / "initramfs-tools" / "hooks" / "attestd"
    out = subprocess.run(["sh", str(hook), "prereqs"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cryptroot"
    assert os.access(hook, os.X_OK) and os.access(KEYSCRIPT, os.X_OK)


SNP_DRACUT = EXAMPLES / "guest" / "dracut" / "91attestd-snp"
SNP_HOOK = EXAMPLES / "guest" / "initramfs-tools" / "hooks" / "attestd-snp"
SNP_LOCAL_BOTTOM = (
    EXAMPLES / "guest" / "initramfs-tools" / "scripts" / "local-bottom" / "attestd-snp"
)


def test_snp_initramfs_files_parse_and_are_ordered() -> None:
    """SNP in the initramfs: after the network and /sysroot, volumes mounted under it."""
    for script in (SNP_DRACUT / "module-setup.sh", SNP_HOOK, SNP_LOCAL_BOTTOM):
        shell = "bash" if script.suffix == ".sh" else "sh"
        assert subprocess.run([shell, "-n", str(script)], check=False).returncode == 0
        assert os.access(script, os.X_OK)
    unit = _unit(SNP_DRACUT / "attestd-guest-snp-initrd.service")
    assert unit["DefaultDependencies"] == ["no"]
    assert {"network-online.target", "sysroot.mount"} <= set(unit["After"])
    assert unit["Before"] == ["initrd-fs.target"]
    assert unit["ExecStart"][-2:] == ["--mount-root=/sysroot", "snp-bootstrap"]
    deps = subprocess.run(
        ["bash", "-c", f". {SNP_DRACUT / 'module-setup.sh'}; depends"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "network" in deps.stdout.split()
    for script in (SNP_HOOK, SNP_LOCAL_BOTTOM):
        out = subprocess.run(["sh", str(script), "prereqs"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == ""
    text = SNP_HOOK.read_text() + (SNP_DRACUT / "module-setup.sh").read_text()
    assert text.count("qemu_fw_cfg virtio_net") == 2
    assert '--mount-root="${rootmnt}"' in SNP_LOCAL_BOTTOM.read_text()


def test_snp_dracut_module_ships_python_and_the_snp_libraries() -> None:
    """The directories the module copies hold the stdlib, cryptography and jwcrypto."""
    out = subprocess.run(
        ["bash", "-c", f". {SNP_DRACUT / 'module-setup.sh'}; _python_files"],
        capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin"},  # the guest's python3, as dracut would run it
    )  # fmt: skip
    dirs = [Path(line) for line in out.stdout.split()]
    assert (dirs[0] / "json" / "__init__.py").is_file()  # the standard library
    assert {d.name for d in dirs[1:3]} == {"cryptography", "jwcrypto"}
    assert all(d.exists() for d in dirs)


def test_mount_root_option_reaches_the_agent() -> None:
    args = build_parser().parse_args(["--mount-root", "/sysroot", "status"])
    assert config_from_args(args).mount_root == Path("/sysroot")
    assert config_from_args(build_parser().parse_args(["status"])).mount_root == Path("/")
