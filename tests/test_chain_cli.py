"""``attestd chain verify`` and ``attestd cek import|fetch`` end to end (in-process CLI)."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import pytest
import responses

from attestd import cli
from tests.conftest import TESTDATA
from tests.sev.minted import minted

PLATFORM = TESTDATA / "sev" / "platform"
CHIP_HEX = (PLATFORM / "naos-api1.51/getid_s0_out.txt").read_text().strip()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TRUST_ANCHORS_DIR", "CEK_CACHE_DIR", "KDS_OFFLINE", "KDS_URL", "DATA_DIR"):
        monkeypatch.delenv(f"ATTESTD_{name}", raising=False)
    monkeypatch.setenv("ATTESTD_CONFIG", str(tmp_path / "attestd.toml"))
    (tmp_path / "attestd.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')


def export(tmp_path: Path, name: str, cek: str = "cek.cert", *, b64: bool = False) -> list[str]:
    """Write PDH and PEK||OCA||CEK files the way libvirt exports them; return the CLI args."""
    read = lambda n: (PLATFORM / name / n).read_bytes()  # noqa: E731
    pdh, chain = read("pdh.cert"), read("pek.cert") + read("oca.cert") + read(cek)
    if b64:
        pdh = textwrap.fill(base64.b64encode(pdh).decode(), 76).encode() + b"\n"
        chain = base64.b64encode(chain) + b"\n"
    (tmp_path / "pdh").write_bytes(pdh)
    (tmp_path / "chain").write_bytes(chain)
    return [
        "chain",
        "verify",
        "--pdh",
        str(tmp_path / "pdh"),
        "--cert-chain",
        str(tmp_path / "chain"),
    ]


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    status = cli.main(args)
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("b64", [False, True])
@pytest.mark.parametrize("gen", ["naples", "rome"])
def test_verify_real_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gen: str, b64: bool
) -> None:
    status, out, _ = run(capsys, export(tmp_path, gen, b64=b64))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"generation: {gen}"
    assert lines[-1] == f"chain verified: {gen}"
    assert f"ok:   CEK is signed by the {gen} ASK (slot 1)" in lines
    assert "ok:   PDH is signed by the PEK (slot 1)" in lines
    assert len([line for line in lines if line.startswith("ok:")]) == 7


def test_unsigned_cek_fails_then_verifies_with_cek(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = export(tmp_path, "naples", "cek.uns.cert")
    status, out, _ = run(capsys, args)
    assert status == 1
    assert "FAIL: CEK is not signed by any ASK" in out
    assert out.splitlines()[-1] == "chain NOT verified"
    (tmp_path / "cek.b64").write_bytes(
        base64.b64encode((PLATFORM / "naples/cek.cert").read_bytes())
    )
    status, out, _ = run(capsys, [*args, "--cek", str(tmp_path / "cek.b64")])
    assert status == 0
    assert out.splitlines()[-1] == "chain verified: naples"


def test_naos_export_is_not_anchored(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys,
        [
            "chain",
            "verify",
            "--pdh",
            str(PLATFORM / "naos-api1.51/pdh.cert"),
            "--cert-chain",
            str(PLATFORM / "naos-api1.51/cert_chain.cert"),
            "--generation",
            "milan",
        ],
    )
    assert status == 1
    assert out.splitlines() == [
        "FAIL: CEK is not signed by the milan ASK",
        "below the CEK (NOT anchored to a trusted root, for diagnosis only):",
        "      OCA is self-signed (slot 1)",
        "      PEK is signed by the OCA (slot 1)",
        "      PEK is signed by the CEK (slot 2)",
        "      PDH is signed by the PEK (slot 1)",
        "chain NOT verified",
    ]


def test_wrong_generation_and_pinned_oca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = export(tmp_path, "naples")
    status, out, _ = run(capsys, [*args, "--generation", "rome"])
    assert (status, out.splitlines()[0]) == (1, "FAIL: CEK is not signed by the rome ASK")
    status, out, _ = run(capsys, [*args, "--oca", str(PLATFORM / "rome/oca.cert")])
    assert status == 1
    assert "FAIL: OCA is not the pinned OCA" in out
    assert "ok:   CEK is signed by the naples ASK (slot 1)" in out
    status, out, _ = run(capsys, [*args, "--oca", str(PLATFORM / "naples/oca.cert")])
    assert status == 0
    assert "ok:   OCA is the pinned OCA" in out


def test_malformed_input_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = export(tmp_path, "rome")
    (tmp_path / "chain").write_bytes(b"\x00" * 100)
    status, _, err = run(capsys, args)
    assert status == 1
    assert "malformed_input" in err and "PEK||OCA||CEK" in err
    status, _, err = run(capsys, [*args[:3], str(tmp_path / "missing"), *args[4:]])
    assert status == 1 and "cannot read PDH" in err


def minted_files(tmp_path: Path) -> tuple[list[str], Path]:
    m = minted()
    anchors = tmp_path / "anchors"
    (anchors / "sim").mkdir(parents=True)
    (anchors / "sim" / "ark.cert").write_bytes(m.anchor.ark.pack())
    (anchors / "sim" / "ask.cert").write_bytes(m.anchor.ask.pack())
    (tmp_path / "pdh").write_bytes(m.chain.pdh.pack())
    (tmp_path / "chain").write_bytes(m.chain.pek.pack() + m.chain.oca.pack() + m.chain.cek.pack())
    (tmp_path / "cek").write_bytes(m.signed_cek.pack())
    args = [
        "chain",
        "verify",
        "--pdh",
        str(tmp_path / "pdh"),
        "--cert-chain",
        str(tmp_path / "chain"),
    ]
    return args, anchors


def test_extra_trust_anchors_by_flag_and_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args, anchors = minted_files(tmp_path)
    args = [*args, "--cek", str(tmp_path / "cek")]
    status, out, _ = run(capsys, args)
    assert status == 1 and "FAIL: CEK is not signed by any trusted ASK" in out
    status, out, _ = run(capsys, [*args, "--trust-anchors", str(anchors)])
    assert (status, out.splitlines()[-1]) == (0, "chain verified: sim")
    monkeypatch.setenv("ATTESTD_TRUST_ANCHORS_DIR", str(anchors))
    status, out, _ = run(capsys, args)
    assert (status, out.splitlines()[-1]) == (0, "chain verified: sim")
    (anchors / "sim" / "ask.cert").write_bytes(
        (TESTDATA / "sev/amd-ca-sev/rome/ask.cert").read_bytes()
    )
    status, _, err = run(capsys, args)
    assert status == 1 and "the sim ASK is not signed by the sim ARK" in err


def test_cek_import_then_verify_offline_by_chip_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, anchors = minted_files(tmp_path)
    cache = tmp_path / "cache"
    chip_file = PLATFORM / "naos-api1.51/getid_s0_out.txt"
    imp = ["cek", "import", "--chip-id", str(chip_file), "--cek", str(tmp_path / "cek")]
    imp += ["--cache", str(cache)]
    status, _, err = run(capsys, imp)
    assert status == 1 and "CEK is not signed by any trusted ASK; not imported" in err
    assert not (cache / f"{CHIP_HEX.upper()}.cek").exists()
    status, out, _ = run(capsys, [*imp, "--trust-anchors", str(anchors)])
    assert status == 0
    assert "imported CEK (signed by the sim ASK)" in out
    assert (cache / f"{CHIP_HEX.upper()}.cek").read_bytes() == minted().signed_cek.pack()
    status, out, _ = run(
        capsys,
        [
            *args,
            "--trust-anchors",
            str(anchors),
            "--chip-id",
            CHIP_HEX,
            "--cache",
            str(cache),
            "--offline",
        ],
    )
    assert (status, out.splitlines()[-1]) == (0, "chain verified: sim")
    status, _, err = run(
        capsys,
        [
            "cek",
            "import",
            "--chip-id",
            CHIP_HEX,
            "--cek",
            str(tmp_path / "pdh"),
            "--cache",
            str(cache),
        ],
    )
    assert status == 1 and "not a CEK" in err


def test_verify_offline_without_cached_cek(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, _anchors = minted_files(tmp_path)
    status, _, err = run(
        capsys, [*args, "--chip-id", CHIP_HEX, "--cache", str(tmp_path / "c"), "--offline"]
    )
    assert status == 1
    assert "cek_required" in err and "attestd cek import" in err


@responses.activate
def test_cek_fetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cek = (PLATFORM / "rome/cek.cert").read_bytes()
    responses.get(f"http://kds.test/cek/id/{CHIP_HEX.upper()}", body=cek)
    cache, out_file = tmp_path / "cache", tmp_path / "out.cek"
    base = [
        "cek",
        "fetch",
        "--chip-id",
        CHIP_HEX,
        "--cache",
        str(cache),
        "--kds-url",
        "http://kds.test",
    ]
    status, out, _ = run(capsys, [*base, "--out", str(out_file)])
    assert status == 0
    assert out_file.read_bytes() == cek
    assert str(cache / f"{CHIP_HEX.upper()}.cek") in out
    status, _, _ = run(capsys, base)
    assert status == 0
    assert len(responses.calls) == 1
    responses.get(f"http://kds.test/cek/id/{'AB' * 64}", status=404)
    status, _, err = run(
        capsys,
        [
            "cek",
            "fetch",
            "--chip-id",
            "ab" * 64,
            "--cache",
            str(cache),
            "--kds-url",
            "http://kds.test",
        ],
    )
    assert status == 1 and "HTTP 404" in err


# -- other input forms: sevctl export, virsh nodesevinfo, attestd-sim export ----------------

NAPLES = ["pdh.cert", "pek.cert", "oca.cert", "cek.cert"]
CA = TESTDATA / "sev" / "amd-ca-sev"


def sevctl_file(tmp_path: Path, tail: bytes) -> list[str]:
    data = b"".join((PLATFORM / "naples" / n).read_bytes() for n in NAPLES) + tail
    (tmp_path / "sevctl.chain").write_bytes(data)
    return ["chain", "verify", "--sevctl", str(tmp_path / "sevctl.chain")]


def test_sevctl_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = (CA / "naples/ask.cert").read_bytes() + (CA / "naples/ark.cert").read_bytes()
    for tail in (b"", full):
        status, out, _ = run(capsys, sevctl_file(tmp_path, tail))
        assert (status, out.splitlines()[-1]) == (0, "chain verified: naples")
    # A host-sent ASK/ARK is ignored: a Rome pair does not change the (pinned) result.
    rome = (CA / "rome/ask.cert").read_bytes() + (CA / "rome/ark.cert").read_bytes()
    status, out, _ = run(capsys, sevctl_file(tmp_path, rome))
    assert (status, out.splitlines()[-1]) == (0, "chain verified: naples")
    status, _, err = run(capsys, sevctl_file(tmp_path, b"junk"))
    assert status == 1 and "malformed_input" in err


def test_input_forms_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = export(tmp_path, "rome")
    status, _, err = run(capsys, [*args, "--sevctl", str(tmp_path / "pdh")])
    assert status == 2 and "--sevctl" in err
    status, _, err = run(capsys, args[:4])
    assert status == 2 and "--cert-chain" in err
    status, _, err = run(capsys, ["chain", "verify"])
    assert status == 2


def nodesevinfo(tmp_path: Path, cek: str) -> Path:
    def b64(name: str) -> str:
        return base64.b64encode((PLATFORM / "naples" / name).read_bytes()).decode()

    chain = (
        PLATFORM / "naples" / "pek.cert",
        PLATFORM / "naples/oca.cert",
        PLATFORM / "naples" / cek,
    )
    text = (
        f"pdh            : {b64('pdh.cert')}\n"
        f"cert-chain     : {base64.b64encode(b''.join(p.read_bytes() for p in chain)).decode()}\n"
        f"cpu0-id        : {base64.b64encode(bytes.fromhex(CHIP_HEX)).decode()}\n"
        "cbitpos        : 47\nreduced-phys-bits: 1\nmax-guests     : 15\n"
    )
    (tmp_path / "info.txt").write_text(text)
    return tmp_path / "info.txt"


def test_virsh_nodesevinfo_uses_the_cek_store_by_cpu0_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = nodesevinfo(tmp_path, "cek.uns.cert")
    cache = tmp_path / "cache"
    args = ["chain", "verify", "--nodesevinfo", str(info), "--cache", str(cache), "--offline"]
    status, _, err = run(capsys, args)
    assert status == 1 and "cek_required" in err
    cek = str(PLATFORM / "naples/cek.cert")
    assert (
        run(capsys, ["cek", "import", "--chip-id", CHIP_HEX, "--cek", cek, "--cache", str(cache)])[
            0
        ]
        == 0
    )
    status, out, _ = run(capsys, args)
    assert (status, out.splitlines()[-1]) == (0, "chain verified: naples")


@responses.activate
def test_attestd_sim_export_and_trust_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attestd.sim import cli as sim_cli

    state, anchors = tmp_path / "sim", tmp_path / "anchors"
    assert sim_cli.main(["init", "--dir", str(state), "--rsa-bits", "2048"]) == 0
    assert sim_cli.main(["trust-anchor", "--dir", str(state), "--out", str(anchors)]) == 0
    capsys.readouterr()
    for form in ("text", "json"):
        assert sim_cli.main(["export", "--dir", str(state), "--format", form]) == 0
        (tmp_path / f"info.{form}").write_text(capsys.readouterr().out)
        args = ["chain", "verify", "--nodesevinfo", str(tmp_path / f"info.{form}")]
        status, out, _ = run(capsys, [*args, "--trust-anchors", str(anchors)])
        assert status == 0, out
        assert out.splitlines()[-1] == "chain verified: sim"
        status, out, _ = run(capsys, args)
        assert status == 1 and "FAIL: CEK is not signed by any trusted ASK" in out
    assert len(responses.calls) == 0


def test_qmp_reply_json_and_bad_platform_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read = lambda n: (PLATFORM / "rome" / n).read_bytes()  # noqa: E731
    doc = {
        "return": {
            "pdh": base64.b64encode(read("pdh.cert")).decode(),
            "cert-chain": base64.b64encode(
                read("pek.cert") + read("oca.cert") + read("cek.cert")
            ).decode(),
            "cbitpos": 47,
        }
    }
    (tmp_path / "qmp.json").write_text(json.dumps(doc))
    status, out, _ = run(capsys, ["chain", "verify", "--nodesevinfo", str(tmp_path / "qmp.json")])
    assert (status, out.splitlines()[-1]) == (0, "chain verified: rome")
    for bad, message in (
        ('{"pdh": "!!"}', "pdh is not base64"),
        ("cbitpos: 47", "lacks pdh"),
        ("{", "not valid JSON"),
    ):
        (tmp_path / "bad").write_text(bad)
        status, _, err = run(capsys, ["chain", "verify", "--nodesevinfo", str(tmp_path / "bad")])
        assert status == 1 and message in err


def test_deeply_nested_nodesevinfo_json_is_a_clean_parse_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = tmp_path / "nodesevinfo.json"
    info.write_text('{"a":' + "[" * 200_000 + "]" * 200_000 + "}")
    assert cli.main(["chain", "verify", "--nodesevinfo", str(info)]) == 1
    err = capsys.readouterr().err
    assert "[malformed_input]" in err
    assert "Traceback" not in err
