"""What the service-side console scripts share: exit statuses, one top-level error
handler, argument types that reject bad input while parsing, plain-text help.

``attestd``, ``attestd-sim``, ``attestd-host`` and ``attestd-qemu`` answer every bad
input with one line on stderr and a documented exit status, never a traceback:

* 0: success;
* 1: the command failed: invalid or unreadable input file, refused launch,
  service or libvirt error (one line ``PROG: ...`` says which and why);
* 2: usage error (unknown option, malformed argument value such as a UUID);
* 70: internal error, i.e. a bug in attestd (``EX_SOFTWARE``): one line asks to
  report it; ``ATTESTD_DEBUG=1`` in the environment adds the traceback.

(``attestd-guest`` ships alone with the standard library and has its own, finer
statuses: see its ``--help``.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

from attestd.errors import AttestdError, ParseError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
DEBUG_ENV = "ATTESTD_DEBUG"

EXIT_STATUS_EPILOG = f"""exit status:
  0   success
  1   failed: one line on stderr says why (bad or unreadable input, refused,
      service or libvirt error)
  2   usage error (unknown option, malformed argument)
  70  internal error: a bug, please report it ({DEBUG_ENV}=1 shows the traceback)"""


def plain(doc: str | None) -> str:
    """A docstring as help text: reStructuredText roles and literals made plain."""
    text = doc or ""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def new_parser(
    prog: str, doc: str | None, epilog: str = EXIT_STATUS_EPILOG
) -> argparse.ArgumentParser:
    """A console script's top parser: plain description, exit statuses as epilog."""
    return argparse.ArgumentParser(
        prog=prog,
        description=plain(doc),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` for an OSError (both file names of a rename/link)."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    names = str(exc.filename)
    if exc.filename2 is not None:
        names += f" -> {exc.filename2}"
    return f"{names}: {reason}"


def read_bytes(path: Path, what: str = "file") -> bytes:
    """The content of a regular file the user named; ParseError says what is wrong."""
    if path.exists() and not path.is_file():
        raise ParseError(f"{what} {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {what} {describe_os_error(exc)}") from None


def read_text(path: Path, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8 (a binary file is a ParseError)."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what} {path} is not UTF-8 text") from None


def uuid_arg(text: str) -> UUID:
    """argparse type: a UUID."""
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def url_arg(text: str) -> str:
    """argparse type: an ``http(s)://host[/path]`` URL without query or fragment."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s)://HOST[/PATH] URL")
    return text.rstrip("/")


def int_range(low: int, high: int | None = None, *, base: int = 10) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]`` (``base`` 0 accepts 0x...)."""

    def parse(text: str) -> int:
        try:
            value = int(text, base)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({bound})")
        return value

    parse.__name__ = "integer"
    return parse


def run_guarded(prog: str, call: Callable[[], int]) -> int:
    """Run a command's body: every failure becomes one line and an exit status."""
    try:
        return call()
    except AttestdError as exc:
        print(f"{prog}: error [{exc.code}]: {exc.message}", file=sys.stderr)
        for reason in exc.reasons:
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{prog}: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ == "libvirtError":
            print(f"{prog}: libvirt: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"{prog}: internal error ({type(exc).__name__}: {exc}); this is a bug, please "
            f"report it (set {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            traceback.print_exc()
        return EXIT_INTERNAL
