"""The registration of an SEV-SNP VM (``"scheme": "amd-sev-snp"``) and its rules.

A variant beside :class:`attestd.service.registration.Registration` (SEV / SEV-ES),
with its own :meth:`SnpRegistration.check` returning *every* problem. It shares the
secrets model, minus the entries that only make sense in an EFI secret area
(``luks-passphrase``, ``raw``): an SNP guest receives its payload over the network
in a JWE (:mod:`attestd.service.attestations`).

:meth:`SnpRegistration.reference_policy` turns the registration into the SNP core's
:class:`~attestd.sev.snp.verify.SnpReferencePolicy` once the accepted measurements
are known.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from attestd.errors import ParseError, Problem
from attestd.service.registration import (
    LuksPassphrase,
    Raw,
    Registration,
    Secret,
    launch_input_problems,
)
from attestd.sev.snp.report import FirmwareVersion, PolicyFlags, SigningKey, SnpPolicy, TcbVersion
from attestd.sev.snp.verify import SnpReferencePolicy

SNP_SCHEME = "amd-sev-snp"
#: QEMU's default SEV_FEATURES of an SNP guest's VMSA.
DEFAULT_GUEST_FEATURES = 0x1
TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")
SIGNING_KEYS = {"vcek": SigningKey.VCEK, "vlek": SigningKey.VLEK}


def tcb_from_json(doc: Mapping[str, int]) -> TcbVersion:
    """A minimum TCB from ``{"bootloader", "tee", "snp", "microcode"[, "fmc"]}``."""
    return TcbVersion.build(
        bootloader=int(doc["bootloader"]),
        tee=int(doc["tee"]),
        snp=int(doc["snp"]),
        microcode=int(doc["microcode"]),
        fmc=None if doc.get("fmc") is None else int(doc["fmc"]),
    )


@dataclass(frozen=True)
class SnpRegistration:
    """A registration of an SEV-SNP VM (field names are the API's, in snake case)."""

    policy: int
    scheme: str = SNP_SCHEME
    launch_digests: tuple[str, ...] = ()
    firmware_hashes: tuple[str, ...] = ()
    kernel_hash: str | None = None
    initrd_hash: str | None = None
    cmdline_hash: str | None = None
    cpu_count: int = 1
    vcpu_types: tuple[str, ...] = ("EPYC-v4",)
    guest_features: int = DEFAULT_GUEST_FEATURES
    min_tcb: Mapping[str, int] | None = None
    min_launch_tcb: Mapping[str, int] | None = None
    vmpl: int = 0
    host_data: str | None = None
    signing_keys: tuple[str, ...] = ("vcek", "vlek")
    chip_ids: tuple[str, ...] | None = None
    id_key_digests: tuple[str, ...] | None = None
    author_key_digests: tuple[str, ...] | None = None
    family_id: str | None = None
    image_id: str | None = None
    min_guest_svn: int | None = None
    min_firmware: Mapping[str, int] | None = None
    #: Accept CURRENT_TCB/firmware above COMMITTED (a provisional update not yet
    #: committed); off by default, as go-sev-guest (snp.md §4).
    allow_provisional_firmware: bool = False
    max_launches: int | None = None
    user_id: str | None = None
    secrets: tuple[Secret, ...] = field(default=())

    def check(self) -> list[Problem]:
        """Every reason this registration is invalid (empty when it is valid)."""
        out: list[Problem] = []
        if self.scheme != SNP_SCHEME:
            out.append(Problem("scheme", "unknown_scheme", f"must be {SNP_SCHEME}"))
        try:
            policy = SnpPolicy.from_u64(self.policy)
        except (ParseError, ValueError, OverflowError):
            out.append(Problem("policy", "policy_invalid", "must be a 64-bit SNP guest policy"))
        else:
            if not policy.flags & PolicyFlags.RESERVED_1:
                out.append(Problem("policy", "policy_bit17_clear", "bit 17 (0x20000) must be set"))
            if policy.unknown_bits:
                out.append(
                    Problem("policy", "reserved_policy_bits", "reserved policy bits must be zero")
                )
        out += launch_input_problems(self)
        for name, tcb in (("min-tcb", self.min_tcb), ("min-launch-tcb", self.min_launch_tcb)):
            if tcb is not None:
                try:
                    tcb_from_json(tcb)
                except (KeyError, ValueError, TypeError):
                    out.append(Problem(name, "tcb_invalid", "components must be 0..255"))
        if not self.signing_keys or any(k not in SIGNING_KEYS for k in self.signing_keys):
            out.append(
                Problem("signing-keys", "signing_keys_invalid", "a non-empty subset of vcek, vlek")
            )
        for index, entry in enumerate(self.secrets):
            if isinstance(entry, LuksPassphrase | Raw):
                out.append(
                    Problem(
                        ("secrets", index, "type"),
                        "secret_type_not_for_snp",
                        f"{entry.TYPE} entries need an EFI secret area, which SEV-SNP guests "
                        "do not have; use a volume, env or secret-file entry",
                    )
                )
        # the shared rules on volumes, names and mounts (a Registration carries them)
        shared = Registration(scheme="amd-sev", policy=0, secrets=self.secrets)
        out += [p for p in shared._check_secrets() if p.code != "guid_reserved"]
        return out

    def public(self) -> dict[str, Any]:
        """The registration as JSON without any secret value (kebab-case keys)."""
        doc: dict[str, Any] = {
            "scheme": self.scheme,
            "policy": self.policy,
            "cpu-count": self.cpu_count,
            "vcpu-types": list(self.vcpu_types),
            "guest-features": self.guest_features,
            "firmware-hashes": list(self.firmware_hashes),
            "launch-digests": list(self.launch_digests),
            "vmpl": self.vmpl,
            "signing-keys": list(self.signing_keys),
            "allow-provisional-firmware": self.allow_provisional_firmware,
        }
        optional: dict[str, Any] = {
            "kernel-hash": self.kernel_hash,
            "initrd-hash": self.initrd_hash,
            "cmdline-hash": self.cmdline_hash,
            "min-tcb": None if self.min_tcb is None else dict(self.min_tcb),
            "min-launch-tcb": None if self.min_launch_tcb is None else dict(self.min_launch_tcb),
            "host-data": self.host_data,
            "chip-ids": None if self.chip_ids is None else list(self.chip_ids),
            "id-key-digests": None if self.id_key_digests is None else list(self.id_key_digests),
            "author-key-digests": (
                None if self.author_key_digests is None else list(self.author_key_digests)
            ),
            "family-id": self.family_id,
            "image-id": self.image_id,
            "min-guest-svn": self.min_guest_svn,
            "min-firmware": None if self.min_firmware is None else dict(self.min_firmware),
            "max-launches": self.max_launches,
            "user-id": self.user_id,
        }
        doc.update({key: value for key, value in optional.items() if value is not None})
        doc["secrets"] = [entry.describe() for entry in self.secrets]
        return doc

    @classmethod
    def from_public(cls, doc: Mapping[str, Any]) -> SnpRegistration:
        """Rebuild the non-secret part from :meth:`public` (``secrets`` left empty)."""

        def listed(name: str) -> tuple[str, ...] | None:
            value = doc.get(name)
            return None if value is None else tuple(value)

        return cls(
            scheme=doc["scheme"],
            policy=int(doc["policy"]),
            cpu_count=int(doc["cpu-count"]),
            vcpu_types=tuple(doc["vcpu-types"]),
            guest_features=int(doc["guest-features"]),
            firmware_hashes=tuple(doc["firmware-hashes"]),
            launch_digests=tuple(doc["launch-digests"]),
            vmpl=int(doc["vmpl"]),
            signing_keys=tuple(doc["signing-keys"]),
            kernel_hash=doc.get("kernel-hash"),
            initrd_hash=doc.get("initrd-hash"),
            cmdline_hash=doc.get("cmdline-hash"),
            min_tcb=doc.get("min-tcb"),
            min_launch_tcb=doc.get("min-launch-tcb"),
            host_data=doc.get("host-data"),
            chip_ids=listed("chip-ids"),
            id_key_digests=listed("id-key-digests"),
            author_key_digests=listed("author-key-digests"),
            family_id=doc.get("family-id"),
            image_id=doc.get("image-id"),
            min_guest_svn=doc.get("min-guest-svn"),
            min_firmware=doc.get("min-firmware"),
            allow_provisional_firmware=bool(doc.get("allow-provisional-firmware", False)),
            max_launches=doc.get("max-launches"),
            user_id=doc.get("user-id"),
        )

    def reference_policy(self, measurements: Collection[bytes]) -> SnpReferencePolicy:
        """The SNP core's policy for this registration, accepting ``measurements``."""

        def hexes(values: tuple[str, ...] | None) -> list[bytes] | None:
            return None if values is None else [bytes.fromhex(v) for v in values]

        def one(value: str | None) -> bytes | None:
            return None if value is None else bytes.fromhex(value)

        firmware = self.min_firmware
        return SnpReferencePolicy(
            guest_policy=self.policy,
            min_tcb=None if self.min_tcb is None else tcb_from_json(self.min_tcb),
            min_launch_tcb=(
                None if self.min_launch_tcb is None else tcb_from_json(self.min_launch_tcb)
            ),
            allow_provisional_firmware=self.allow_provisional_firmware,
            max_vmpl=self.vmpl,
            measurements=list(measurements),
            host_data=one(self.host_data),
            chip_ids=hexes(self.chip_ids),
            id_key_digests=hexes(self.id_key_digests),
            author_key_digests=hexes(self.author_key_digests),
            family_id=one(self.family_id),
            image_id=one(self.image_id),
            min_guest_svn=self.min_guest_svn,
            min_firmware=(
                None
                if firmware is None
                else FirmwareVersion(firmware["major"], firmware["minor"], firmware["build"])
            ),
            signing_keys=tuple(SIGNING_KEYS[k] for k in self.signing_keys),
        )


def is_snp(doc: Mapping[str, Any]) -> bool:
    """True when a stored registration document is an SEV-SNP one."""
    return doc.get("scheme") == SNP_SCHEME
