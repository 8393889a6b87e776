"""``attestd-host``: domain preparation, platform data, hook install, paused start, agent."""

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

from attestd.errors import AttestdError, LaunchError
from attestd.host import hook as hookmod
from attestd.host import platform as plat
from attestd.host import sim as simhost
from attestd.host.config import HostSettings, load_settings
from attestd.host.domain import (
    WRAPPER_NAME,
    AttestdMetadata,
    ensure_uuid,
    parse_domain,
    prepare_domain,
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


def cmd_prepare_domain(args: argparse.Namespace, settings: HostSettings) -> int:
    """Add attestd metadata, SEV placeholders and the wrapper to a domain XML."""
    conn = None
    if args.domain:
        conn = _connect(args.connect or settings.libvirt_uri)
        xml = conn.lookupByName(args.domain).XMLDesc(0)
    else:
        xml = ensure_uuid(Path(args.xml).read_text(encoding="utf-8"))
    info = parse_domain(xml)
    meta = AttestdMetadata(
        service=args.service.rstrip("/"),
        vm_id=UUID(args.vm_id) if args.vm_id else info.uuid,
        simulate=args.simulate,
        firmware=Path(args.firmware) if args.firmware else None,
        sim_state=Path(args.sim_state) if args.sim_state else None,
        vcpu_type=args.vcpu_type,
        autostart=args.autostart,
    )
    emulator = None if args.no_wrapper else (args.emulator or default_wrapper())
    out = prepare_domain(xml, meta, emulator=emulator)
    if conn is not None and args.define:
        conn.defineXML(out)
        print(f"domain {info.name} prepared for attestd")
    elif args.output:
        Path(args.output).write_text(out, encoding="utf-8")
    else:
        sys.stdout.write(out)
    return 0


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
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines or not lines[0].startswith("#!"):
        raise LaunchError(f"{source} is not the attestd hook dispatcher")
    lines[0] = f"#!{sys.executable}\n"
    target_dir = Path(args.dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / "attestd"
    target.write_text("".join(lines), encoding="utf-8")
    target.chmod(0o755)
    print(f"hook installed as {target}; restart libvirtd (hooks are found at its start)")
    return 0


def cmd_start(args: argparse.Namespace, settings: HostSettings) -> int:
    """Start a domain paused, attest it, resume it."""
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
    return hookmod.run([args.domain, args.op, args.subop, "-"], sys.stdin.read())


def build_parser() -> argparse.ArgumentParser:
    """The ``attestd-host`` argument parser."""
    parser = argparse.ArgumentParser(prog="attestd-host", description=__doc__)
    parser.add_argument("--config", help="host config file (default /etc/attestd/host.toml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare-domain", help=cmd_prepare_domain.__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--xml", help="domain XML file")
    src.add_argument("--domain", help="a defined domain (read via libvirt)")
    p.add_argument("--service", required=True, help="service base URL, e.g. https://a.example/v1")
    p.add_argument("--vm-id", help="VM id at the service (default: the domain UUID)")
    p.add_argument("--simulate", action="store_true", help="simulated SEV (no <launchSecurity>)")
    p.add_argument("--firmware", help="firmware file to measure (default: <os><loader>)")
    p.add_argument("--sim-state", help="simulator state directory")
    p.add_argument("--vcpu-type", help="vCPU type reported to the service (SEV-ES)")
    p.add_argument("--autostart", action="store_true", help="the agent starts it at boot")
    p.add_argument("--emulator", help="path of attestd-qemu (default: next to this Python)")
    p.add_argument("--no-wrapper", action="store_true", help="keep <emulator>: agent path")
    p.add_argument("--define", action="store_true", help="with --domain: redefine it")
    p.add_argument("-o", "--output", help="write the XML here (default stdout)")
    p.add_argument("--connect", help="libvirt URI")
    p.set_defaults(func=cmd_prepare_domain)

    p = sub.add_parser("refresh-platform", help=cmd_refresh_platform.__doc__)
    p.add_argument("--source", choices=["auto", "dev-sev", "libvirt", "sim"], default="auto")
    p.add_argument("--dev", default="/dev/sev")
    p.add_argument("--sim-state", help="simulator state directory (source sim)")
    p.add_argument("--cache", help="cache file (default from the host config)")
    p.add_argument("--connect", help="libvirt URI")
    p.set_defaults(func=cmd_refresh_platform)

    p = sub.add_parser("install-hook", help=cmd_install_hook.__doc__)
    p.add_argument("--dir", default=str(DEFAULT_HOOK_DIR))
    p.add_argument("--source", default=str(HOOK_SOURCE))
    p.set_defaults(func=cmd_install_hook)

    p = sub.add_parser("start", help=cmd_start.__doc__)
    p.add_argument("domain")
    p.add_argument("--connect", help="libvirt URI")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("run", help=cmd_run.__doc__)
    p.add_argument("--connect", help="libvirt URI")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("hook", help=cmd_hook.__doc__)
    p.add_argument("domain")
    p.add_argument("op")
    p.add_argument("subop")
    p.set_defaults(func=cmd_hook)
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
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s attestd-host %(levelname)s %(message)s",
    )
    try:
        settings = load_settings(Path(args.config) if args.config else None)
        return func(args, settings)
    except AttestdError as exc:
        print(f"attestd-host: error: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__name__ == "libvirtError":
            print(f"attestd-host: libvirt: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
