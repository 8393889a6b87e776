"""``attestd-sim``: drive the software SEV platform from the shell.

Each command loads the platform from ``--dir``, runs one firmware command and
saves it again under an exclusive lock, so separate processes can share one
platform. Certificates, sessions and secret packets may be given raw or as base64
text; firmware and VMSA files are raw. Binary outputs are printed as base64.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from attestd.console import int_range, new_parser, read_bytes, run_guarded
from attestd.errors import NotFound
from attestd.files import write_private
from attestd.sev._binary import raw_or_base64
from attestd.sim import snp_cli
from attestd.sim.platform import STATE_FILE, SimulatedPlatform

LOCK_FILE = ".lock"
_BYTE = int_range(0, 0xFF)
_U32 = int_range(0, 0xFFFFFFFF)
Handler = Callable[[argparse.Namespace], int]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@contextmanager
def _platform(directory: Path, *, write: bool = True) -> Iterator[SimulatedPlatform]:
    """Load the platform under an exclusive lock; save it afterwards if ``write``."""
    if not (directory / STATE_FILE).is_file():
        raise NotFound(f"no simulated platform in {directory} (run attestd-sim init)")
    with (directory / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        platform = SimulatedPlatform.load(directory)
        yield platform
        if write:
            platform.save(directory)


def _init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if (directory / STATE_FILE).exists() and not args.force:
        print(f"attestd-sim: {directory} already holds a platform (use --force)", file=sys.stderr)
        return 1
    platform = SimulatedPlatform.create(
        name=args.name,
        api_major=args.api_major,
        api_minor=args.api_minor,
        build_id=args.build_id,
        rsa_bits=args.rsa_bits,
    )
    platform.save(directory)
    print(
        f"initialised simulated SEV platform {platform.name!r} ({platform.version}) in {directory}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    with _platform(args.dir, write=False) as platform:
        export = platform.export()
        version = platform.version
    fields = {
        "pdh": _b64(export.pdh),
        "cert-chain": _b64(export.cert_chain),
        "cpu0-id": _b64(export.chip_id),
        "signed-cek": _b64(export.signed_cek),
        "api-major": version.api_major,
        "api-minor": version.api_minor,
        "build-id": version.build_id,
        "cbitpos": 51,
        "reduced-phys-bits": 1,
    }
    if args.format == "json":
        print(json.dumps(fields, indent=2))
    else:
        for key, value in fields.items():
            print(f"{key:<18}: {value}")
    if args.out is not None:
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "pdh.cert").write_bytes(export.pdh)
        (out / "cert_chain.cert").write_bytes(export.cert_chain)
        (out / "cek.cert").write_bytes(export.signed_cek)
        (out / "chip_id.bin").write_bytes(export.chip_id)
    return 0


def _trust_anchor(args: argparse.Namespace) -> int:
    with _platform(args.dir, write=False) as platform:
        print(platform.write_trust_anchor(args.out))
    return 0


def _launch_start(args: argparse.Namespace) -> int:
    godh = raw_or_base64(read_bytes(args.godh_cert, "GODH certificate"))
    session = raw_or_base64(read_bytes(args.session, "session"))
    with _platform(args.dir) as platform:
        print(platform.launch_start(godh, session, args.policy))
    return 0


def _launch_update_data(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        for path in args.files:
            platform.launch_update_data(args.handle, read_bytes(path))
    return 0


def _launch_update_vmsa(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        for path in args.files:
            platform.launch_update_vmsa(args.handle, read_bytes(path, "VMSA file"))
    return 0


def _launch_measure(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        print(_b64(platform.launch_measure(args.handle)))
    return 0


def _launch_secret(args: argparse.Namespace) -> int:
    header = raw_or_base64(read_bytes(args.header, "secret header"))
    secret = raw_or_base64(read_bytes(args.secret, "secret"))
    with _platform(args.dir) as platform:
        platform.launch_secret(args.handle, header, secret)
    return 0


def _launch_finish(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        platform.launch_finish(args.handle)
    return 0


def _secret_table(args: argparse.Namespace) -> int:
    with _platform(args.dir, write=False) as platform:
        table = platform.secret_table(args.handle)
    if table is None:
        print(f"attestd-sim: guest {args.handle} has no secret", file=sys.stderr)
        return 1
    write_private(args.out, table)  # the guest's secrets: owner-only
    return 0


def _status(args: argparse.Namespace) -> int:
    with _platform(args.dir, write=False) as platform:
        guests = {str(h): platform.guest_state(h).value for h in platform.handles()}
        version = platform.version
        name = platform.name
    print(json.dumps({"name": name, "firmware": str(version), "guests": guests}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``attestd-sim`` argument parser."""
    parser = new_parser("attestd-sim", __doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--dir", type=Path, required=True, help="platform state directory")
        cmd.set_defaults(func=handler)
        return cmd

    def guest(name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        cmd = command(name, handler, text)
        cmd.add_argument("--handle", type=_U32, required=True, help="guest handle")
        return cmd

    init = command("init", _init, "mint a new platform (ARK/ASK, CEK, OCA, PEK, PDH)")
    init.add_argument("--name", default="sim", help="platform / trust anchor name")
    init.add_argument("--api-major", type=_BYTE, default=1, help="firmware API major (0-255)")
    init.add_argument("--api-minor", type=_BYTE, default=55, help="firmware API minor (0-255)")
    init.add_argument("--build-id", type=_BYTE, default=21, help="firmware build id (0-255)")
    init.add_argument(
        "--rsa-bits", type=int, choices=(2048, 4096), default=4096, help="ARK/ASK RSA key size"
    )
    init.add_argument("--force", action="store_true", help="replace an existing platform")

    export = command("export", _export, "print the platform data (like virsh nodesevinfo)")
    export.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (text)"
    )
    export.add_argument("--out", type=Path, help="also write pdh.cert, cert_chain.cert, cek.cert")

    anchor = command("trust-anchor", _trust_anchor, "write <out>/<name>/{ark,ask}.cert")
    anchor.add_argument("--out", type=Path, required=True, help="trust anchor directory")

    start = command("launch-start", _launch_start, "LAUNCH_START; prints the guest handle")
    start.add_argument("--godh-cert", type=Path, required=True, help="guest owner DH cert file")
    start.add_argument("--session", type=Path, required=True, help="launch session blob file")
    start.add_argument(
        "--policy", type=int_range(0, 0xFFFFFFFF, base=0), required=True, help="guest policy"
    )

    data = guest("launch-update-data", _launch_update_data, "LAUNCH_UPDATE_DATA with raw files")
    data.add_argument("files", type=Path, nargs="+", help="raw files to measure, in order")
    vmsa = guest("launch-update-vmsa", _launch_update_vmsa, "LAUNCH_UPDATE_VMSA (4096-byte pages)")
    vmsa.add_argument("files", type=Path, nargs="+", help="VMSA pages, one file per vCPU")
    guest("launch-measure", _launch_measure, "LAUNCH_MEASURE; prints base64(measure||mnonce)")
    secret = guest("launch-secret", _launch_secret, "LAUNCH_SECRET with a header and payload")
    secret.add_argument("--header", type=Path, required=True, help="secret header file")
    secret.add_argument("--secret", type=Path, required=True, help="encrypted secret file")
    guest("launch-finish", _launch_finish, "LAUNCH_FINISH")
    table = guest("secret-table", _secret_table, "write the decrypted secret table to --out")
    table.add_argument("--out", type=Path, required=True, help="output file")
    command("status", _status, "print the platform's version and guest states")
    snp_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attestd-sim``."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return run_guarded("attestd-sim", lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
