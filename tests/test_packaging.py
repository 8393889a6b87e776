"""The built wheel carries every shipped certificate, and building it warns about nothing;
the gunicorn pin is the range the suite runs on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_wheel_has_every_builtin_cert_and_no_package_warnings(tmp_path: Path) -> None:
    source = tmp_path / "src"  # setuptools builds in the tree: not in the checkout
    skip = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(PROJECT_ROOT, source, ignore=skip)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "absent from the `packages` configuration" not in log
    (wheel,) = tmp_path.glob("attestd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    builtin = PROJECT_ROOT / "attestd" / "sev" / "builtin"
    certs = {str(p.relative_to(PROJECT_ROOT)) for p in builtin.glob("*/*.cert")}
    assert len(certs) >= 10
    assert certs <= names, sorted(certs - names)
    assert "attestd/py.typed" in names and "attestd/sev/builtin/PROVENANCE.md" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]


def test_gunicorn_is_pinned_to_the_tested_major() -> None:
    """Issue 10: "pin the gunicorn range you test". The suite (``attestd serve``'s
    options, the control-socket, slow-client and no-stall tests) runs on the installed
    gunicorn: setup.cfg admits its major and no other."""
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / "setup.cfg")
    requires = config["options"]["install_requires"].splitlines()
    (pin,) = [r.strip() for r in requires if r.strip().startswith("gunicorn")]
    major = int(version("gunicorn").split(".")[0])
    assert pin == f"gunicorn>={major}.0,<{major + 1}", pin
