from __future__ import annotations

import time
from pathlib import Path

import pytest

from attestd import __version__, cli, config
from attestd.errors import ParseError
from tests.conftest import TESTDATA
from tests.consoledriver import one_error_line, run_script


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().err


def _config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "attestd.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}', encoding="utf-8")
    return {"ATTESTD_CONFIG": str(path)}


def test_serve_refuses_a_bad_bind_before_gunicorn(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_script("attestd", "serve", "--bind", "notaport", env=_config(tmp_path, ""))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --bind: bind address 'notaport' is not HOST:PORT" in result.stderr
    configured = _config(tmp_path, 'bind = "127.0.0.1:99999"\n')
    line = one_error_line(run_script("attestd", "serve", env=configured))
    assert line == (
        "attestd: error [malformed_input]: bind address '127.0.0.1:99999' is not HOST:PORT "
        "(port 1-65535) or unix:PATH"
    )
    assert time.monotonic() - started < 30  # gunicorn's five bind retries never ran
    result = run_script("attestd", "serve", "--workers", "0", env=_config(tmp_path, ""))
    assert result.returncode == 2 and "argument --workers: 0 is out of range" in result.stderr


@pytest.mark.parametrize("text", ["data_dir = 5\n", "database_url = 1\n", "bind = [1]\n"])
def test_config_values_are_type_checked(text: str, tmp_path: Path) -> None:
    path = tmp_path / "attestd.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParseError, match="expected a string"):
        config.load(path, environ={})
    env = {"ATTESTD_CONFIG": str(path)}
    line = one_error_line(run_script("attestd", "db", "upgrade", env=env, cwd=tmp_path))
    assert "expected a string" in line
    assert not (tmp_path / "5").exists()


def test_trust_anchors_that_are_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "anchors"
    a_file.write_text("x")
    rome = TESTDATA / "sev" / "platform" / "rome"
    chain = tmp_path / "chain.cert"
    chain.write_bytes(
        b"".join((rome / n).read_bytes() for n in ("pek.cert", "oca.cert", "cek.cert"))
    )
    argv = ["chain", "verify", "--pdh", str(rome / "pdh.cert"), "--cert-chain", str(chain)]
    line = one_error_line(
        run_script("attestd", *argv, "--trust-anchors", str(a_file), env=_config(tmp_path, ""))
    )
    assert line.endswith(f"trust anchor directory {a_file} is not a directory")
