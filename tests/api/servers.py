"""A real attestd (gunicorn) process for the crash and walkthrough suites."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def serve_env(data_dir: Path, anchors_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``attestd serve`` on ``database_url`` trusting the simulator
    (``extra``: more ``ATTESTD_*`` values); makes ``data_dir``."""
    values = dict(os.environ)
    values.update(
        {
            "ATTESTD_DATA_DIR": str(data_dir),
            "ATTESTD_DATABASE_URL": database_url,
            "ATTESTD_TRUST_ANCHORS_DIR": str(anchors_dir),
            "ATTESTD_KDS_OFFLINE": "1",
            "ATTESTD_CONFIG": "",
            **extra,
        }
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    return values


def cli_token(env: dict[str, str], *args: str) -> dict[str, str]:
    """An Authorization header from ``attestd owner create`` / ``host create``."""
    made = subprocess.run(
        [sys.executable, "-m", "attestd.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {"Authorization": "Bearer " + made.stdout.strip().splitlines()[-1]}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``attestd serve`` in its own process group."""

    def __init__(self, env: dict[str, str], *, workers: int = 2) -> None:
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (Path(env["ATTESTD_DATA_DIR"]) / "serve.log").open("ab")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "attestd.cli",
                "serve",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=10).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("attestd serve did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGKILL the whole process group if it still runs; close the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.log.close()
