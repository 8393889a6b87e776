"""A throw-away PostgreSQL cluster for the tests (Debian's postgresql package).

``PgServer.start()`` runs ``initdb`` and ``pg_ctl`` as the ``postgres`` user in a
temporary directory, listening only on a unix socket in that directory. Each
test gets a fresh database (``create_database``). Set ``ATTESTD_TEST_PG_URL`` to
use an existing server instead (its user must be allowed to create databases).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PG_LIB = Path("/usr/lib/postgresql")


def find_bindir(base: Path = PG_LIB) -> Path | None:
    """``$ATTESTD_PG_BIN``, else the newest ``<base>/<major>/bin`` that has ``initdb``.

    Debian installs each major version side by side (15 on Debian 12, 17 on Debian 13).
    """
    configured = os.environ.get("ATTESTD_PG_BIN")
    if configured:
        return Path(configured)
    found = [
        (int(d.name), d / "bin")
        for d in (base.iterdir() if base.is_dir() else ())
        if d.name.isdigit() and (d / "bin" / "initdb").is_file()
    ]
    return max(found)[1] if found else None


def _bindir() -> Path:
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(f"no PostgreSQL server under {PG_LIB} (apt-get install postgresql)")
    return bindir


def available() -> bool:
    """True when a server can be started or one is configured."""
    if os.environ.get("ATTESTD_TEST_PG_URL"):
        return True
    bindir = find_bindir()
    return bindir is not None and (bindir / "initdb").is_file() and _pg_user() is not None


def _pg_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _as_postgres(argv: list[str]) -> subprocess.CompletedProcess[str]:
    user = _pg_user()
    if os.geteuid() == 0 and user is not None:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


@dataclass
class PgServer:
    """One running cluster."""

    root: Path
    socket_dir: Path
    port: int
    bindir: Path = Path()
    external: str | None = None
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> PgServer:
        """initdb + pg_ctl start (or wrap ``ATTESTD_TEST_PG_URL``)."""
        external = os.environ.get("ATTESTD_TEST_PG_URL")
        if external:
            return cls(root=Path(), socket_dir=Path(), port=0, external=external)
        root = Path(tempfile.mkdtemp(prefix="attestd-pg-"))
        user = _pg_user()
        assert user is not None
        os.chmod(root, 0o700)
        if os.geteuid() == 0:
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        bindir = _bindir()
        result = _as_postgres(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        )
        if result.returncode != 0:
            raise RuntimeError("initdb failed: " + result.stderr[-2000:])
        port = 20000 + (os.getpid() % 20000)
        server = cls(root=root, socket_dir=root, port=port, bindir=bindir)
        server.resume()
        return server

    def resume(self) -> None:
        """``pg_ctl start`` of this cluster (after :meth:`start` made it, or :meth:`pause`)."""
        root, port = self.root, self.port
        options = f"-k {root} -c listen_addresses='' -p {port} -c fsync=off -c max_connections=200"
        result = _as_postgres(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-o",
                options,
                "-w",
                "-l",
                str(root / "log"),
                "start",
            ]
        )
        if result.returncode != 0:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            raise RuntimeError("pg_ctl start failed: " + result.stderr[-2000:] + log[-2000:])

    def postmaster_pid(self) -> int | None:
        """The pid of the running postmaster (its children are the backends and the
        background processes); None for an external server."""
        if self.external:
            return None
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def pause(self) -> None:
        """Stop the server (the database is unavailable) and keep its files."""
        assert not self.external, "an external server is not ours to stop"
        _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-w", "stop"])

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database``."""
        if self.external:
            from sqlalchemy.engine import make_url

            return make_url(self.external).set(database=database).render_as_string(False)
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def _admin(self, sql: str) -> None:
        import psycopg

        conninfo = self.url().replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self._admin(f"CREATE DATABASE {name}")
        self.databases.append(name)
        return self.url(name)

    def dump(self, url: str) -> bytes:
        """``pg_dump`` of a database (plain SQL, data included)."""
        from sqlalchemy.engine import make_url

        name = make_url(url).database or ""
        result = subprocess.run(
            [
                str(self.bindir / "pg_dump"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                name,
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        return result.stdout

    def stop(self) -> None:
        """Stop the cluster and remove its files."""
        if self.external:
            return
        _as_postgres(
            [
                str(_bindir() / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]
        )
        shutil.rmtree(self.root, ignore_errors=True)
