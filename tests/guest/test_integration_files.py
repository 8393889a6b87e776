"""The boot integration files: systemd unit, LUKS key script, dracut and initramfs-tools."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

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
