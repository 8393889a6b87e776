"""No console script answers bad input with a traceback (issue 11).

Every option and positional of every sub-command of ``attestd``, ``attestd-sim``,
``attestd-host`` and ``attestd-guest`` (enumerated from the argparse parsers, so new
options are covered without touching this file), plus ``attestd-qemu``'s environment, is
driven with missing files, directories, binary and non-UTF-8 files, a path under a file,
a FIFO, a malformed UUID and negative / huge integers. Each case must end within the
driver's timeout with a documented exit status, a line that names the command on stderr
and no "Traceback".

The cases run through the installed entry points (``tests/consoledriver.py``: the venv's
Python loads each console script's entry point once and forks one child per case, which
is what ``.venv/bin/<script>`` runs); ``--help`` of each runs as a real ``.venv/bin``
process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attestd import cli as attestd_cli
from attestd.guest import cli as guest_cli
from attestd.host import cli as host_cli
from attestd.sim import cli as sim_cli
from attestd.sim.platform import SimulatedPlatform

BIN = Path(sys.executable).parent
DRIVER = Path(__file__).with_name("consoledriver.py")
PARSERS = {
    "attestd": attestd_cli.build_parser,
    "attestd-sim": sim_cli.build_parser,
    "attestd-host": host_cli.build_parser,
    "attestd-guest": guest_cli.build_parser,
}
#: documented exit statuses other than 70 (an internal error is a bug, never expected)
STATUSES = {
    "attestd": {0, 1, 2},
    "attestd-sim": {0, 1, 2},
    "attestd-host": {0, 1, 2},
    "attestd-qemu": {0, 1, 2},
    "attestd-guest": {0, 1, 2, 3, 4, 5, 6, 7},
}
#: arguments that accept any text by design, on commands that then run until stopped
FREE_TEXT_SERVERS = {("attestd-guest", "serve", "--tls-cn")}
#: argument types that take any text (paths, names): they get every kind of bad value
UNTYPED = (None, str, Path)
#: the kinds a typed argument (int, UUID, URL, choices) gets
TYPED_KINDS = ("binary", "uuid", "negative", "huge")
PRELOAD = [
    "attestd.api",
    "attestd.commands.chain",
    "attestd.commands.digest",
    "attestd.commands.server",
    "attestd.host.agent",
    "attestd.guest.server",
    "libvirt",
]


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable (sub-)parser with its sub-command path."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaves(child, (*path, name))


def value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions that take a value (options with an argument and positionals)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.nargs == 0 or action.nargs == argparse.REMAINDER:
            continue
        if isinstance(action, argparse._VersionAction):
            continue
        out.append(action)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Bad values, the configs the commands read, a real simulated platform."""
    root = tmp_path_factory.mktemp("console")
    (root / "dir").mkdir()
    (root / "cwd").mkdir()
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    os.mkfifo(root / "fifo")
    SimulatedPlatform.create(name="robust", rsa_bits=2048).save(root / "sim")
    (root / "attestd.toml").write_text(
        f'data_dir = "{root / "data"}"\nkds_offline = true\n', encoding="utf-8"
    )
    (root / "host.toml").write_text(
        f'libvirt_uri = "test:///default"\nstate_dir = "{root / "state"}"\n'
        f'platform_cache = "{root / "state" / "platform.json"}"\n'
        f'sim_state_dir = "{root / "sim"}"\n',
        encoding="utf-8",
    )
    bad = {
        "missing": str(root / "missing" / "file"),
        "directory": str(root / "dir"),
        "binary": str(root / "binary.bin"),
        "non-utf8": str(root / "latin1.txt"),
        "under-a-file": str(root / "binary.bin" / "child"),
        "fifo": str(root / "fifo"),
        "uuid": "not-a-uuid",
        "negative": "-1",
        "huge": "99999999999999999999999",
    }
    env = {
        "ATTESTD_CONFIG": str(root / "attestd.toml"),
        "ATTESTD_HOST_CONFIG": str(root / "host.toml"),
        "HOME": str(root),
    }
    return {"root": root, "bad": bad, "env": env}


def fill(script: str, action: argparse.Action, root: Path) -> str:
    """A plausible value for a required argument that is not the one under test."""
    dest = action.dest
    if script == "attestd-sim" and dest == "dir":
        return str(root / "sim")
    if action.choices:
        return str(next(iter(action.choices)))
    if dest in ("service",):
        return "http://127.0.0.1:9/v1"
    if dest in ("chip_id",):
        return "00" * 64
    if dest in ("handle", "policy"):
        return "1"
    if dest in ("name", "domain"):
        return "robustness-check"
    return str(root / "missing-required")


