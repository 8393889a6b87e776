"""attestd-guest: bootstrap, status, rotate and serve.

Results are JSON on stdout; logs go to stderr.

exit status:
  0   success / ready
  1   one or more volumes failed
  2   usage error (unknown option, malformed argument)
  3   malformed or unreadable payload, request file or secret source
  4   conflict (different input while ready, busy)
  5   authentication failed (old passphrase)
  6   other error (a command or the system failed; one line says which)
  7   SEV-SNP: the initdata, the report or the service refused attestation (nothing released)
  70  internal error: a bug, please report it (ATTESTD_DEBUG=1 shows the traceback)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from attestd.guest.agent import (
    DEFAULT_DEV_DIR,
    DEFAULT_MOUNTINFO,
    DEFAULT_RUN_DIR,
    Agent,
    GuestConfig,
)
from attestd.guest.errors import (
    AuthenticationFailed,
    ConflictError,
    GuestError,
    PayloadError,
    SecretSourceError,
)
from attestd.guest.initdata import InitdataError
from attestd.guest.payload import PAYLOAD_GUID, parse_json, parse_payload, validate_rotation
from attestd.guest.runner import SubprocessRunner
from attestd.guest.secrets import (
    SECURITYFS_DIR,
    DirectorySource,
    SecretSource,
    SimulatedSecretArea,
    TableFileSource,
    find_sim_port,
)
from attestd.guest.snpattest import AttestationRefused, ServiceUnreachable
from attestd.guest.snpreport import ReportError

EXIT_OK = 0
EXIT_VOLUMES_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_CONFLICT = 4
EXIT_AUTH = 5
EXIT_ERROR = 6
EXIT_ATTESTATION = 7
FWCFG_INITDATA = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/attestd/initdata/raw")
PROC_CMDLINE = Path("/proc/cmdline")
EXIT_INTERNAL = 70
DEBUG_ENV = "ATTESTD_DEBUG"

logger = logging.getLogger("attestd.guest")
T = TypeVar("T", int, float)


def _pbkdf_args(args: argparse.Namespace) -> tuple[str, ...]:
    out: list[str] = []
    if args.pbkdf_memory is not None:
        out.append(f"--pbkdf-memory={args.pbkdf_memory}")
    if args.pbkdf_parallel is not None:
        out.append(f"--pbkdf-parallel={args.pbkdf_parallel}")
    if args.pbkdf_force_iterations is not None:
        out.append(f"--pbkdf-force-iterations={args.pbkdf_force_iterations}")
    return tuple(out)


def config_from_args(args: argparse.Namespace) -> GuestConfig:
    """The agent configuration the command line describes."""
    return GuestConfig(
        run_dir=args.run_dir,
        dev_dir=args.dev_dir,
        mountinfo=args.mountinfo,
        mount_root=args.mount_root,
        pbkdf_args=_pbkdf_args(args),
        device_timeout=args.device_timeout,
    )


def source_from_args(args: argparse.Namespace) -> SecretSource:
    """The secret source: ``--secret-table`` file, ``--sim-secret-port``, else ``--secrets-dir``.

    Without any of them: securityfs (``efi_secret``); only when that does not exist and
    the simulated secret area's port is present is the simulated area read (with a warning).
    """
    if args.secret_table is not None:
        table: Path = args.secret_table
        if table.exists() and not table.is_file():
            raise SecretSourceError(f"secret table {table} is not a regular file")
        return TableFileSource(table)
    if args.sim_secret_port is not None:
        return SimulatedSecretArea(args.sim_secret_port, timeout=args.device_timeout)
    if args.secrets_dir is None:
        port = None if SECURITYFS_DIR.is_dir() else find_sim_port()
        if port is not None:
            logger.warning(
                "no efi_secret; reading the SIMULATED secret area %s (simulated SEV: "
                "the host can read and forge it; development only)",
                port,
            )
            return SimulatedSecretArea(port, timeout=args.device_timeout)
    return DirectorySource(args.secrets_dir or SECURITYFS_DIR)


def _emit(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _runner(args: argparse.Namespace) -> SubprocessRunner:
    """The command runner; a second key's private file goes under the run directory."""
    return SubprocessRunner(key_dir=args.run_dir)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Read the payload from the secret source and bootstrap; delete consumed entries."""
    source = source_from_args(args)
    guid = uuid.UUID(PAYLOAD_GUID)
    data = source.read(guid)
    if data is None:
        raise SecretSourceError(f"no attestd payload entry {guid} in {source.describe()}")
    payload = parse_payload(data)
    agent = Agent(config_from_args(args), _runner(args))
    outcome = agent.bootstrap(payload)
    doc = outcome.full()
    if outcome.ok:
        doc["status"] = "ready"
        if not args.keep_secrets:
            source.consume(guid)
    _emit(doc)
    return EXIT_OK if outcome.ok else EXIT_VOLUMES_FAILED


def _initdata(args: argparse.Namespace) -> bytes:
    """The initdata document: ``--initdata`` as is, else the fw_cfg entry (base64)."""
    if args.initdata is not None:
        return _read_file(args.initdata, "initdata", InitdataError)
    raw = _read_file(args.initdata_fwcfg, "initdata fw_cfg entry", InitdataError)
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InitdataError(f"{args.initdata_fwcfg} is not base64") from None


def _read_file(path: Path, what: str, error: type[GuestError]) -> bytes:
    if path.exists() and not path.is_file():
        raise error(f"{what} {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None


def cmd_snp_bootstrap(args: argparse.Namespace) -> int:
    """SEV-SNP: attest to the service named in the initdata, then bootstrap the payload.

    A re-run on a bootstrapped guest (state record, volumes mounted) attests nothing.
    """
    agent = Agent(config_from_args(args), _runner(args))
    if agent.recover():
        _emit(agent.describe())
        return EXIT_OK
    from attestd.guest import snpattest, snpreport

    document = _initdata(args)
    source = snpreport.choose(args.report_source, sim=args.sim_psp)
    cmdline = _read_file(args.cmdline, "kernel command line", SecretSourceError)
    pin = snpattest.kernel_pin(cmdline.decode("utf-8", "replace"))
    payload = parse_payload(snpattest.SnpAttester(source).attest(document, cmdline_pin=pin))
    outcome = agent.bootstrap(payload)
    doc = outcome.full()
    if outcome.ok:
        doc["status"] = "ready"
    _emit(doc)
    return EXIT_OK if outcome.ok else EXIT_VOLUMES_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """Print status; exit 0 when ready, 1 otherwise."""
    agent = Agent(config_from_args(args), _runner(args))
    agent.recover()
    _emit(agent.describe())
    return EXIT_OK if agent.status == "ready" else EXIT_VOLUMES_FAILED


def cmd_rotate(args: argparse.Namespace) -> int:
    """Rotate passphrases from a cvm-control ``PUT /api/v1/passphrase`` JSON body."""
    raw = (
        sys.stdin.buffer.read()
        if str(args.request) == "-"
        else _read_file(args.request, "request", PayloadError)
    )
    specs = validate_rotation(parse_json(raw))
    agent = Agent(config_from_args(args), _runner(args))
    if not agent.recover():
        raise ConflictError("not bootstrapped (no state record with all volumes mounted)")
    outcome = agent.rotate(specs)
    _emit(outcome.full())
    return EXIT_OK if outcome.ok else EXIT_VOLUMES_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the cvm-control-compatible HTTPS API until shut down."""
    from attestd.guest.server import serve

    agent = Agent(config_from_args(args), _runner(args))
    agent.recover()
    serve(agent, args.address, args.port, args.tls_cn)
    return EXIT_OK


