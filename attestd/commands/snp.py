"""``attestd snp verify``: verify an SEV-SNP attestation report offline.

The report may be the 1184 binary bytes, hex text, or an Azure HCL report (the SNP
report at offset 0x20). The VCEK or VLEK comes from ``--vcek`` (DER or PEM), the
first certificate of ``--cert-chain`` (PEM bundle), or ``--cert-table`` (the
extended-report certificate table). Only the pinned AMD roots and the extra anchors
of ``--trust-anchors`` / ``$ATTESTD_TRUST_ANCHORS_DIR`` are trusted.

Every certificate must be valid at ``--at`` (default: now) and name its issuer.
``--crl`` gives the ARK's CRL (AMD KDS ``/vcek/v1/<product>/crl``; default: the one
cached by ``attestd snp crl import``/the service, if any): a revoked ASK/ASVK or a CRL
the ARK did not sign fails; without a current CRL revocation is not checked (the
links say so) unless ``--require-crl``.

Prints one JSON object. Exit status 0 only when the signature, the chain,
REPORTED_TCB = the certificate's SPLs and the chip id verify (and every given
policy option holds); 1 otherwise (``"verified": false`` with the failing link and
reasons); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

from attestd import config
from attestd.console import int_range, plain, read_bytes
from attestd.sev.snp.certs import SnpCrl, load_pem_or_der
from attestd.sev.snp.report import (
    AttestationReport,
    FirmwareVersion,
    Generation,
    PolicyFlags,
    SigningKey,
    TcbVersion,
    extract_report,
    platform_info_json,
)
from attestd.sev.snp.verify import SnpReferencePolicy, check_report, decide
from attestd.trust import load_snp_anchors
from attestd.trust.crl import CrlStore
from attestd.trust.vcek import VcekKey, VcekStore

_HEX = re.compile(r"[0-9A-Fa-f]+")
_ALLOW_ALL = (
    PolicyFlags.RESERVED_1
    | PolicyFlags.SMT
    | PolicyFlags.MIGRATE_MA
    | PolicyFlags.DEBUG
    | PolicyFlags.CXL_ALLOW
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``snp`` sub-command."""
    snp = subparsers.add_parser("snp", help="SEV-SNP attestation reports")
    snp_sub = snp.add_subparsers(dest="snp_command", metavar="COMMAND", required=True)
    verify = snp_sub.add_parser(
        "verify",
        help="verify an SNP attestation report against the pinned AMD roots",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument(
        "--report", type=Path, required=True, metavar="FILE", help="binary, hex text or Azure HCL"
    )
    verify.add_argument("--vcek", type=Path, metavar="FILE", help="VCEK or VLEK (DER or PEM)")
    verify.add_argument(
        "--cert-chain", type=Path, metavar="FILE", help="PEM bundle, the leaf first"
    )
    verify.add_argument(
        "--cert-table", type=Path, metavar="FILE", help="extended-report certificate table"
    )
    verify.add_argument(
        "--trust-anchors",
        type=Path,
        metavar="DIR",
        help="extra anchors <DIR>/<name>/{ark,ask[,asvk]}.pem "
        "(default: $ATTESTD_TRUST_ANCHORS_DIR)",
    )
    verify.add_argument(
        "--generation", choices=[g.value for g in Generation], help="require this generation"
    )
    verify.add_argument(
        "--at",
        metavar="TIME",
        help="verification time, ISO 8601 or now (the default); every certificate must be valid",
    )
    verify.add_argument(
        "--crl", type=Path, metavar="FILE", help="the ARK's CRL (DER or PEM; default: the cache)"
    )
    verify.add_argument(
        "--require-crl", action="store_true", help="fail without a current CRL of the ARK"
    )
    policy = verify.add_argument_group("policy (each option adds a check)")
    policy.add_argument("--measurement", action="append", metavar="HEX", help="accepted (repeat)")
    policy.add_argument("--host-data", metavar="HEX", help="expected HOST_DATA (64 hex)")
    policy.add_argument("--report-data", metavar="HEX", help="expected REPORT_DATA (128 hex)")
    policy.add_argument(
        "--min-tcb", metavar="BL,TEE,SNP,UCODE[,FMC]", help="minimum REPORTED_TCB, per component"
    )
    policy.add_argument("--no-debug", action="store_true", help="refuse a policy allowing DEBUG")
    policy.add_argument(
        "--guest-policy", metavar="VALUE", help="the owner's policy (go-sev-guest's rule)"
    )
    policy.add_argument(
        "--max-vmpl", type=int_range(0, 3), metavar="N", help="highest VMPL allowed"
    )
    policy.add_argument(
        "--signing-key", action="append", choices=("vcek", "vlek"), help="allowed (repeat)"
    )
    policy.add_argument(
        "--min-guest-svn", type=int_range(0, (1 << 32) - 1), metavar="N", help="minimum GUEST_SVN"
    )
    policy.add_argument(
        "--min-firmware", metavar="MAJOR.MINOR.BUILD", help="minimum current firmware version"
    )
    policy.add_argument(
        "--allow-provisional",
        action="store_true",
        help="accept CURRENT above COMMITTED (TCB, firmware); refused by default",
    )
    verify.set_defaults(func=run_verify)
    vcek = snp_sub.add_parser("vcek", help="the service's VCEK cache (AMD KDS, offline import)")
    vcek_sub = vcek.add_subparsers(dest="vcek_command", metavar="COMMAND", required=True)
    fetch = vcek_sub.add_parser(
        "fetch", help="fetch from AMD KDS the VCEK that signed a report, into the cache"
    )
    fetch.add_argument(
        "--report", type=Path, required=True, metavar="FILE", help="binary, hex text or Azure HCL"
    )
    fetch.set_defaults(func=run_vcek_fetch)
    imp = vcek_sub.add_parser("import", help="add a VCEK obtained elsewhere to the cache")
    imp.add_argument("vcek", type=Path, metavar="FILE", help="the VCEK (DER or PEM)")
    imp.set_defaults(func=run_vcek_import)
    crl = snp_sub.add_parser("crl", help="the service's CRL cache (AMD KDS, offline import)")
    crl_sub = crl.add_subparsers(dest="crl_command", metavar="COMMAND", required=True)
    crl_imp = crl_sub.add_parser(
        "import", help="add a CRL obtained elsewhere (checked against the trusted ARKs)"
    )
    crl_imp.add_argument("crl", type=Path, metavar="FILE", help="the CRL (DER or PEM)")
    crl_imp.set_defaults(func=run_crl_import)
    crl_fetch = crl_sub.add_parser(
        "fetch", help="fetch a product's CRL from AMD KDS, into the cache"
    )
    crl_fetch.add_argument(
        "--generation", choices=[g.value for g in Generation], required=True, help="product line"
    )
    crl_fetch.set_defaults(func=run_crl_fetch)


class UsageError(Exception):
    """Wrong combination or format of options (exit status 2)."""


def _read(path: Path, what: str) -> bytes:
    return read_bytes(path, what)


def _hex(value: str, size: int, what: str) -> bytes:
    if len(value) != 2 * size or not _HEX.fullmatch(value):
        raise UsageError(f"{what} must be {2 * size} hex digits")
    return bytes.fromhex(value)


def _min_tcb(value: str) -> TcbVersion:
    parts = value.split(",")
    try:
        numbers = [int(p, 0) for p in parts]
        if len(numbers) == 4:
            bl, tee, snp, ucode = numbers
            return TcbVersion.build(bootloader=bl, tee=tee, snp=snp, microcode=ucode)
        if len(numbers) == 5:
            bl, tee, snp, ucode, fmc = numbers
            return TcbVersion.build(bootloader=bl, tee=tee, snp=snp, microcode=ucode, fmc=fmc)
    except ValueError:
        pass
    raise UsageError("--min-tcb is BL,TEE,SNP,UCODE[,FMC], each 0..255")


def _policy(args: argparse.Namespace) -> SnpReferencePolicy | None:
    """The reference policy from the options, or None if no policy option is given."""
    guest_policy: int | None = None
    if args.guest_policy is not None:
        try:
            guest_policy = int(args.guest_policy, 0)
        except ValueError:
            raise UsageError("--guest-policy must be an integer (e.g. 0x30000)") from None
    elif args.no_debug:  # everything else allowed, nothing required
        guest_policy = int(_ALLOW_ALL)
    if args.no_debug and guest_policy is not None:
        guest_policy &= ~PolicyFlags.DEBUG
    firmware = None
    if args.min_firmware is not None:
        pieces = args.min_firmware.split(".")
        if len(pieces) != 3 or not all(p.isdigit() for p in pieces):
            raise UsageError("--min-firmware is MAJOR.MINOR.BUILD")
        firmware = FirmwareVersion(*(int(p) for p in pieces))
    given = [
        args.measurement,
        args.host_data,
        args.report_data,
        args.min_tcb,
        guest_policy,
        args.max_vmpl,
        args.signing_key,
        args.min_guest_svn,
        firmware,
        args.allow_provisional or None,
    ]
    if all(value is None for value in given):
        return None
    return SnpReferencePolicy(
        guest_policy=guest_policy,
        min_tcb=None if args.min_tcb is None else _min_tcb(args.min_tcb),
        allow_provisional_firmware=args.allow_provisional,
        max_vmpl=3 if args.max_vmpl is None else args.max_vmpl,
        measurements=None
        if args.measurement is None
        else [_hex(m, 48, "--measurement") for m in args.measurement],
        host_data=None if args.host_data is None else _hex(args.host_data, 32, "--host-data"),
        report_data=None
        if args.report_data is None
        else _hex(args.report_data, 64, "--report-data"),
        min_guest_svn=args.min_guest_svn,
        min_firmware=firmware,
        signing_keys=tuple(SigningKey[k.upper()] for k in args.signing_key or ("vcek", "vlek")),
    )


def _leaf(args: argparse.Namespace) -> tuple[bytes | None, bytes | None]:
    given = [p for p in (args.vcek, args.cert_chain, args.cert_table) if p is not None]
    if len(given) > 1:
        raise UsageError("give one of --vcek, --cert-chain, --cert-table")
    if args.cert_table is not None:
        return None, _read(args.cert_table, "certificate table")
    path = args.vcek or args.cert_chain
    if path is None:
        raise UsageError("give the signing certificate: --vcek, --cert-chain or --cert-table")
    data = _read(path, "certificate")
    if b"-----BEGIN" in data:  # PEM: the leaf is the first certificate
        return load_pem_or_der(data)[0].der, None
    return data, None  # DER: check_report() parses it and names a bad one


def describe(report: AttestationReport, generation: Generation | None) -> dict[str, Any]:
    """The report's fields as the command prints them (TCBs need the generation)."""
    gen = generation or report.cpuid_generation

    def tcb(raw: int) -> object:
        return f"{raw:#018x}" if gen is None else report.tcb(raw, gen).to_json()

    return {
        "generation": None if gen is None else gen.value,
        "version": report.version,
        "signing-key": report.key_info.signing_key.label,
        "mask-chip-key": report.key_info.mask_chip_key,
        "author-key-en": report.key_info.author_key_en,
        "vmpl": report.vmpl,
        "guest-svn": report.guest_svn,
        "policy": report.guest_policy.to_json(),
        "platform-info": platform_info_json(report.platform_info),
        "reported-tcb": tcb(report.reported_tcb),
        "current-tcb": tcb(report.current_tcb),
        "committed-tcb": tcb(report.committed_tcb),
        "launch-tcb": tcb(report.launch_tcb),
        "current-firmware": str(report.current_version),
        "committed-firmware": str(report.committed_version),
        "cpuid": None
        if report.version < 3
        else {
            "family": report.cpuid_fam_id,
            "model": report.cpuid_mod_id,
            "stepping": report.cpuid_step,
        },
        "measurement": report.measurement.hex(),
        "host-data": report.host_data.hex(),
        "report-data": report.report_data.hex(),
        "chip-id": report.chip_id.hex(),
        "family-id": report.family_id.hex(),
        "image-id": report.image_id.hex(),
        "id-key-digest": report.id_key_digest.hex(),
        "author-key-digest": report.author_key_digest.hex(),
        "report-id": report.report_id.hex(),
    }


def _at(value: str | None) -> datetime.datetime:
    if value is None or value == "now":
        return datetime.datetime.now(datetime.UTC)
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError("--at must be an ISO 8601 time (e.g. 2025-06-01T00:00:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def run_verify(args: argparse.Namespace) -> int:
    """Verify and print one JSON object; see the module doc for the exit status."""
    try:
        policy = _policy(args)
        leaf, table = _leaf(args)
        at = _at(args.at)
    except UsageError as exc:
        print(f"attestd snp verify: error: {exc}", file=sys.stderr)
        return 2
    raw = extract_report(_read(args.report, "report"))
    settings = config.load()
    anchors = load_snp_anchors(args.trust_anchors or settings.trust_anchors_dir)
    if args.crl is not None:
        given = SnpCrl.from_der(_read(args.crl, "CRL"))
        crls = {a.name: given for a in anchors if given.signed_by(a.ark)}
        if not crls:  # a CRL no trusted ARK signed: let the check name it for every anchor
            crls = {a.name: given for a in anchors}
    else:
        crls = _crl_store(settings).all_cached(anchors)
    wanted = None if args.generation is None else Generation(args.generation)
    check = check_report(
        raw,
        anchors,
        leaf=leaf,
        cert_table=table,
        generation=wanted,
        at=at,
        crls=crls,
        require_crl=args.require_crl,
    )
    verified = check.verified
    out: dict[str, Any] = {"verified": False}
    if check.report is not None:
        out.update(describe(check.report, verified.generation if verified else wanted))
    out["links"] = list(check.links)
    if verified is None:
        out["failure"] = {"code": check.code, "detail": check.failure}
    else:
        out["anchor"] = verified.anchor
        out["revocation"] = verified.revocation
        out["certificate"] = verified.certificate.describe_extensions()
        reasons = [] if policy is None else decide(verified, policy)
        out["policy-checked"] = policy is not None
        out["reasons"] = [{"code": r.code, "detail": r.detail} for r in reasons]
        out["verified"] = not reasons
    print(json.dumps(out, indent=2))
    return 0 if out["verified"] else 1


def _vcek_store() -> VcekStore:
    """The service's VCEK store; these commands ask AMD KDS even if ``kds_offline``."""
    return VcekStore.from_settings(config.load(), offline=False)


def run_vcek_fetch(args: argparse.Namespace) -> int:
    """Fetch the VCEK of a report's chip and TCB from AMD KDS into the cache."""
    report = AttestationReport.unpack(extract_report(_read(args.report, "report")))
    store = _vcek_store()
    key = VcekKey.of_report(report)
    store.fetch(key)
    print(store.cache_dir / key.filename)
    return 0


def run_vcek_import(args: argparse.Namespace) -> int:
    """Add a VCEK to the cache (for hosts without access to AMD KDS)."""
    data = _read(args.vcek, "VCEK")
    der = load_pem_or_der(data)[0].der if b"-----BEGIN" in data else data
    store = _vcek_store()
    key = store.import_vcek(der)
    print(store.cache_dir / key.filename)
    return 0


def _crl_store(settings: config.Settings) -> CrlStore:
    """The service's CRL store; these commands ask AMD KDS even if ``kds_offline``."""
    return CrlStore.from_settings(settings, offline=False)


def run_crl_import(args: argparse.Namespace) -> int:
    """Add a CRL to the cache if a trusted ARK signed it (for hosts without AMD KDS)."""
    settings = config.load()
    anchors = load_snp_anchors(settings.trust_anchors_dir)
    store = _crl_store(settings)
    path, crl = store.import_crl(_read(args.crl, "CRL"), anchors)
    until = "never" if crl.next_update is None else f"{crl.next_update:%Y-%m-%dT%H:%M:%SZ}"
    print(f"{path} (next update {until}, {len(crl.revoked)} revoked)")
    return 0


def run_crl_fetch(args: argparse.Namespace) -> int:
    """Fetch a product line's CRL from AMD KDS into the cache."""
    settings = config.load()
    anchors = load_snp_anchors(settings.trust_anchors_dir)
    anchor = next(a for a in anchors if a.name == args.generation)
    store = _crl_store(settings)
    crl = store.fetch(anchor)
    print(f"{store.path_for(anchor)} (next update {crl.next_update})")
    return 0
