"""Service administration: serve, owner/host create, db upgrade, keys rotate, openapi."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from attestd import config
from attestd.config import Settings
from attestd.console import int_range
from attestd.errors import ParseError

if TYPE_CHECKING:
    from attestd.service.factory import Services

logger = logging.getLogger(__name__)

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}"
MAX_WORKERS = 256


def _settings(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None)
    return config.load(Path(path) if path else None)


def _check_name(name: str) -> str:
    import re

    if not re.fullmatch(NAME_PATTERN, name):
        raise ParseError(f"names match {NAME_PATTERN}")
    return name


def _services(settings: Settings) -> Services:
    from attestd.service.factory import build_services

    return build_services(settings, clock=time.time, migrate=True)


def cmd_owner_create(args: argparse.Namespace) -> int:
    """Create a guest owner and print its token (last line)."""
    principals = _services(_settings(args)).principals
    token = principals.create_owner(_check_name(args.name))
    print(f"created owner {args.name}; its bearer token (shown only now):")
    print(token)
    return 0


def cmd_host_create(args: argparse.Namespace) -> int:
    """Create a host and print its token (last line)."""
    principals = _services(_settings(args)).principals
    owner = getattr(args, "owner", None)
    token = principals.create_host(
        _check_name(args.name), owner=None if owner is None else _check_name(owner)
    )
    scope = f"for owner {owner}" if owner else "for EVERY owner (no --owner given)"
    print(f"created host {args.name} {scope}; its bearer token (shown only now):")
    print(token)
    return 0


@contextmanager
def _revision_errors(revision: str) -> Iterator[None]:
    """alembic's refusal of a revision (unknown, out of range) as a ParseError."""
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise ParseError(f"revision {revision!r}: {exc}") from None


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the schema."""
    from attestd.storage import open_store

    with _revision_errors(args.revision):
        open_store(_settings(args)).upgrade(args.revision)
    print(f"database at revision {args.revision}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    """Migrate the schema down."""
    from attestd.storage import open_store

    with _revision_errors(args.revision):
        open_store(_settings(args)).downgrade(args.revision)
    print(f"database at revision {args.revision}")
    return 0


def cmd_db_maintain(args: argparse.Namespace) -> int:
    """Purge expired transport keys; delete launches and events past their retention."""
    report = _services(_settings(args)).upkeep.run()
    print(
        f"purged the keys of {report.purged_keys} expired launches; deleted "
        f"{report.deleted_launches} launches and {report.deleted_events} events"
    )
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Add a new primary storage key and re-encrypt every stored value with it."""
    from attestd.service.factory import build_services
    from attestd.storage.keys import KeyRing, add_primary_key, retire_old_keys

    settings = _settings(args)
    path = settings.effective_storage_key_file
    # creates the dev key if that is what is configured
    db = build_services(settings, migrate=False).store
    add_primary_key(path)
    keyring = KeyRing.snapshot(path)  # old and new keys, also after --retire
    count = db.rotate_encrypted(keyring.rotate)
    if args.retire:
        retire_old_keys(path)
        # running services reload the key file on their next use of it; whatever one of
        # them wrote under the old key in between is moved to the new key now
        db.rotate_encrypted(keyring.rotate)
    print(f"re-encrypted {count} stored values under the new key in {path}")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI document."""
    from attestd.api.openapi import render

    sys.stdout.write(render())
    return 0


def gunicorn_argv(settings: Settings, bind: str, workers: int, extra: list[str]) -> list[str]:
    """The gunicorn command line of ``attestd serve``.

    Threaded workers (``gthread``): a client that sends its headers slowly holds one
    thread, not a whole worker (with sync workers two such connections stalled a
    2-worker service for the 30 s worker timeout). Request lines and headers are
    bounded; idle keep-alive connections are closed after 5 s. gunicorn's control
    socket is per instance (``control_socket``) or off: never the per-user default
    every instance of the user would share. Options after ``--`` (``extra``) override
    these.
    """
    if settings.control_socket:
        control = ["--control-socket", settings.control_socket]
    else:
        control = ["--no-control-socket"]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--log-level",
        settings.log_level.lower(),
        "--access-logfile",
        "-",
        "--worker-class",
        "gthread",
        "--threads",
        str(settings.threads),
        "--timeout",
        "30",
        "--keep-alive",
        "5",
        "--limit-request-line",
        "8190",
        "--limit-request-fields",
        "64",
        *control,
        *extra,
        "attestd.wsgi:app",
    ]


def check_bind(text: str) -> str:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH`` as gunicorn takes it (ParseError if not)."""
    if text.startswith("unix:") and len(text) > len("unix:"):
        return text
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParseError(f"bind address {text!r} is not HOST:PORT (port 1-65535) or unix:PATH")
    return text