def cases_for(script: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """One case per (sub-command, value-taking argument, bad value)."""
    root: Path = inputs["root"]
    prefix = {"attestd-guest": ["--run-dir", str(root / "run")]}.get(script, [])
    cases = []
    for path, parser in leaves(PARSERS[script]()):
        actions = value_actions(parser)
        for target in actions:
            if (script, path[-1] if path else "", (target.option_strings or [""])[0]) in (
                FREE_TEXT_SERVERS
            ):
                continue
            if target.option_strings and target.option_strings[0] == "--rsa-bits":
                continue
            for kind, value in inputs["bad"].items():
                if kind not in TYPED_KINDS and (target.choices or target.type not in UNTYPED):
                    continue  # argparse's own type check rejects every other kind alike
                argv = [*prefix, *path]
                if path in (("init",), ("snp", "init")) and script == "attestd-sim":
                    argv += ["--rsa-bits", "2048"]
                for other in actions:
                    if other is target or not (other.required or not other.option_strings):
                        continue
                    given = fill(script, other, root)
                    argv += [other.option_strings[0], given] if other.option_strings else [given]
                argv += [target.option_strings[0], value] if target.option_strings else [value]
                cases.append({"script": script, "argv": argv, "env": inputs["env"], "kind": kind})
    return cases


def global_cases(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The top-level options (with a cheap sub-command) and attestd-qemu's environment."""
    env, bad = inputs["env"], inputs["bad"]
    cases = []
    for kind, value in bad.items():
        hook = ["--config", value, "install-hook", "--dir", str(inputs["root"] / "hooks")]
        cases.append({"script": "attestd-host", "argv": hook, "env": env, "kind": kind})
        if kind in ("binary", "non-utf8"):  # the domain XML the hook command reads on stdin
            hook = ["hook", "g", "start", "begin"]
            cases.append({"script": "attestd-host", "argv": hook, "env": env, "kind": kind,
                          "stdin": value})  # fmt: skip
        for option in ("--run-dir", "--device-timeout", "--pbkdf-memory", "--log-level"):
            cases.append({"script": "attestd-guest", "argv": [option, value, "status"],
                          "env": env, "kind": kind})  # fmt: skip
        launch = ["-name", "guest=g", "-uuid", value, "-chardev", "socket,id=charmonitor,fd=3"]
        marked = {**env, "ATTESTD_DOMAIN": value}
        cases.append({"script": "attestd-qemu", "argv": launch, "env": marked, "kind": kind})
        uuid = "3c1e5c1a-8b76-4a8e-9d0e-3f6d2b1a7c55"
        launch = ["-name", "guest=g", "-uuid", uuid, "-chardev", "socket,id=charmonitor,fd=3"]
        configured = {**env, "ATTESTD_HOST_CONFIG": value, "ATTESTD_DOMAIN": uuid}
        cases.append({"script": "attestd-qemu", "argv": launch, "env": configured, "kind": kind})
    return cases


def drive(cases: list[dict[str, Any]], cwd: Path) -> list[dict[str, Any]]:
    """Run the cases in ``cwd`` (relative paths such as ``-1`` land there)."""
    request = json.dumps({"preload": PRELOAD, "cases": cases})
    proc = subprocess.run(
        [sys.executable, str(DRIVER)],
        input=request, capture_output=True, text=True, timeout=600, check=False, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    if os.environ.get("ROBUST_PROFILE"):
        for r in sorted(results, key=lambda r: -r["seconds"])[:15]:
            print(r["seconds"], r["script"], " ".join(r["argv"])[-150:])
    return results


def verdict(result: dict[str, Any]) -> str | None:
    """Why a result is wrong (None: fine)."""
    script, rc, stderr = result["script"], result["rc"], result["stderr"]
    if rc is None:
        return "hung (killed after the timeout)"
    if "Traceback" in stderr:
        return "traceback"
    if rc not in STATUSES[script]:
        return f"exit status {rc}"
    named = any(line.startswith(script) for line in stderr.splitlines())
    if rc != 0 and not named and not (script == "attestd-guest" and '"status"' in result["stdout"]):
        return "no line naming the command on stderr (nor a guest status on stdout)"
    if "internal error" in stderr:
        return "internal error"
    return None


@pytest.mark.parametrize("script", [*PARSERS, "globals"])
def test_no_traceback_on_bad_input(script: str, inputs: dict[str, Any]) -> None:
    cases = global_cases(inputs) if script == "globals" else cases_for(script, inputs)
    assert cases
    failures = []
    for result in drive(cases, inputs["root"] / "cwd"):
        why = verdict(result)
        if why is not None:
            argv = " ".join(result["argv"])
            tail = result["stderr"].strip().splitlines()[-1:] or [""]
            failures.append(f"{result['script']} {argv} [{result['kind']}]: {why}: {tail[0]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for script, build in PARSERS.items():
        stack = [(script, build())]
        while stack:
            name, parser = stack.pop()
            yield name, parser
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack += [(f"{name} {n}", p) for n, p in action.choices.items()]


def test_every_argument_has_help() -> None:
    missing = [
        f"{name}: {action.option_strings or action.dest}"
        for name, parser in all_parsers()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert not missing, missing


def test_help_is_plain_text_with_exit_statuses() -> None:
    for script in [*PARSERS, "attestd-qemu"]:
        out = subprocess.run(
            [str(BIN / script), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        assert "exit status:" in out.stdout, script
        assert "``" not in out.stdout and ":func:" not in out.stdout, script
    qemu = subprocess.run(
        [str(BIN / "attestd-qemu"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert qemu.stdout.startswith("usage: attestd-qemu"), qemu.stdout[:200]
    owner = subprocess.run(
        [str(BIN / "attestd"), "owner", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "create an owner" in owner.stdout


def test_no_restructuredtext_in_any_help() -> None:
    raw = re.compile(r"``|:(?:func|class|data|meth|mod|attr):`")
    shown = [
        f"{name}: {match.group(0)}"
        for name, parser in all_parsers()
        for match in [raw.search(parser.format_help())]
        if match
    ]
    assert not shown, shown
