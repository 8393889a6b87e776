"""Trust anchors: the pinned AMD roots plus extra anchors from a directory.

Extra anchors (``ATTESTD_TRUST_ANCHORS_DIR``, e.g. the simulator's test roots) live in
``<dir>/<name>/ark.cert`` and ``<dir>/<name>/ask.cert`` in AMD's CA format (SEV) and/or
``ark.pem``, ``ask.pem`` and optionally ``asvk.pem`` (SEV-SNP, X.509). Each is
validated on load (ARK self-signed, ASK signed by the ARK); a broken anchor
directory is an error, never silently skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from attestd.errors import ChainInvalid, ParseError
from attestd.sev._binary import raw_or_base64
from attestd.sev.certs import AmdCaCertificate
from attestd.sev.chain import TrustAnchor, builtin_anchors
from attestd.sev.snp.certs import SnpAnchor, anchor_from_pem, builtin_snp_anchors

TRUST_ANCHORS_ENV = "ATTESTD_TRUST_ANCHORS_DIR"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _read_ca(path: Path) -> AmdCaCertificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"trust anchor file {path}: {exc.strerror or exc}") from None
    try:
        return AmdCaCertificate.unpack(raw_or_base64(data))
    except ParseError as exc:
        raise ParseError(f"trust anchor file {path}: {exc.message}") from None


def load_anchor(directory: Path, name: str | None = None) -> TrustAnchor:
    """Load and validate one anchor directory holding ``ark.cert`` and ``ask.cert``."""
    anchor = TrustAnchor(
        name or directory.name,
        _read_ca(directory / "ark.cert"),
        _read_ca(directory / "ask.cert"),
    )
    try:
        anchor.check()
    except ChainInvalid as exc:
        raise ChainInvalid(f"trust anchor {directory}: {exc.message}") from None
    return anchor


def load_anchors(directory: Path | None) -> tuple[TrustAnchor, ...]:
    """The built-in AMD anchors followed by every anchor under ``directory`` (sorted by name)."""
    anchors = builtin_anchors()
    if directory is None:
        return anchors
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ParseError(f"trust anchor directory {directory} {problem}")
    builtin_names = {a.name for a in anchors}
    extra = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and p.name[0] != "."):
        if not _NAME.fullmatch(sub.name):
            raise ParseError(f"trust anchor directory name {sub.name!r} is not a plain name")
        if sub.name in builtin_names:
            raise ParseError(f"trust anchor {sub.name!r} would shadow the built-in AMD anchor")
        if _snp_only(sub):
            continue
        extra.append(load_anchor(sub))
    return (*anchors, *extra)


# SEV-SNP anchors: <dir>/<name>/{ark,ask}.pem[, asvk.pem], with or without the SEV files.

_SNP_FILES = ("ark.pem", "ask.pem", "asvk.pem")


def _snp_only(sub: Path) -> bool:
    """A sub-directory that holds an SNP anchor and no SEV ``ark.cert``."""
    return not (sub / "ark.cert").exists() and (sub / "ark.pem").exists()


def load_snp_anchors(directory: Path | None) -> tuple[SnpAnchor, ...]:
    """The built-in SNP anchors, then every ``<dir>/<name>/`` holding ``ark.pem`` (validated).

    ``ark.pem`` and ``ask.pem`` are required together, ``asvk.pem`` is optional; a
    directory name may not shadow a built-in anchor (SEV or SNP).
    """
    anchors = builtin_snp_anchors()
    if directory is None:
        return anchors
    if not directory.is_dir():
        raise ParseError(f"trust anchor directory {directory} does not exist")
    reserved = {a.name for a in anchors} | {a.name for a in builtin_anchors()}
    extra = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and p.name[0] != "."):
        present = [name for name in _SNP_FILES if (sub / name).exists()]
        if not present:
            continue
        if not _NAME.fullmatch(sub.name):
            raise ParseError(f"trust anchor directory name {sub.name!r} is not a plain name")
        if sub.name in reserved:
            raise ParseError(f"trust anchor {sub.name!r} would shadow the built-in AMD anchor")
        files: dict[str, bytes] = {}
        for name in present:
            try:
                files[name] = (sub / name).read_bytes()
            except OSError as exc:
                raise ParseError(f"trust anchor file {sub / name}: {exc.strerror or exc}") from None
        if "ark.pem" not in files or "ask.pem" not in files:
            raise ParseError(f"SNP trust anchor {sub}: needs both ark.pem and ask.pem")
        try:
            extra.append(
                anchor_from_pem(sub.name, files["ark.pem"], files["ask.pem"], files.get("asvk.pem"))
            )
        except (ChainInvalid, ParseError) as exc:
            raise type(exc)(f"SNP trust anchor {sub}: {exc.message}") from None
    return (*anchors, *extra)