def _number(kind: Callable[[str], T], low: T, high: T | None = None) -> Callable[[str], T]:
    """argparse type: a ``kind`` number in ``[low, high]``."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value or (high is not None and value > high):  # NaN fails too
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bound})")
        return value

    parse.__name__ = "number"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``attestd-guest`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="attestd-guest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help=f"state record and key directory (default {DEFAULT_RUN_DIR})",
    )
    parser.add_argument(
        "--mount-root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="mount the volumes under DIR (an initramfs: the future root, e.g. /sysroot)",
    )
    parser.add_argument("--dev-dir", type=Path, default=DEFAULT_DEV_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--mountinfo", type=Path, default=DEFAULT_MOUNTINFO, help=argparse.SUPPRESS)
    parser.add_argument(
        "--device-timeout",
        type=_number(float, 0.0, 86400.0),
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for each volume's device to appear (default 30)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="stderr log level (default info)",
    )
    cost = parser.add_argument_group("PBKDF cost for new keyslots (tests; default: cryptsetup's)")
    cost.add_argument(
        "--pbkdf-memory", type=_number(int, 8, 4194304), metavar="KIB", help="argon2 memory"
    )
    cost.add_argument(
        "--pbkdf-parallel", type=_number(int, 1, 1024), metavar="N", help="argon2 threads"
    )
    cost.add_argument(
        "--pbkdf-force-iterations",
        type=_number(int, 1, 2**32 - 1),
        metavar="N",
        help="argon2 iterations",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    boot = sub.add_parser("bootstrap", help="unlock and mount the volumes of the injected payload")
    where = boot.add_mutually_exclusive_group()
    where.add_argument(
        "--secrets-dir",
        type=Path,
        help="directory of GUID-named entries (default: efi_secret securityfs)",
    )
    where.add_argument("--secret-table", type=Path, help="one raw EFI secret table file")
    where.add_argument(
        "--sim-secret-port",
        type=Path,
        metavar="DEVICE",
        help="simulated SEV only: read the table from this virtio-serial port (default: "
        "used when securityfs has no efi_secret and the port is present)",
    )
    boot.add_argument(
        "--keep-secrets", action="store_true", help="do not delete the consumed entry after success"
    )
    boot.set_defaults(func=cmd_bootstrap)

    snp = sub.add_parser(
        "snp-bootstrap", help="SEV-SNP: attest to the service, then bootstrap the released payload"
    )
    src = snp.add_mutually_exclusive_group()
    src.add_argument(
        "--initdata-fwcfg",
        type=Path,
        default=FWCFG_INITDATA,
        help=f"fw_cfg file holding the base64 initdata (default {FWCFG_INITDATA})",
    )
    src.add_argument("--initdata", type=Path, help="the initdata document (TOML) in a file")
    snp.add_argument(
        "--report-source",
        default="auto",
        choices=["auto", "tsm", "sev-guest", "sim"],
        help="configfs-tsm, /dev/sev-guest or the simulated PSP (default auto: in that order)",
    )
    snp.add_argument(
        "--sim-psp",
        type=Path,
        default=Path("/dev/virtio-ports/org.attestd.snp-psp"),
        help="the simulated PSP: a virtio-serial port or unix socket",
    )
    snp.add_argument(
        "--cmdline",
        type=Path,
        default=PROC_CMDLINE,
        help="kernel command line to read attestd.pin= from (default /proc/cmdline)",
    )
    snp.set_defaults(func=cmd_snp_bootstrap)

    st = sub.add_parser("status", help="recover from the state record and print the status")
    st.set_defaults(func=cmd_status)

    rot = sub.add_parser("rotate", help="add new passphrases (cvm-control PUT /api/v1/passphrase)")
    rot.add_argument("request", type=Path, help="JSON request file, or - for stdin")
    rot.set_defaults(func=cmd_rotate)

    srv = sub.add_parser("serve", help="the cvm-control-compatible HTTPS API")
    srv.add_argument(
        "--address",
        default="0.0.0.0",  # noqa: S104 - cvm-control's default
        help="listen address (default 0.0.0.0)",
    )
    srv.add_argument(
        "--port", type=_number(int, 1, 65535), default=9443, help="TCP port (default 9443)"
    )
    srv.add_argument(
        "--tls-cn", default="attestd-guest", help="CN of the self-signed TLS certificate"
    )
    srv.set_defaults(func=cmd_serve)
    return parser


_EXIT_FOR: tuple[tuple[type[GuestError], int], ...] = (
    (InitdataError, EXIT_ATTESTATION),
    (ReportError, EXIT_ATTESTATION),
    (AttestationRefused, EXIT_ATTESTATION),
    (ServiceUnreachable, EXIT_ATTESTATION),
    (PayloadError, EXIT_INVALID),
    (SecretSourceError, EXIT_INVALID),
    (ConflictError, EXIT_CONFLICT),
    (AuthenticationFailed, EXIT_AUTH),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attestd-guest`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="attestd-guest: %(levelname)s %(message)s",
    )
    try:
        return int(args.func(args))
    except GuestError as exc:
        code = next((c for t, c in _EXIT_FOR if isinstance(exc, t)), EXIT_ERROR)
        _emit({"status": "error", "code": exc.code, "error": exc.message})
        logger.error("%s", exc.message)
        return code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        message = f"{where}{exc.strerror or exc}"
        _emit({"status": "error", "code": "os_error", "error": message})
        logger.error("%s", message)
        return EXIT_ERROR
    except Exception as exc:
        message = f"internal error ({type(exc).__name__}); this is a bug, please report it"
        _emit({"status": "error", "code": "internal_error", "error": message})
        logger.error("%s (set %s=1 for the traceback)", message, DEBUG_ENV)
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            traceback.print_exc()
        return EXIT_INTERNAL


def run() -> NoReturn:
    """``main`` with its status as the process exit code (zipapp entry point)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
