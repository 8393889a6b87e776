"""Paths the documentation tells readers to use exist in the repository; its Python examples
are formatted as the code is (``ruff format``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_repository_paths_in_docs_exist() -> None:
    missing = []
    for doc in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for path in set(re.findall(r"(?<![\w/.])((?:tests/data|examples|tools)/[\w./-]*\w)", text)):
            if not (PROJECT_ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_python_blocks_in_docs_are_ruff_formatted() -> None:
    """Every fenced ``python`` block of README.md and docs/ as ``ruff format`` (ruff.toml) writes
    it; a block that does not parse fails too (exit status 2)."""
    ruff = Path(sys.executable).parent / "ruff"
    drifted = []
    blocks = 0
    for doc in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            blocks += 1
            line = text.count("\n", 0, block.start()) + 1
            name = f"{doc.relative_to(PROJECT_ROOT)}:{line}.py"
            result = subprocess.run(
                [str(ruff), "format", "--diff", "--stdin-filename", name, "-"],
                input=block.group(1),
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                drifted.append(result.stdout + result.stderr)
    assert blocks, "no python blocks found: the pattern no longer matches the docs"
    assert not drifted, "\n".join(drifted)


def test_guest_owner_guide_points_debian_12_at_the_test_ovmf() -> None:
    text = (PROJECT_ROOT / "docs" / "guest-owner.md").read_text(encoding="utf-8")
    assert "OVMF=tests/data/ovmf/OVMF.amdsev.fd" in text
    assert (PROJECT_ROOT / "tests" / "data" / "ovmf" / "OVMF.amdsev.fd").is_file()


def test_readme_health_check_and_exit_statuses(tmp_path: Path) -> None:
    from attestd.api import create_app
    from attestd.config import Settings

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert (
        '`curl http://127.0.0.1:8080/healthz` answers\n`{"host_tokens":"required","status":"ok"}`'
        in readme
    )
    assert "127.0.0.1:8080" in (PROJECT_ROOT / "tools" / "serve").read_text(encoding="utf-8")
    app = create_app(Settings(data_dir=tmp_path, kds_offline=True))
    answer = app.test_client().get("/healthz")
    assert (
        answer.status_code == 200
        and answer.get_data(as_text=True).strip() == '{"host_tokens":"required","status":"ok"}'
    )
    assert "70 on an internal error" in readme and "docs/guest.md" in readme
