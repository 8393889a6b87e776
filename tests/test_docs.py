"""Paths the documentation tells readers to use exist in the repository."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT


def test_repository_paths_in_docs_exist() -> None:
    missing = []
    for doc in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for path in set(re.findall(r"(?<![\w/.])((?:tests/data|examples|tools)/[\w./-]*\w)", text)):
            if not (PROJECT_ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_guest_owner_guide_points_debian_12_at_the_test_ovmf() -> None:
    text = (PROJECT_ROOT / "docs" / "guest-owner.md").read_text(encoding="utf-8")
    assert "OVMF=tests/data/ovmf/OVMF.amdsev.fd" in text
    assert (PROJECT_ROOT / "tests" / "data" / "ovmf" / "OVMF.amdsev.fd").is_file()
