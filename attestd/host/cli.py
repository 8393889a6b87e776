"""attestd-host: domain preparation, platform data, hook install, attested start, agent.

The host config is /etc/attestd/host.toml (or $ATTESTD_HOST_CONFIG, or --config, which
must exist); its libvirt_uri is the default of every --connect.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from attestd.console import (
    EXIT_USAGE,
    new_parser,
    plain,
    read_bytes,
    read_text,
    run_guarded,
    url_arg,
    uuid_arg,
)
from attestd.errors import LaunchError, ParseError
from attestd.guest import initdata as initdata_mod
from attestd.host import hook as hookmod
from attestd.host import platform as plat
from attestd.host import sim as simhost
from attestd.host import snpsim
from attestd.host.client import ServiceClient, SnpInitdata
from attestd.host.config import HostSettings, load_settings
from attestd.host.domain import (
    SNP_DEFAULT_POLICY,
    WRAPPER_NAME,
    AttestdMetadata,
    DomainInfo,
    SimSnp,
    ensure_uuid,
    parse_domain,
    prepare_domain,
    prepare_snp_domain,
    set_emulator,
)

HOOK_SOURCE = Path(__file__).resolve().parents[2] / "hooks" / "qemu"
DEFAULT_HOOK_DIR = Path("/etc/libvirt/hooks/qemu.d")


def _connect(uri: str) -> Any:
    import libvirt

    # errors are raised as libvirtError and reported once by main(), not also printed
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt.open(uri)


def default_wrapper() -> str:
    """The ``attestd-qemu`` next to this Python (the venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / WRAPPER_NAME
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(WRAPPER_NAME)
    if found is None:
        raise LaunchError(f"{WRAPPER_NAME} not found; pass --emulator")
    return found


def _emulator(args: argparse.Namespace, settings: HostSettings, wrapped: bool) -> str | None:
    """The ``<emulator>`` to write (None: keep the domain's)."""
    given: str | None = args.emulator
    if args.no_wrapper:
        if given is not None and Path(given).name == WRAPPER_NAME:
            raise ParseError(f"--no-wrapper: --emulator must be QEMU itself, not {WRAPPER_NAME}")
        # the agent path must not run through the wrapper: back to the real QEMU
        return given or (str(settings.qemu_binary) if wrapped else None)
    if given is not None and Path(given).name != WRAPPER_NAME:
        raise ParseError(
            f"--emulator must name {WRAPPER_NAME} (for the agent path use --no-wrapper)"
        )
    return given or default_wrapper()


SCHEME_SEV = "amd-sev"
SCHEME_SNP = "amd-sev-snp"


def _snp_policy(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (hex with 0x)") from None
    if not 0 <= value < 1 << 64 or not value & (1 << 17):
        raise argparse.ArgumentTypeError("an SNP policy is 64 bits with bit 17 set")
    return value


def cmd_prepare_domain(args: argparse.Namespace, settings: HostSettings) -> int:
    """Add attestd metadata, SEV placeholders and the wrapper to a domain XML."""
    if args.define and not args.domain:
        raise ParseError("--define needs --domain (with --xml, write the result with -o)")
    conn = None
    if args.domain:
        conn = _connect(args.connect or settings.libvirt_uri)
        xml = conn.lookupByName(args.domain).XMLDesc(0)
    else:
        xml = ensure_uuid(read_text(Path(args.xml), "domain XML"))
    info = parse_domain(xml)
    scheme, fetched = _scheme(args, settings, info)
    if scheme == SCHEME_SNP:
        out = _prepare_snp(args, settings, xml, info, fetched)
    else:
        out = _prepare_sev(args, settings, xml, info)
    if conn is not None and args.define:
        conn.defineXML(out)
        print(f"domain {info.name} prepared for attestd")
    elif args.output:
        Path(args.output).write_text(out, encoding="utf-8")
    else:
        sys.stdout.write(out)
    return 0


#: Flags that build the SNP initdata locally (offline use, without the service).
LOCAL_SNP_FLAGS = ("ca_file", "pin", "extra_service", "initdata", "policy")
#: Flags only the SEV / SEV-ES path has.
SEV_FLAGS = ("simulate", "firmware", "sim_state", "vcpu_type", "autostart", "no_wrapper")
#: ... of which simulated SNP uses these (the simulated PSP's launch inputs).
SIM_SNP_FLAGS = ("simulate", "firmware", "sim_state", "vcpu_type")


def _scheme(
    args: argparse.Namespace, settings: HostSettings, info: DomainInfo
) -> tuple[str, SnpInitdata | None]:
    """The VM's scheme: ``--scheme``, implied by the local flags, else the service's
    registration (``GET /vm/<uuid>/initdata``: an SNP VM's policy, initdata, HOST_DATA).
    ``--scheme amd-sev-snp`` without the local initdata flags asks the service too."""
    local = any(getattr(args, flag) not in (None, [], False) for flag in LOCAL_SNP_FLAGS)
    if args.scheme == SCHEME_SEV or (args.scheme == SCHEME_SNP and local):
        return args.scheme, None
    if args.scheme is None:
        if local:
            return SCHEME_SNP, None
        if any(getattr(args, flag) not in (None, False) for flag in SEV_FLAGS):
            return SCHEME_SEV, None
    vm_id = cast("UUID", args.vm_id) or info.uuid
    try:
        fetched = ServiceClient(args.service, settings).initdata(vm_id)
    except LaunchError as exc:
        raise LaunchError(
            f"{exc.message} (offline: give --scheme, and for {SCHEME_SNP} --pin, --ca-file "
            "or --initdata)"
        ) from None
    if fetched is None and args.scheme == SCHEME_SNP:
        raise ParseError(f"VM {vm_id} is not registered as {SCHEME_SNP} at the service")
    return (SCHEME_SEV, None) if fetched is None else (SCHEME_SNP, fetched)


def _prepare_snp(
    args: argparse.Namespace,
    settings: HostSettings,
    xml: str,
    info: DomainInfo,
    fetched: SnpInitdata | None,
) -> str:
    """SEV-SNP: launchSecurity, HOST_DATA and the initdata; no hook, no wrapper.

    ``--simulate``: no launchSecurity; the hook runs the simulated PSP (QEMU TCG)."""
    sim_flags = SIM_SNP_FLAGS if args.simulate else ()
    for flag in SEV_FLAGS:
        if getattr(args, flag) and flag not in sim_flags:
            raise ParseError(f"--{flag.replace('_', '-')} has no meaning for {SCHEME_SNP}")
    host_data: bytes | None = None
    policy = args.policy
    if fetched is not None:
        document, policy, host_data = fetched.initdata, fetched.policy, fetched.host_data
    elif args.initdata:
        if args.ca_file or args.pin or args.extra_service or args.vm_id:
            raise ParseError(
                "--initdata is used as it is: no --ca-file, --pin, --extra-service, --vm-id"
            )
        document = read_bytes(Path(args.initdata), "initdata")
    else:
        ca_pem = read_text(Path(args.ca_file), "CA certificate") if args.ca_file else None
        try:
            document = initdata_mod.build(
                [args.service, *args.extra_service],
                cast("UUID", args.vm_id) or info.uuid,
                ca_pem=ca_pem,
                pin=args.pin,
            )
        except initdata_mod.InitdataError as exc:
            raise ParseError(exc.message) from None
    if args.emulator is not None and Path(args.emulator).name == WRAPPER_NAME:
        raise ParseError(f"an SNP domain does not run through {WRAPPER_NAME}")
    if info.uses_wrapper and args.emulator is None:
        raise ParseError(f"the domain's emulator is {WRAPPER_NAME}: pass --emulator QEMU")
    policy = SNP_DEFAULT_POLICY if policy is None else policy
    simulate = None
    if args.simulate:
        try:
            launched = initdata_mod.host_data(document) if host_data is None else host_data
        except initdata_mod.InitdataError as exc:
            raise ParseError(exc.message) from None
        simulate = SimSnp(
            policy=policy,
            host_data=launched,
            firmware=Path(args.firmware) if args.firmware else None,
            sim_state=Path(args.sim_state) if args.sim_state else None,
            vcpu_type=args.vcpu_type,
        )
    out = prepare_snp_domain(
        xml,
        policy=policy,
        initdata=document,
        service=args.service,
        host_data=host_data,
        simulate=simulate,
        psp_socket=snpsim.psp_socket(settings, info.uuid),
    )
    if args.emulator is not None:
        out = set_emulator(out, args.emulator)
    if args.initdata_out:
        Path(args.initdata_out).write_bytes(document)
    if fetched is None:
        digest = initdata_mod.host_data(document).hex()
        print(f"host-data {digest} (register it, or let the service expect it)", file=sys.stderr)
    elif fetched.host_data != initdata_mod.host_data(document):
        print(
            f"host-data {fetched.host_data.hex()} (pinned by the owner; it is not the "
            "initdata's digest, so the guest agent refuses this initdata)",
            file=sys.stderr,
        )
    else:
        print(f"host-data {fetched.host_data.hex()} (from the service)", file=sys.stderr)
    return out


def _prepare_sev(
    args: argparse.Namespace, settings: HostSettings, xml: str, info: DomainInfo
) -> str:
    """SEV / SEV-ES: attestd metadata, placeholders, the wrapper (or the agent path)."""
    for flag in ("ca_file", "pin", "initdata", "initdata_out", "policy", "extra_service"):
        if getattr(args, flag) not in (None, []):
            raise ParseError(f"--{flag.replace('_', '-')} is for --scheme {SCHEME_SNP}")
    meta = AttestdMetadata(
        service=args.service,
        vm_id=cast("UUID", args.vm_id) or info.uuid,
        simulate=args.simulate,
        firmware=Path(args.firmware) if args.firmware else None,
        sim_state=Path(args.sim_state) if args.sim_state else None,
        vcpu_type=args.vcpu_type,
        autostart=args.autostart,
    )
    return prepare_domain(xml, meta, emulator=_emulator(args, settings, info.uses_wrapper))


def cmd_refresh_platform(args: argparse.Namespace, settings: HostSettings) -> int:
    """Export PDH, cert chain and chip id and cache them for the hook."""
    source = args.source
    data: plat.PlatformData
    if source == "sim":
        data = simhost.platform_data(
            Path(args.sim_state) if args.sim_state else settings.sim_state_dir
        )
    elif source == "dev-sev" or (source == "auto" and Path(args.dev).exists()):
        data = plat.read_dev_sev(Path(args.dev))
    else:
        conn = _connect(args.connect or settings.libvirt_uri)
        data = plat.from_sev_info(conn.getSEVInfo(), source=f"libvirt:{conn.getURI()}")
    cache = Path(args.cache) if args.cache else settings.platform_cache
    plat.write_cache(cache, data)
    print(f"platform data from {data.source} written to {cache}")
    return 0


def cmd_install_hook(args: argparse.Namespace, settings: HostSettings) -> int:
    """Install ``hooks/qemu`` as ``<dir>/attestd`` with this Python as interpreter."""
    del settings
    source = Path(args.source)
    lines = read_text(source, "hook source").splitlines(keepends=True)
    if not lines or not lines[0].startswith("#!"):
        raise LaunchError(f"{source} is not the attestd hook dispatcher")
    lines[0] = f"#!{sys.executable}\n"
    target_dir = Path(args.dir)
    if target_dir.exists() and not target_dir.is_dir():
        raise ParseError(f"hook directory {target_dir} is not a directory")
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / "attestd"
    target.write_text("".join(lines), encoding="utf-8")
    target.chmod(0o755)
    print(f"hook installed as {target}; restart libvirtd (hooks are found at its start)")
    return 0


def cmd_start(args: argparse.Namespace, settings: HostSettings) -> int:
    """Start an attestd domain; exit 0 only once it is attested and running."""
    from attestd.host.agent import start_domain

    start_domain(settings, _connect(args.connect or settings.libvirt_uri), args.domain)
    print(f"domain {args.domain} attested and running")
    return 0


def cmd_run(args: argparse.Namespace, settings: HostSettings) -> int:
    """Run the host agent until SIGTERM/SIGINT."""
    from attestd.host.agent import Agent

    agent = Agent(settings, args.connect)
    signal.signal(signal.SIGTERM, lambda signum, frame: agent.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: agent.stop())
    agent.run()
    return 0


def cmd_hook(args: argparse.Namespace, settings: HostSettings) -> int:
    """Run the hook's work by hand (XML on stdin), e.g. to try a configuration."""
    del settings
    try:
        xml = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("the domain XML on stdin is not UTF-8 text") from None
    return hookmod.run([args.domain, args.op, args.subop, "-"], xml, prog="attestd-host hook")


def build_parser() -> argparse.ArgumentParser:
    """The ``attestd-host`` argument parser."""
    parser = new_parser("attestd-host", __doc__)
    parser.add_argument(
        "--config", help="host config file (must exist; default /etc/attestd/host.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        text = plain(func.__doc__)
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.set_defaults(func=func)
        return cmd

    def connect(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--connect", metavar="URI", help="libvirt URI (default: libvirt_uri)")

    p = command("prepare-domain", cmd_prepare_domain)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--xml", help="domain XML file")
    src.add_argument("--domain", help="a defined domain (read via libvirt)")
    p.add_argument(
        "--service",
        type=url_arg,
        required=True,
        help="service base URL, e.g. https://a.example/v1",
    )
    p.add_argument(
        "--vm-id", type=uuid_arg, help="VM id (a UUID) at the service (default: the domain UUID)"
    )
    p.add_argument("--simulate", action="store_true", help="simulated SEV (no <launchSecurity>)")
    p.add_argument("--firmware", help="firmware file to measure (default: <os><loader>)")
    p.add_argument("--sim-state", help="simulator state directory")
    p.add_argument("--vcpu-type", help="vCPU type reported to the service (SEV-ES)")
    p.add_argument("--autostart", action="store_true", help="the agent starts it at boot")
    p.add_argument(
        "--emulator",
        help=f"the <emulator> to write: {WRAPPER_NAME} (default: the one next to this Python); "
        "with --no-wrapper QEMU itself (default: keep it, or the host config's qemu_binary "
        f"in place of {WRAPPER_NAME})",
    )
    p.add_argument(
        "--no-wrapper",
        action="store_true",
        help=f"agent path: no {WRAPPER_NAME} as <emulator>, no marker",
    )
    p.add_argument(
        "--scheme",
        choices=[SCHEME_SEV, SCHEME_SNP],
        help=f"the VM's registration scheme ({SCHEME_SEV}: SEV and SEV-ES). Default: "
        f"{SCHEME_SNP} with the local initdata flags, {SCHEME_SEV} with SEV-only flags, "
        f"else asked from the service (an {SCHEME_SNP} VM's policy, initdata and HOST_DATA "
        "come from GET /vm/<uuid>/initdata)",
    )
    p.add_argument(
        "--policy",
        type=_snp_policy,
        help=f"{SCHEME_SNP}, offline: guest policy, hex or decimal "
        f"(default 0x{SNP_DEFAULT_POLICY:x})",
    )
    p.add_argument(
        "--extra-service",
        type=url_arg,
        action="append",
        default=[],
        help=f"{SCHEME_SNP}, offline: another service base URL the guest may use (repeatable)",
    )
    p.add_argument("--ca-file", help=f"{SCHEME_SNP}, offline: the service's CA certificate (PEM)")
    p.add_argument("--pin", help=f"{SCHEME_SNP}, offline: the service key pin, sha256//BASE64")
    p.add_argument(
        "--initdata",
        help=f"{SCHEME_SNP}, offline: use this initdata document as it is (no other options)",
    )
    p.add_argument("--initdata-out", help=f"{SCHEME_SNP}: also write the initdata document here")
    p.add_argument("--define", action="store_true", help="with --domain: redefine it")
    p.add_argument("-o", "--output", help="write the XML here (default stdout)")
    connect(p)

    p = command("refresh-platform", cmd_refresh_platform)
    p.add_argument(
        "--source",
        choices=["auto", "dev-sev", "libvirt", "sim"],
        default="auto",
        help="where to read the platform data (auto: --dev if it exists, else libvirt)",
    )
    p.add_argument("--dev", default="/dev/sev", help="SEV device (default /dev/sev)")
    p.add_argument("--sim-state", help="simulator state directory (source sim)")
    p.add_argument("--cache", help="cache file (default from the host config)")
    connect(p)

    p = command("install-hook", cmd_install_hook)
    p.add_argument(
        "--dir", default=str(DEFAULT_HOOK_DIR), help=f"hook directory (default {DEFAULT_HOOK_DIR})"
    )
    p.add_argument(
        "--source", default=str(HOOK_SOURCE), help="the hook dispatcher (default: hooks/qemu)"
    )

    p = command("start", cmd_start)
    p.add_argument("domain", help="domain name")
    connect(p)

    p = command("run", cmd_run)
    connect(p)

    p = command("hook", cmd_hook)
    p.add_argument("domain", help="domain name")
    p.add_argument("op", help="hook operation (e.g. start)")
    p.add_argument("subop", help="hook sub-operation (e.g. begin)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attestd-host``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = cast(
        "Callable[[argparse.Namespace, HostSettings], int] | None", getattr(args, "func", None)
    )
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s attestd-host %(levelname)s %(message)s",
    )

    def body() -> int:
        settings = load_settings(Path(args.config) if args.config else None)
        return func(args, settings)

    return run_guarded("attestd-host", body)


if __name__ == "__main__":
    sys.exit(main())
