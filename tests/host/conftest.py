"""Fixtures for the host-side tests: a private libvirtd with the attestd hook installed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestd.host.config import HostSettings
from tools.libvirtd import Libvirtd, prepare_root, start_libvirtd

VENV_BIN = Path(sys.executable).parent
WRAPPER = str(VENV_BIN / "attestd-qemu")


def host_settings(root: Path) -> HostSettings:
    """The host config the hook, wrapper and agent use in the tests."""
    return HostSettings(
        state_dir=root / "state",
        platform_cache=root / "platform.json",
        sim_state_dir=root / "sim",
        token_file=root / "attestd" / "host-token",
        allow_http=True,
        timeout=5.0,
        retries=1,
    )


def write_host_config(root: Path, settings: HostSettings) -> None:
    (root / "attestd" / "host.toml").write_text(
        f'state_dir = "{settings.state_dir}"\n'
        f'platform_cache = "{settings.platform_cache}"\n'
        f'sim_state_dir = "{settings.sim_state_dir}"\n'
        f'token_file = "{settings.token_file}"\n'
        "allow_http = true\ntimeout = 5.0\nretries = 1\n",
        encoding="utf-8",
    )


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    """A private libvirtd (QEMU driver, TCG) with the attestd hook installed."""
    root = tmp_path_factory.mktemp("libvirt")
    prepare_root(root)
    write_host_config(root, host_settings(root))
    (root / "attestd" / "host-token").write_text("")  # no host token until a test sets one
    subprocess.run(
        [str(VENV_BIN / "attestd-host"), "install-hook", "--dir", str(root / "etc/hooks/qemu.d")],
        check=True,
        capture_output=True,
    )
    daemon = start_libvirtd(root)
    try:
        yield daemon
    finally:
        for name in daemon.virsh("list", "--name", check=False).stdout.split():
            daemon.virsh("destroy", name, check=False)
        daemon.stop()
