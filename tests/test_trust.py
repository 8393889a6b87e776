"""attestd.trust: pinned roots plus validated extra anchors from a directory."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.chain import builtin_anchors, verify_chain
from attestd.sev.snp.certs import builtin_snp_anchors
from attestd.trust import load_anchor, load_anchors, load_snp_anchors
from tests.conftest import TESTDATA
from tests.sev.minted import minted

CA = TESTDATA / "sev" / "amd-ca-sev"


def write_anchor(root: Path, name: str, ark: bytes, ask: bytes) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "ark.cert").write_bytes(ark)
    (directory / "ask.cert").write_bytes(ask)
    return directory


def test_no_directory_means_builtins_only() -> None:
    assert load_anchors(None) == builtin_anchors()


def test_extra_anchors_follow_builtins_sorted(tmp_path: Path) -> None:
    m = minted()
    write_anchor(tmp_path, "zz-sim", m.anchor.ark.pack(), m.anchor.ask.pack())
    shutil.copytree(CA / "milan", tmp_path / "lab-milan")
    (tmp_path / ".staging").mkdir()
    (tmp_path / "README").write_text("not an anchor")
    anchors = load_anchors(tmp_path)
    assert [a.name for a in anchors] == [
        *(a.name for a in builtin_anchors()),
        "lab-milan",
        "zz-sim",
    ]
    assert anchors[-1].ask == m.anchor.ask
    verified = verify_chain(m.chain, anchors, signed_cek=m.signed_cek)
    assert verified.generation == "zz-sim"


def test_base64_anchor_files(tmp_path: Path) -> None:
    m = minted()
    directory = write_anchor(
        tmp_path,
        "sim",
        base64.b64encode(m.anchor.ark.pack()),
        base64.b64encode(m.anchor.ask.pack()),
    )
    assert load_anchor(directory) == m.anchor


def test_invalid_anchor_is_an_error_naming_it(tmp_path: Path) -> None:
    write_anchor(
        tmp_path, "mixed", (CA / "rome/ark.cert").read_bytes(), (CA / "milan/ask.cert").read_bytes()
    )
    with pytest.raises(ChainInvalid, match=r"mixed: the mixed ASK is not signed by the mixed ARK"):
        load_anchors(tmp_path)


def test_unsigned_naples_ark_is_refused(tmp_path: Path) -> None:
    write_anchor(
        tmp_path,
        "old-naples",
        (CA / "naples/ark.cert.bad").read_bytes(),
        (CA / "naples/ask.cert").read_bytes(),
    )
    with pytest.raises(ParseError, match=r"old-naples/ark.cert: .*signature missing"):
        load_anchors(tmp_path)


def test_missing_file_bad_name_shadowing_and_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "a" / "empty").mkdir(parents=True)
    with pytest.raises(ParseError, match=r"empty/ark.cert"):
        load_anchors(tmp_path / "a")
    shutil.copytree(CA / "milan", tmp_path / "b" / "milan")
    with pytest.raises(ParseError, match="shadow the built-in"):
        load_anchors(tmp_path / "b")
    shutil.copytree(CA / "milan", tmp_path / "c" / "bad name")
    with pytest.raises(ParseError, match="not a plain name"):
        load_anchors(tmp_path / "c")
    with pytest.raises(ParseError, match="does not exist"):
        load_anchors(tmp_path / "nope")


# ------------------------------------------------------------------- SEV-SNP anchors

SNP_CA = TESTDATA / "sev" / "amd-ca-snp"


def write_snp_anchor(root: Path, name: str, gen: str = "milan", *, asvk: bool = False) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    for role in ("ark", "ask"):
        shutil.copy(SNP_CA / gen / f"{role}.pem", directory / f"{role}.pem")
    if asvk:
        bundle = (TESTDATA / "sev" / "snp" / "trustee" / f"{gen}_ask_ark_asvk.pem").read_text()
        start = bundle.rindex("-----BEGIN CERTIFICATE-----")
        (directory / "asvk.pem").write_text(bundle[start:])
    return directory


def test_snp_anchors_load_beside_sev_ones(tmp_path: Path) -> None:
    m = minted()
    write_snp_anchor(tmp_path, "lab-snp", asvk=True)
    both = write_anchor(tmp_path, "both", m.anchor.ark.pack(), m.anchor.ask.pack())
    write_snp_anchor(tmp_path, "both", "genoa")
    write_anchor(tmp_path, "sev-only", m.anchor.ark.pack(), m.anchor.ask.pack())
    snp = load_snp_anchors(tmp_path)
    assert [a.name for a in snp] == ["milan", "genoa", "turin", "both", "lab-snp"]
    assert snp[-1].asvk is not None and snp[-2].asvk is None
    sev = load_anchors(tmp_path)
    assert [a.name for a in sev][-2:] == ["both", "sev-only"]
    assert (both / "ark.cert").exists()
    assert load_snp_anchors(None) == builtin_snp_anchors()


@pytest.mark.parametrize("name", ["milan", "turin", "rome", "naples"])
def test_snp_anchor_cannot_shadow_a_builtin(tmp_path: Path, name: str) -> None:
    write_snp_anchor(tmp_path, name)
    with pytest.raises(ParseError, match="shadow"):
        load_snp_anchors(tmp_path)


def test_broken_snp_anchors_are_errors(tmp_path: Path) -> None:
    broken = write_snp_anchor(tmp_path, "lab")
    shutil.copy(SNP_CA / "genoa" / "ask.pem", broken / "ask.pem")
    with pytest.raises(ChainInvalid, match=r"lab.*ASK is not signed"):
        load_snp_anchors(tmp_path)
    (broken / "ask.pem").unlink()
    with pytest.raises(ParseError, match="needs both"):
        load_snp_anchors(tmp_path)
    (broken / "ask.pem").write_text("not a certificate")
    with pytest.raises(ParseError):
        load_snp_anchors(tmp_path)
