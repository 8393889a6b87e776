"""attestd-sim snp: drive the simulated SEV-SNP platform from the shell.

The SNP state lives in the same --dir as the SEV platform (snp.json and the
VCEK/VLEK keys, mode 0600) and is read under the same lock.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attestd.console import int_range, read_bytes
from attestd.errors import ParseError
from attestd.sev.snp.report import Generation, SigningKey, TcbVersion
from attestd.sim.snp import STATE_FILE, ReportRequest, SnpPlatform
from attestd.sim.snp_psp import UnixPsp

LOCK_FILE = ".lock"
Handler = Callable[[argparse.Namespace], int]
_HEX = re.compile(r"[0-9A-Fa-f]*")


@contextmanager
def _platform(directory: Path) -> Iterator[SnpPlatform]:
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"no simulated SNP platform in {directory} (run attestd-sim snp init)"
        )
    with (directory / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield SnpPlatform.load(directory)


def _hex(value: str, size: int, what: str) -> bytes:
    if len(value) != 2 * size or not _HEX.fullmatch(value):
        raise ParseError(f"{what} must be {2 * size} hex digits")
    return bytes.fromhex(value)


def _tcb(value: str, generation: Generation) -> TcbVersion:
    try:
        numbers = [int(p, 0) for p in value.split(",")]
    except ValueError:
        numbers = []
    names = ["bootloader", "tee", "snp", "microcode"] + (["fmc"] if generation.has_fmc else [])
    if len(numbers) != len(names) or not all(0 <= n <= 0xFF for n in numbers):
        raise ParseError(f"--tcb for {generation.value} is {','.join(names)}, each 0..255")
    parts = dict(zip(names, numbers, strict=True))
    return TcbVersion.build(
        bootloader=parts["bootloader"],
        tee=parts["tee"],
        snp=parts["snp"],
        microcode=parts["microcode"],
        fmc=parts.get("fmc"),
    )


def _write(path: Path, data: bytes) -> None:
    if path.exists() and not path.is_file():  # a FIFO would block, a directory fails late
        raise ParseError(f"output {path} is not a regular file")
    path.write_bytes(data)
    print(path)


def _init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if (directory / STATE_FILE).exists() and not args.force:
        print(
            f"attestd-sim: {directory} already holds an SNP platform (use --force)",
            file=sys.stderr,
        )
        return 1
    generation = Generation(args.generation)
    platform = SnpPlatform.create(
        name=args.name,
        generation=generation,
        tcb=None if args.tcb is None else _tcb(args.tcb, generation),
        vlek=args.vlek,
        report_version=args.report_version,
        rsa_bits=args.rsa_bits,
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (directory / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        platform.save(directory)
    print(
        f"initialised simulated SEV-SNP platform {platform.name!r} ({generation.value}, "
        f"TCB {platform.tcb.to_json()}) in {directory}"
    )
    return 0


def _export_anchor(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        print(platform.write_anchor(args.out))
    return 0


def _vcek(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        _write(args.out, platform.leaf(SigningKey[args.signing_key.upper()]))
    return 0


def _cert_table(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        _write(args.out, platform.cert_table(SigningKey[args.signing_key.upper()]))
    return 0


def _crl(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        _write(args.out, platform.crl(revoke=tuple(args.revoke or ())))
    return 0


def _read(path: Path | None) -> bytes | None:
    return None if path is None else read_bytes(path)


def _launch(args: argparse.Namespace, report_data: bytes) -> ReportRequest:
    """The launch side of a report (what the VM was started with), for ``report_data``."""
    if args.measurement is not None:
        measurement = _hex(args.measurement, 48, "--measurement")
    elif args.firmware is not None:
        measurement = SnpPlatform.measure(
            read_bytes(args.firmware, "firmware"),
            kernel=_read(args.kernel),
            initrd=_read(args.initrd),
            cmdline=args.cmdline,
            vcpus=args.vcpus,
            vcpu_type=args.vcpu_type,
            guest_features=args.guest_features,
        )
    else:
        raise ParseError("give --firmware (and the other launch files) or --measurement")
    return ReportRequest(
        report_data=report_data,
        measurement=measurement,
        host_data=bytes(32) if args.host_data is None else _hex(args.host_data, 32, "--host-data"),
        policy=args.policy,
        vmpl=args.vmpl,
        signing_key=SigningKey[args.signing_key.upper()],
        guest_svn=args.guest_svn,
    )


def _report(args: argparse.Namespace) -> int:
    request = _launch(args, _hex(args.report_data, 64, "--report-data"))
    with _platform(args.dir) as platform:
        _write(args.out, platform.report(request))
    return 0


def _serve(args: argparse.Namespace) -> int:
    launch = _launch(args, bytes(64))
    socket_path: Path = args.socket
    if socket_path.exists() or socket_path.is_symlink():
        if not socket_path.is_socket():
            raise ParseError(f"--socket {socket_path} exists and is not a socket")
        socket_path.unlink()  # left behind by a PSP that did not stop cleanly
    with _platform(args.dir) as loaded:  # read once: the keys stay in memory while serving
        platform = loaded
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    try:
        psp = UnixPsp(socket_path, platform, launch)
    except OSError as exc:
        raise ParseError(f"cannot listen on {socket_path}: {exc.strerror or exc}") from None
    try:
        if args.pid_file is not None:  # written once the socket listens: the readiness signal
            args.pid_file.write_text(f"{os.getpid()}\n", encoding="ascii")
        print(
            f"attestd-sim: simulated PSP of {platform.name!r} on {socket_path}: measurement "
            f"{launch.measurement.hex()}, host-data {launch.host_data.hex()}, policy "
            f"0x{launch.policy:x}, VMPL {launch.vmpl}",
            flush=True,
        )
        stop.wait()
    finally:
        psp.close()
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
    print(f"attestd-sim: simulated PSP on {socket_path} stopped ({psp.requests} requests)")
    return 0


def _status(args: argparse.Namespace) -> int:
    with _platform(args.dir) as platform:
        keys = ", ".join(k.label for k in platform.keys)
        print(
            f"{platform.name}: {platform.generation.value}, report version "
            f"{platform.report_version}, TCB {platform.tcb.to_json()}, firmware "
            f"{platform.firmware}, chip id {platform.chip_id.hex()}, keys: {keys}"
        )
    return 0


def launch_options(cmd: argparse.ArgumentParser) -> None:
    """What the VM was started with: the launch side of every report it gets."""
    cmd.add_argument("--firmware", type=Path, metavar="FILE", help="OVMF image")
    cmd.add_argument("--kernel", type=Path, metavar="FILE", help="kernel (direct boot)")
    cmd.add_argument("--initrd", type=Path, metavar="FILE", help="initrd (needs --kernel)")
    cmd.add_argument("--cmdline", help="kernel command line (needs --kernel)")
    cmd.add_argument("--vcpus", type=int_range(1, 4096), default=1, help="number of vCPUs")
    cmd.add_argument("--vcpu-type", default="EPYC-v4", help="QEMU vCPU model")
    cmd.add_argument(
        "--guest-features",
        type=int_range(0, (1 << 64) - 1, base=0),
        default=0x1,
        help="VMSA SEV_FEATURES (QEMU: 0x1)",
    )
    cmd.add_argument("--measurement", metavar="HEX", help="instead of the launch files")
    cmd.add_argument("--host-data", metavar="HEX", help="32 bytes in hex (default zero)")
    cmd.add_argument(
        "--policy", type=int_range(0, (1 << 64) - 1, base=0), default=0x30000, help="guest policy"
    )
    cmd.add_argument("--vmpl", type=int_range(0, 3), default=0, help="VMPL of the request")
    cmd.add_argument("--guest-svn", type=int_range(0, (1 << 32) - 1), default=0, help="GUEST_SVN")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``attestd-sim snp <command>`` to the ``attestd-sim`` parser."""
    snp = sub.add_parser("snp", help="the simulated SEV-SNP platform", description=__doc__)
    snp_sub = snp.add_subparsers(dest="snp_command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = snp_sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--dir", type=Path, required=True, help="platform state directory")
        cmd.set_defaults(func=handler)
        return cmd

    def key_option(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--signing-key", choices=("vcek", "vlek"), default="vcek", help="VCEK or VLEK"
        )

    init = command("init", _init, "mint an SNP platform: ARK/ASK/ASVK, chip id, VCEK [, VLEK]")
    init.add_argument("--name", default="sim-snp", help="platform / trust anchor name")
    init.add_argument(
        "--generation", choices=[g.value for g in Generation], default="milan", help="CPU line"
    )
    init.add_argument("--tcb", metavar="BL,TEE,SNP,UCODE[,FMC]", help="the platform TCB")
    init.add_argument("--vlek", action="store_true", help="also mint a VLEK (signed by the ASVK)")
    init.add_argument(
        "--report-version", type=int, choices=(3, 5), default=3, help="report version signed"
    )
    init.add_argument(
        "--rsa-bits", type=int, choices=(2048, 4096), default=4096, help="root key size (AMD: 4096)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing SNP platform")

    anchor = command("export-anchor", _export_anchor, "write <out>/<name>/{ark,ask,asvk}.pem")
    anchor.add_argument("--out", type=Path, required=True, metavar="DIR", help="anchors dir")
    vcek = command("vcek", _vcek, "write the VCEK (or VLEK) as DER")
    vcek.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    key_option(vcek)
    table = command("cert-table", _cert_table, "write the extended-report certificate table")
    table.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    key_option(table)

    crl = command("crl", _crl, "write the ARK's CRL (DER, as AMD KDS serves it; 7 days)")
    crl.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    crl.add_argument(
        "--revoke", action="append", choices=("ask", "asvk"), help="list it as revoked (repeat)"
    )

    report = command("report", _report, "sign an attestation report for REPORT_DATA")
    report.add_argument("--report-data", required=True, metavar="HEX", help="64 bytes in hex")
    launch_options(report)
    report.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    key_option(report)

    serve = command(
        "serve",
        _serve,
        "serve the PSP of one VM on a unix socket (its virtio-serial port): reports for "
        "the REPORT_DATA the guest sends, with this launch, until SIGTERM",
    )
    serve.add_argument("--socket", type=Path, required=True, metavar="PATH", help="listen here")
    serve.add_argument("--pid-file", type=Path, metavar="FILE", help="written once listening")
    launch_options(serve)
    key_option(serve)
    command("status", _status, "print the SNP platform's generation, TCB and chip id")
