"""ruff and mypy --strict are part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent
#: Python code ruff checks (mypy's files are in setup.cfg)
CODE = ("attestd", "tests", "bench", "hooks", "tools")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)


def test_ruff_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = _run(str(BIN / "mypy"), "--config-file", "setup.cfg")
    assert result.returncode == 0, result.stdout + result.stderr


#: How a path into the team's shared folder outside the repository is spelled.
OUTSIDE = tuple(
    form.format(name="sha" + "red") for form in ("../{name}", "{name}/testdata", '"{name}"')
)


def test_a_clone_is_enough() -> None:
    """No test, benchmark or tool reads data from the team folder outside the repository."""
    tracked = _run("git", "ls-files", "tests", "bench", "tools", ".ci").stdout.split()
    offenders = [
        name
        for name in tracked
        if not name.startswith("tests/data/")
        and any(marker in (PROJECT_ROOT / name).read_text(errors="replace") for marker in OUTSIDE)
    ]
    assert offenders == []


def _imports(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_storage_imports_the_sql_adapter() -> None:
    package = PROJECT_ROOT / "attestd"
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for path in package.rglob("*.py")
        if "storage" not in path.relative_to(package).parts[:1]
        and any(name.startswith("attestd.storage.sql") for name in _imports(path))
    ]
    assert offenders == [], "use attestd.storage.open_store / the Store Protocol"


def test_no_test_module_imports_another_test_module() -> None:
    tests = PROJECT_ROOT / "tests"
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}: {name}"
        for path in tests.rglob("*.py")
        for name in _imports(path)
        if (name.startswith("tests.") and name.split(".")[-1].startswith("test_"))
        or (name.startswith("tests.") and any(p.startswith("test_") for p in name.split(".")[1:-1]))
    ]
    assert offenders == [], "move common helpers into a helper module or a conftest fixture"


def test_flask_and_cli_build_services_only_through_the_factory() -> None:
    for rel in ("attestd/api/__init__.py", "attestd/commands/server.py"):
        names = _imports(PROJECT_ROOT / rel)
        assert "attestd.service.factory.build_services" in names, rel
        direct = {"attestd.service.vms.Vms", "attestd.service.launches.Launches"}
        assert not names & direct, rel


def test_only_a_verified_launch_seals_a_launch_secret() -> None:
    """Outside the core's secrets module nothing in attestd calls the sealing primitive."""
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "attestd").rglob("*.py")
        if path.name != "secrets.py" or path.parent.name != "sev"
        if "_seal_launch_secret" in path.read_text()
    ]
    assert offenders == []
