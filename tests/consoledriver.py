"""Run many console-script invocations fast: import each installed entry point once, then
fork one child per case (run as ``python tests/consoledriver.py`` with the venv's Python).

The child does what the ``.venv/bin/<script>`` wrapper does, ``sys.exit(main())``, with
``sys.argv``, the environment and stdio of the case; an exception escaping ``main`` is
printed as a traceback, exactly as the interpreter would. Cases come as JSON on stdin
(``{"preload": [module, ...], "cases": [{"script", "argv", "env", "stdin"?}, ...]}``, stdin
a file to read, default /dev/null; the preloaded
modules are imported once in the parent so children do not pay for them), results go to
stdout as JSON (``rc`` is None on timeout; the child is then killed).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

TIMEOUT = 10.0


def _child(main: Any, case: dict[str, Any], out: int, err: int) -> None:
    stdin = os.open(case.get("stdin") or os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.environ.update(case.get("env", {}))
    sys.argv = [case["script"], *case["argv"]]
    code: Any = 1
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    os._exit(code)


def run_case(main: Any, case: dict[str, Any]) -> dict[str, Any]:
    """Fork, run one case, collect its status and output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.setsid()
            _child(main, case, out.fileno(), err.fileno())
        started = time.monotonic()
        deadline = started + TIMEOUT
        rc: int | None = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        out.seek(0)
        err.seek(0)
        return {
            **case,
            "rc": rc,
            "seconds": round(time.monotonic() - started, 3),
            "stdout": out.read().decode("utf-8", "replace")[-4000:],
            "stderr": err.read().decode("utf-8", "replace")[-4000:],
        }


def main() -> None:
    """Read the cases, run them grouped by script, print the results."""
    request = json.load(sys.stdin)
    cases: list[dict[str, Any]] = request["cases"]
    for module in request.get("preload", []):
        importlib.import_module(module)
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    mains = {name: scripts[name].load() for name in {c["script"] for c in cases}}
    results = [run_case(mains[case["script"]], case) for case in cases]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()


def run_script(
    script: str,
    *argv: str,
    env: dict[str, str] | None = None,
    stdin: str = "",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """One real ``.venv/bin/<script>`` process (environment without ``ATTESTD_*`` plus ``env``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTD_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / script), *argv],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
        env={**base, **(env or {})}, cwd=cwd,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """Assert a failure with ``status``, no traceback and one stderr line; return that line."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
