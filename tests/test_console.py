"""``attestd.console``: the shared top-level handler of the service-side console scripts."""

from __future__ import annotations

import argparse
import errno

import pytest

from attestd import console
from attestd.errors import ChainInvalid


def _raise(exc: BaseException) -> int:
    raise exc


def test_attestd_errors_and_os_errors_are_one_line_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert console.run_guarded("prog", lambda: _raise(ChainInvalid("bad link"))) == 1
    assert capsys.readouterr().err == "prog: error [chain_invalid]: bad link\n"
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")
    assert console.run_guarded("prog", lambda: _raise(missing)) == 1
    assert capsys.readouterr().err == "prog: /x: No such file or directory\n"


def test_a_bug_is_one_line_asking_for_a_report_exit_70(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(console.DEBUG_ENV, raising=False)
    assert console.run_guarded("prog", lambda: _raise(KeyError("k"))) == console.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "prog: internal error (KeyError: 'k'); this is a bug, please report it "
        "(set ATTESTD_DEBUG=1 for the traceback)"
    ]
    monkeypatch.setenv(console.DEBUG_ENV, "1")
    assert console.run_guarded("prog", lambda: _raise(KeyError("k"))) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'k'" in err


def test_guest_cli_bug_is_exit_70_with_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attestd.guest import cli

    monkeypatch.delenv(console.DEBUG_ENV, raising=False)
    # the parser is built per call and takes cmd_status from the module
    monkeypatch.setattr(cli, "cmd_status", lambda args: _raise(ZeroDivisionError("x")))
    assert cli.main(["status"]) == cli.EXIT_INTERNAL
    out = capsys.readouterr()
    assert '"code": "internal_error"' in out.out and "Traceback" not in out.err


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (console.uuid_arg, "nope"),
        (console.url_arg, "ftp://x"),
        (console.url_arg, "http://"),
        (console.url_arg, "https://a/v1?x=1"),
        (console.int_range(0, 255), "256"),
        (console.int_range(0, 255), "-1"),
        (console.int_range(0), "x"),
    ],
)
def test_argument_types_refuse(parse: object, text: str) -> None:
    assert callable(parse)
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_plain_strips_restructuredtext() -> None:
    assert console.plain("``a`` and :func:`b` and :data:`~c.d`") == "a and b and c.d"
