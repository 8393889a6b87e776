"""attestd.guest ships alone: stdlib imports only, nothing from the rest of attestd."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import attestd
import attestd.guest
from tools.guestimage import build_zipapp

PACKAGE = Path(attestd.guest.__file__).parent


#: The SEV-SNP flow needs these (Debian's python3-cryptography and python3-jwcrypto); only
#: its module may import them, and only inside functions, so the SEV path never loads them.
SNP_ONLY = {"cryptography", "jwcrypto"}
SNP_MODULE = "snpattest.py"


def test_imports_are_stdlib_or_guest_only() -> None:
    for source in PACKAGE.rglob("*.py"):
        tree = ast.parse(source.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = name.startswith("attestd.guest") or (
                    top in sys.stdlib_module_names and top != "attestd"
                )
                lazy_snp = (
                    source.name == SNP_MODULE and top in SNP_ONLY and id(node) not in top_level
                )
                assert ok or lazy_snp, f"{source.name} imports {name}"


def test_zipapp_runs_without_site_packages(tmp_path: Path) -> None:
    """The zipapp alone, with ``-S`` (no site-packages, no editable install)."""
    pyz = build_zipapp(tmp_path / "attestd-guest.pyz")
    out = subprocess.run(
        [sys.executable, "-S", str(pyz), "--help"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "bootstrap" in out.stdout and "rotate" in out.stdout and "snp-bootstrap" in out.stdout
    missing = tmp_path / "missing.bin"
    out = subprocess.run(
        [sys.executable, "-S", str(pyz), "bootstrap", "--secret-table", str(missing)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 3 and '"code": "secret_source"' in out.stdout
    code = "import attestd.guest.server as s; print(s.__file__)"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], env={"PYTHONPATH": str(pyz)},
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(pyz))


def test_docs_zipapp_block_runs_as_written(tmp_path: Path) -> None:
    """docs/guest.md's zipapp recipe: its own indented block, and it builds a working pyz."""
    from tests.conftest import PROJECT_ROOT

    text = (PROJECT_ROOT / "docs" / "guest.md").read_text(encoding="utf-8")
    start = text.index("\n    mkdir -p pyz/attestd")
    block = text[start + 1 :].split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("    ") for line in block), block
    commands = [line.strip() for line in block]
    assert commands[-1] == "install -m 0755 attestd-guest.pyz /usr/local/bin/attestd-guest"
    (tmp_path / "attestd").symlink_to(PROJECT_ROOT / "attestd")
    script = "set -e\n" + "\n".join(commands[:-1]).replace("python3 ", f"{sys.executable} ")
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-S", str(tmp_path / "attestd-guest.pyz"), "--help"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and "exit status:" in out.stdout, out.stderr
