"""``attestd chain verify`` and ``attestd cek import|fetch``: the platform chain, offline.

``chain verify`` checks a host's SEV certificate chain (as libvirt ``virsh
nodesevinfo`` / QEMU ``query-sev-capabilities`` or ``sevctl export`` give it;
certificate files raw or base64) against the pinned AMD roots plus any extra
anchors, printing the generation and each verified link, or the first failing
link. Exit status 0 only for a fully anchored chain.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from pathlib import Path
from typing import Any

from attestd import config
from attestd.console import plain, read_bytes, read_text
from attestd.errors import ChainInvalid, ParseError
from attestd.sev._binary import raw_or_base64
from attestd.sev.certs import SevCertificate
from attestd.sev.chain import PlatformChain, check_chain
from attestd.trust import load_anchors
from attestd.trust.kds import CekStore, chip_id_hex, parse_chip_id, parse_signed_cek


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``chain`` and ``cek`` sub-commands."""
    chain = subparsers.add_parser("chain", help="verify an SEV platform certificate chain")
    chain_sub = chain.add_subparsers(dest="chain_command", metavar="COMMAND", required=True)
    verify = chain_sub.add_parser(
        "verify",
        help="verify PDH, PEK, OCA and CEK up to a pinned AMD root",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("--pdh", type=Path, metavar="FILE", help="PDH certificate (raw or base64)")
    verify.add_argument(
        "--cert-chain",
        type=Path,
        metavar="FILE",
        help="PEK||OCA||CEK as libvirt/QEMU export it (raw or base64)",
    )
    verify.add_argument(
        "--sevctl",
        type=Path,
        metavar="FILE",
        help="instead of --pdh/--cert-chain: a `sevctl export [--full]` file (ASK/ARK ignored)",
    )
    verify.add_argument(
        "--nodesevinfo",
        type=Path,
        metavar="FILE",
        help="instead of --pdh/--cert-chain: `virsh nodesevinfo` text, or JSON with "
        "pdh, cert-chain, cpu0-id (QEMU query-sev-capabilities, attestd-sim export)",
    )
    verify.add_argument(
        "--cek", type=Path, metavar="FILE", help="ASK-signed CEK from AMD KDS (raw or base64)"
    )
    verify.add_argument(
        "--chip-id",
        metavar="HEX|FILE",
        help="take the signed CEK from the CEK cache / AMD KDS for this chip id",
    )
    verify.add_argument("--cache", type=Path, metavar="DIR", help="CEK cache directory")
    verify.add_argument("--offline", action="store_true", help="never contact AMD KDS")
    verify.add_argument(
        "--oca", type=Path, metavar="FILE", help="pin the OCA: the owner's OCA certificate"
    )
    verify.add_argument("--generation", metavar="NAME", help="require this anchor (e.g. milan)")
    verify.add_argument(
        "--trust-anchors",
        type=Path,
        metavar="DIR",
        help="extra anchors <DIR>/<name>/{ark,ask}.cert (default: $ATTESTD_TRUST_ANCHORS_DIR)",
    )
    verify.set_defaults(func=run_verify)

    cek = subparsers.add_parser("cek", help="manage the cache of ASK-signed CEKs")
    cek_sub = cek.add_subparsers(dest="cek_command", metavar="COMMAND", required=True)
    imp = cek_sub.add_parser("import", help="import a signed CEK obtained elsewhere (offline)")
    imp.add_argument("--chip-id", required=True, metavar="HEX|FILE", help="GET_ID chip id")
    imp.add_argument(
        "--cek", required=True, type=Path, metavar="FILE", help="signed CEK file (raw or base64)"
    )
    imp.add_argument("--cache", type=Path, metavar="DIR", help="CEK cache directory")
    imp.add_argument(
        "--trust-anchors",
        type=Path,
        metavar="DIR",
        help="extra anchors the CEK may be signed by (default: $ATTESTD_TRUST_ANCHORS_DIR)",
    )
    imp.set_defaults(func=run_import)
    fetch = cek_sub.add_parser("fetch", help="get a chip's signed CEK (cache, then AMD KDS)")
    fetch.add_argument("--chip-id", required=True, metavar="HEX|FILE", help="GET_ID chip id")
    fetch.add_argument("--cache", type=Path, metavar="DIR", help="CEK cache directory")
    fetch.add_argument("--kds-url", metavar="URL", help="AMD KDS base URL")
    fetch.add_argument("--out", type=Path, metavar="FILE", help="also write the CEK to this file")
    fetch.set_defaults(func=run_fetch)


def _read(path: Path, what: str) -> bytes:
    data = read_bytes(path, what)
    try:
        return raw_or_base64(data)
    except ParseError as exc:
        raise ParseError(f"{what} {path}: {exc.message}") from None


def _chip_id(value: str) -> bytes:
    path = Path(value)
    if len(value) != 128 and path.exists():
        return parse_chip_id(read_bytes(path, "chip id file"))
    return parse_chip_id(value)


def _store(args: argparse.Namespace, settings: config.Settings) -> CekStore:
    return CekStore(
        args.cache or settings.effective_cek_cache_dir,
        base_url=getattr(args, "kds_url", None) or settings.kds_url,
        offline=getattr(args, "offline", False) or settings.kds_offline,
    )


class UsageError(Exception):
    """Wrong combination of options (exit status 2)."""


def parse_nodesevinfo(text: str) -> dict[str, str]:
    """Fields of ``virsh nodesevinfo`` output (``key : value`` lines) or a JSON object.

    JSON may be a QMP reply (``{"return": {...}}``) or a plain object.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"platform info is not valid JSON: {exc}") from None
        if isinstance(doc, dict) and isinstance(doc.get("return"), dict):
            doc = doc["return"]
        if not isinstance(doc, dict):
            raise ParseError("platform info JSON must be an object")
        return {str(k): str(v) for k, v in doc.items()}
    fields = {}
    for line in stripped.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _b64_field(fields: dict[str, str], *names: str) -> bytes | None:
    for name in names:
        if name in fields:
            try:
                return base64.b64decode(fields[name], validate=True)
            except (binascii.Error, ValueError):
                raise ParseError(f"platform info: {name} is not base64") from None
    return None


def _platform(args: argparse.Namespace) -> tuple[PlatformChain, bytes | None, bytes | None]:
    """The chain, a signed CEK and a chip id from whichever input form was given."""
    given = [args.pdh is not None or args.cert_chain is not None, args.sevctl, args.nodesevinfo]
    if sum(1 for g in given if g) != 1:
        raise UsageError("give --pdh and --cert-chain, or --sevctl, or --nodesevinfo")
    if args.sevctl is not None:
        return PlatformChain.from_sevctl(_read(args.sevctl, "sevctl export")), None, None
    if args.nodesevinfo is not None:
        text = read_text(args.nodesevinfo, "platform info")
        fields = parse_nodesevinfo(text)
        pdh, chain = _b64_field(fields, "pdh"), _b64_field(fields, "cert-chain")
        if pdh is None or chain is None:
            raise ParseError("platform info lacks pdh or cert-chain")
        cek = _b64_field(fields, "signed-cek", "cek")
        chip_id = _b64_field(fields, "cpu0-id", "cpu-id")
        return PlatformChain.from_export(pdh, chain), cek, chip_id
    if args.pdh is None or args.cert_chain is None:
        raise UsageError("--pdh and --cert-chain go together")
    pdh, chain = _read(args.pdh, "PDH"), _read(args.cert_chain, "cert chain")
    return PlatformChain.from_export(pdh, chain), None, None


def run_verify(args: argparse.Namespace) -> int:
    """Verify and print; 0 only for a fully anchored chain, 1 if it fails, 2 on usage errors."""
    try:
        chain, platform_cek, platform_chip_id = _platform(args)
    except UsageError as exc:
        print(f"attestd chain verify: error: {exc}", file=sys.stderr)
        return 2
    settings = config.load()
    anchors = load_anchors(args.trust_anchors or settings.trust_anchors_dir)
    signed_cek = None
    if args.cek is not None:
        signed_cek = SevCertificate.unpack(_read(args.cek, "CEK"))
    elif platform_cek is not None:
        signed_cek = SevCertificate.unpack(platform_cek)
    elif args.chip_id is not None:
        signed_cek = _store(args, settings).get(_chip_id(args.chip_id))
    elif platform_chip_id is not None:
        signed_cek = _store(args, settings).get(parse_chip_id(platform_chip_id))
    pinned_oca = None if args.oca is None else SevCertificate.unpack(_read(args.oca, "OCA"))
    report = check_chain(
        chain, anchors, signed_cek=signed_cek, pinned_oca=pinned_oca, generation=args.generation
    )
    if report.generation is not None:
        print(f"generation: {report.generation}")
    for link in report.links:
        print(f"ok:   {link}")
    if report.failure is not None:
        print(f"FAIL: {report.failure}")
        if report.unanchored:
            print("below the CEK (NOT anchored to a trusted root, for diagnosis only):")
            for link in report.unanchored:
                print(f"      {link}")
        print("chain NOT verified")
        return 1
    print(f"chain verified: {report.generation}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Store a signed CEK in the cache, after checking that a trusted ASK signed it."""
    settings = config.load()
    store = _store(args, settings)
    chip_id = _chip_id(args.chip_id)
    data = _read(args.cek, "CEK")
    cek = parse_signed_cek(data)
    anchors = load_anchors(args.trust_anchors or settings.trust_anchors_dir)
    generation = next((a.name for a in anchors if cek.is_signed_by(a.ask)), None)
    if generation is None:
        raise ChainInvalid("CEK is not signed by any trusted ASK; not imported")
    store.put(chip_id, data)
    print(
        f"imported CEK (signed by the {generation} ASK) for chip {chip_id_hex(chip_id)} "
        f"into {store.path_for(chip_id)}"
    )
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Get a signed CEK (cache first, then AMD KDS) and optionally write it out."""
    store = _store(args, config.load())
    chip_id = _chip_id(args.chip_id)
    cek = store.get(chip_id)
    if args.out is not None:
        try:
            args.out.write_bytes(cek.pack())
        except OSError as exc:
            print(f"attestd: error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 1
    print(f"CEK for chip {chip_id_hex(chip_id)} is at {store.path_for(chip_id)}")
    return 0
