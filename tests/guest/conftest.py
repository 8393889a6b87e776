"""Fixtures: a fake /dev, run dir and mount root under tmp_path, with real loop mounts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attestd.guest.agent import Agent, GuestConfig
from tests.guest.helpers import CHEAP_PBKDF, LoopMapperRunner


@dataclass
class Guest:
    """A guest-like layout under ``tmp_path``."""

    root: Path
    config: GuestConfig
    runner: LoopMapperRunner
    secrets: Path

    def agent(self) -> Agent:
        return Agent(self.config, self.runner)

    def disk(self, serial: str, size_mib: int = 48) -> Path:
        """A blank disk file linked as ``/dev/disk/by-id/virtio-<serial>``."""
        path = self.root / f"{serial}.img"
        with path.open("wb") as fh:
            fh.truncate(size_mib << 20)
        link = self.config.by_id_dir / f"virtio-{serial}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
        return path

    def unmount_all(self) -> None:
        """Unmount everything under the mount root and drop the mappings (a reboot)."""
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.config.mount_root) + "/")
        ]
        for point in sorted(mounts, reverse=True):
            subprocess.run(["umount", point], check=False, capture_output=True)
        self.runner.close_all()


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Guest]:
    root = tmp_path.resolve()
    config = GuestConfig(
        run_dir=root / "run",
        dev_dir=root / "dev",
        mount_root=root / "mnt",
        pbkdf_args=CHEAP_PBKDF,
        allow_regular_files=True,
        poweroff_argv=("true",),
        reboot_argv=("false",),
    )
    secrets = root / "coco"
    secrets.mkdir()
    g = Guest(root, config, LoopMapperRunner(config.mapper_dir), secrets)
    try:
        yield g
    finally:
        g.unmount_all()
