"""``tools/setup``: ``tools/serve`` and ``tools/test`` share the venv without reinstalling."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import PROJECT_ROOT

FAKE_PIP = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/pip.log"
"""


def _setup(root: Path, *argv: str) -> None:
    subprocess.run(["bash", "tools/setup", *argv], cwd=root, check=True, capture_output=True,
                   timeout=120)  # fmt: skip


def test_serve_and_test_do_not_reinstall_each_other(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    (root / "tools").mkdir(parents=True)
    for name in ("tools/setup", "setup.cfg", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to("/bin/true")
    (bin_dir / "pip").write_text(FAKE_PIP)
    (bin_dir / "pip").chmod(0o755)
    log = bin_dir / "pip.log"

    def installs() -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.startswith("install -q -e")]

    _setup(root, "--dev")  # tools/test
    assert installs() == ["install -q -e .[dev,postgres,libvirt]"]
    _setup(root)  # tools/serve: the dev install already has everything
    _setup(root, "--dev")
    _setup(root)
    assert len(installs()) == 1
    # a changed setup.cfg installs again, once
    with (root / "setup.cfg").open("a") as fh:
        fh.write("\n# changed\n")
    _setup(root)
    _setup(root)
    assert installs()[1:] == ["install -q -e .[postgres,libvirt]"]
    _setup(root, "--dev")
    _setup(root)
    assert installs()[2:] == ["install -q -e .[dev,postgres,libvirt]"]
    stamps = sorted(p.name for p in (root / ".venv").glob(".attestd-setup-*"))
    assert len(stamps) == 2 and len({s.split("-")[2] for s in stamps}) == 1
