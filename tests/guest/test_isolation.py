"""attestd.guest ships alone: stdlib imports only, nothing from the rest of attestd."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import attestd.guest

PACKAGE = Path(attestd.guest.__file__).parent


def test_imports_are_stdlib_or_guest_only() -> None:
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
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
                assert ok, f"{source.name} imports {name}"


def test_runs_from_a_copy_without_the_rest_of_attestd(tmp_path: Path) -> None:
    """Copy only attestd/guest (plus an empty attestd/__init__) and run --help."""
    pkg = tmp_path / "attestd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    subprocess.run(["cp", "-r", str(PACKAGE), str(pkg / "guest")], check=True)
    code = "import attestd.guest.server, attestd.guest.cli as c; print(c.__file__); c.main(['-h'])"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],  # -S: no site-packages at all
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(pkg / "guest" / "cli.py"))
    assert "bootstrap" in out.stdout
