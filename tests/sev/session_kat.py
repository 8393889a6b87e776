"""Loader for the session/measurement/secret known answers in ``sev/kat/vectors.json``."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any


def vectors(testdata: Path, section: str) -> list[dict[str, Any]]:
    """The entries of one section of vectors.json."""
    data = json.loads((testdata / "sev" / "kat" / "vectors.json").read_text())
    entries: list[dict[str, Any]] = data[section]
    return entries


def read(testdata: Path, relative: str) -> bytes:
    """A file named in vectors.json (relative to ``testdata/sev``)."""
    return (testdata / "sev" / relative).read_bytes()


def b64(text: str) -> bytes:
    """Decode standard base64."""
    return base64.b64decode(text, validate=True)
