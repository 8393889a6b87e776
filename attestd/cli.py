"""The ``attestd`` command: one argparse front end, sub-commands in ``attestd.commands``.

Each module named in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which
adds its sub-command(s) and sets ``func`` (``Callable[[argparse.Namespace], int]``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from attestd import __version__
from attestd.console import EXIT_USAGE, new_parser, run_guarded

COMMAND_MODULES: tuple[str, ...] = (
    "attestd.commands.digest",
    "attestd.commands.server",
    "attestd.commands.chain",
    "attestd.commands.snp",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``attestd`` argument parser."""
    parser = new_parser(
        "attestd", "attestd: remote attestation for AMD SEV / SEV-ES confidential VMs."
    )
    parser.add_argument(
        "--version", action="version", version=f"attestd {__version__}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attestd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = cast("Callable[[argparse.Namespace], int] | None", getattr(args, "func", None))
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_guarded("attestd", lambda: func(args))


if __name__ == "__main__":
    sys.exit(main())
