"""The test guest's kernel unpacking on Debian 12 and Debian 13 package layouts."""

from __future__ import annotations

import lzma
import re
import subprocess
from pathlib import Path

import pytest

from tools.guestimage import copy_module, module_base

VERSION = "6.12.99+deb13-amd64"


def _tree(root: Path, prefix: str) -> Path:
    """An unpacked kernel package with an empty module directory under ``prefix``."""
    modules = root / prefix / "lib" / "modules" / VERSION
    (modules / "kernel").mkdir(parents=True)
    (root / "boot").mkdir()
    return modules


@pytest.mark.parametrize("prefix", ["", "usr"], ids=["debian-12", "debian-13"])
def test_depmod_runs_on_the_module_base(tmp_path: Path, prefix: str) -> None:
    modules = _tree(tmp_path, prefix)
    found = module_base(tmp_path, VERSION)
    assert found == (tmp_path / prefix if prefix else tmp_path)
    subprocess.run(["depmod", "-b", str(found), VERSION], check=True, capture_output=True)
    assert (modules / "modules.dep").is_file()


def test_a_tree_without_modules_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib" / "modules" / "6.1.0-0-amd64").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=re.escape(f"usr/lib/modules/{VERSION}")):
        module_base(tmp_path, VERSION)


def test_compressed_modules_are_unpacked(tmp_path: Path) -> None:
    dest = tmp_path / "slim"
    dest.mkdir()
    body = b"\x7fELF module body" * 64
    (tmp_path / "ext4.ko.xz").write_bytes(lzma.compress(body))
    (tmp_path / "dm-mod.ko").write_bytes(body[::-1])
    assert copy_module(tmp_path / "ext4.ko.xz", dest) == "ext4.ko"
    assert copy_module(tmp_path / "dm-mod.ko", dest) == "dm-mod.ko"
    assert (dest / "ext4.ko").read_bytes() == body
    assert (dest / "dm-mod.ko").read_bytes() == body[::-1]