def bind_arg(text: str) -> str:
    """argparse type for ``--bind``."""
    try:
        return check_bind(text)
    except ParseError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Migrate the database, then exec gunicorn on ``attestd.wsgi:app``."""
    settings = _settings(args)
    bind = check_bind(args.bind or settings.bind)  # before gunicorn, which retries a bad one
    workers = args.workers or settings.workers
    if not 1 <= workers <= MAX_WORKERS:
        raise ParseError(f"workers = {workers}: must be 1..{MAX_WORKERS}")
    if args.config:
        os.environ["ATTESTD_CONFIG"] = str(Path(args.config).resolve())
    from attestd.service.factory import build_services

    build_services(settings, migrate=True).store.dispose()
    os.environ["ATTESTD_AUTO_MIGRATE"] = "0"
    extra = list(args.gunicorn)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    argv = gunicorn_argv(settings, bind, workers, extra)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606 (fixed argv, no shell)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the service sub-commands."""

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--config", help="TOML file (default $ATTESTD_CONFIG)")
        return parser

    serve = with_config(subparsers.add_parser("serve", help="run the REST service (gunicorn)"))
    serve.add_argument("--bind", type=bind_arg, help="HOST:PORT (default from the configuration)")
    serve.add_argument(
        "--workers", type=int_range(1, MAX_WORKERS), help="gunicorn worker processes"
    )
    serve.add_argument("gunicorn", nargs=argparse.REMAINDER, help="extra gunicorn options after --")
    serve.set_defaults(func=cmd_serve)

    for kind, func in (("owner", cmd_owner_create), ("host", cmd_host_create)):
        group = subparsers.add_parser(kind, help=f"manage {kind} tokens")
        sub = group.add_subparsers(dest=f"{kind}_command", metavar="COMMAND", required=True)
        article = "an" if kind[0] in "aeiou" else "a"
        text = f"create {article} {kind}; prints its token"
        create = with_config(sub.add_parser("create", help=text, description=text))
        create.add_argument("name", help=f"{kind} name ({NAME_PATTERN})")
        if kind == "host":
            create.add_argument(
                "--owner", help="the owner whose VMs this host may launch (default: any owner)"
            )
        create.set_defaults(func=func)

    db = subparsers.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    up = with_config(db_sub.add_parser("upgrade", help="create or migrate the schema"))
    up.add_argument("--revision", default="head", help="target revision (default head)")
    up.set_defaults(func=cmd_db_upgrade)
    down = with_config(db_sub.add_parser("downgrade", help="migrate the schema down"))
    down.add_argument("revision", help="target revision (e.g. base)")
    down.set_defaults(func=cmd_db_downgrade)
    maintain = with_config(
        db_sub.add_parser(
            "maintain", help="purge expired launch keys; apply retention_* (run from a timer)"
        )
    )
    maintain.set_defaults(func=cmd_db_maintain)

    keys = subparsers.add_parser("keys", help="storage encryption keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    rotate = with_config(keys_sub.add_parser("rotate", help="new primary key; re-encrypt all"))
    rotate.add_argument("--retire", action="store_true", help="then drop the old keys")
    rotate.set_defaults(func=cmd_keys_rotate)

    openapi = subparsers.add_parser("openapi", help="print the OpenAPI document")
    openapi.set_defaults(func=cmd_openapi)
