"""The guest owner's registration of one VM: the model and every rule it must satisfy.

:class:`Registration` is what any entry (the API schema, the CLI, tests) builds;
:meth:`Registration.check` returns *every* reason it is invalid (as
:class:`~attestd.errors.Problem` values with the API field they concern), and the
VM use-cases refuse a registration with any. marshmallow only maps JSON to this
model (shape, types, patterns).

A registration is for one :class:`Scheme`. SEV and SEV-ES share this model (they
differ in the policy's ES bit and the VMSA inputs); SEV-SNP, with its 64-bit
policy, TCB minimums, HOST_DATA and launch digests, will be its own variant
class beside this one, with its own ``check()``.

Secret values live only in ``secrets``. :meth:`Registration.public` is the
secret-free view returned by ``GET /v1/vm/<uuid>`` and stored in clear; the
in-guest payload built from the secrets is :mod:`attestd.service.payload`.
"""

from __future__ import annotations

import base64
import itertools
import secrets as _secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID

from attestd.errors import AttestdError, Problem
from attestd.sev.certs import SevCertificate, Usage
from attestd.sev.measure.sev_hashes import cmdline_digest
from attestd.sev.policy import GuestPolicy, PolicyFlags
from attestd.sev.secrets import ATTESTD_PAYLOAD_GUID, LUKS_KEY_GUID, NULL_GUID, SECRET_TABLE_GUID


class Scheme(StrEnum):
    """The attestation scheme a registration is for (``scheme`` in the API)."""

    AMD_SEV = "amd-sev"
    AMD_SEV_ES = "amd-sev-es"


SCHEMES = tuple(s.value for s in Scheme)
RESERVED_GUIDS = frozenset({ATTESTD_PAYLOAD_GUID, LUKS_KEY_GUID, SECRET_TABLE_GUID, NULL_GUID})
#: System directories the guest agent never mounts a volume over (the guest's own rule in
#: ``attestd.guest.payload``; a test keeps the two equal). Refused at registration.
RESERVED_MOUNT_POINTS = frozenset(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /opt /proc /root /run /sbin "
    "/srv /sys /tmp /usr /var /var/lib /var/log /var/tmp /var/run".split()
)
#: Characters of a generated passphrase (base64url of 32 random bytes).
GENERATED_PASSPHRASE_LEN = 43
#: At most this many entries of each named secret type.
SECRET_LIMITS = (("volume", 16), ("env", 32), ("secret-file", 32))


def generate_passphrase() -> str:
    """A new random passphrase (256 bits)."""
    return _secrets.token_urlsafe(32)


def cmdline_sha256(cmdline: str) -> str:
    """The SEV kernel-hashes digest of a command line (QEMU hashes it with its NUL)."""
    return cmdline_digest(cmdline).hex()


def mount_point(entry: Mapping[str, Any]) -> str:
    """Where a volume entry is mounted (``/<name>`` unless given)."""
    return str(entry.get("mount-point") or f"/{entry['name']}")


@dataclass(frozen=True)
class Registration:
    """A registration of an SEV or SEV-ES VM (field names are the API's, in snake case)."""

    scheme: str
    policy: int
    cpu_count: int = 1
    vcpu_types: tuple[str, ...] = ("EPYC-v4",)
    vmsa_flavours: tuple[str, ...] = ("current",)
    firmware_hashes: tuple[str, ...] = ()
    kernel_hash: str | None = None
    initrd_hash: str | None = None
    cmdline_hash: str | None = None
    launch_digests: tuple[str, ...] = ()
    cloud_cert: bytes | None = None
    min_api_major: int | None = None
    min_api_minor: int | None = None
    min_build_id: int | None = None
    max_launches: int | None = None
    user_id: str | None = None
    secrets: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def es(self) -> bool:
        """True for SEV-ES."""
        return self.scheme == Scheme.AMD_SEV_ES

    def check(self) -> list[Problem]:
        """Every reason this registration is invalid (empty when it is valid)."""
        out: list[Problem] = []
        out += self._check_scheme_and_policy()
        if self.cloud_cert is not None:
            try:
                oca = SevCertificate.unpack(self.cloud_cert)
            except AttestdError as exc:
                out.append(
                    Problem(
                        "cloud-cert",
                        "cloud_cert_malformed",
                        f"not a SEV certificate: {exc.message}",
                    )
                )
            else:
                if oca.usage is not Usage.OCA:
                    out.append(
                        Problem("cloud-cert", "cloud_cert_not_oca", "must be an OCA certificate")
                    )
        if not self.firmware_hashes and not self.launch_digests:
            out.append(
                Problem(
                    "firmware-hashes", "no_launch_inputs", "give firmware-hashes or launch-digests"
                )
            )
        if self.kernel_hash is None:
            for name, value in (
                ("initrd-hash", self.initrd_hash),
                ("cmdline-hash", self.cmdline_hash),
            ):
                if value is not None:
                    out.append(Problem(name, "needs_kernel_hash", "needs kernel-hash"))
        out += self._check_secrets()
        return out

    def _check_scheme_and_policy(self) -> list[Problem]:
        if self.scheme not in SCHEMES:
            return [Problem("scheme", "unknown_scheme", f"must be one of {list(SCHEMES)}")]
        try:
            policy = GuestPolicy.from_u32(self.policy)
        except (AttestdError, ValueError):
            return [
                Problem("policy", "reserved_policy_bits", "reserved policy bits 6-15 must be zero")
            ]
        if (PolicyFlags.ES in policy.flags) != self.es:
            return [Problem("policy", "es_bit_mismatch", "the ES bit (0x4) must match the scheme")]
        return []

    def _check_secrets(self) -> list[Problem]:
        out: list[Problem] = []
        secrets = self.secrets
        for index, entry in enumerate(secrets):
            if entry["type"] == "volume":
                mount = mount_point(entry)
                where = ("secrets", index, "mount-point")
                if any(part in (".", "..") for part in mount.split("/")):
                    out.append(Problem(where, "mount_point_dots", "no '.' or '..' components"))
                if mount in RESERVED_MOUNT_POINTS:
                    out.append(
                        Problem(where, "mount_point_reserved", f"{mount} is a system directory")
                    )
                device = entry["device"]
                if "/../" in device or device.endswith("/.."):
                    out.append(
                        Problem(("secrets", index, "device"), "device_dots", "no '..' components")
                    )
            elif entry["type"] == "raw" and UUID(str(entry["guid"])) in RESERVED_GUIDS:
                out.append(
                    Problem(
                        ("secrets", index, "guid"),
                        "guid_reserved",
                        "this GUID is reserved for attestd's own entries",
                    )
                )
        if sum(1 for s in secrets if s["type"] == "luks-passphrase") > 1:
            out.append(Problem("secrets", "luks_passphrase_twice", "at most one luks-passphrase"))
        for kind, limit in SECRET_LIMITS:
            names = [s["name"] for s in secrets if s["type"] == kind]
            if len(names) != len(set(names)):
                out.append(Problem("secrets", "duplicate_name", f"duplicate {kind} name"))
            if len(names) > limit:
                out.append(
                    Problem("secrets", "too_many_secrets", f"at most {limit} {kind} entries")
                )
        volumes = [s for s in secrets if s["type"] == "volume"]
        devices = [s["device"] for s in volumes]
        if len(devices) != len(set(devices)):
            out.append(Problem("secrets", "duplicate_device", "two volumes share a device"))
        mounts = sorted(mount_point(s) for s in volumes)
        for a, b in itertools.combinations(mounts, 2):
            if b == a or b.startswith(a + "/"):
                out.append(
                    Problem("secrets", "mounts_overlap", f"mount points {a} and {b} overlap")
                )
        guids = [str(s["guid"]) for s in secrets if s["type"] == "raw"]
        if len(guids) != len(set(guids)):
            out.append(Problem("secrets", "duplicate_guid", "duplicate raw guid"))
        return out

    def public(self) -> dict[str, Any]:
        """The registration as JSON without any secret value (kebab-case keys)."""
        doc: dict[str, Any] = {
            "scheme": str(self.scheme),
            "policy": self.policy,
            "cpu-count": self.cpu_count,
            "vcpu-types": list(self.vcpu_types),
            "vmsa-flavours": list(self.vmsa_flavours),
            "firmware-hashes": list(self.firmware_hashes),
            "launch-digests": list(self.launch_digests),
        }
        optional: dict[str, Any] = {
            "kernel-hash": self.kernel_hash,
            "initrd-hash": self.initrd_hash,
            "cmdline-hash": self.cmdline_hash,
            "cloud-cert": (
                None if self.cloud_cert is None else base64.b64encode(self.cloud_cert).decode()
            ),
            "min-api-major": self.min_api_major,
            "min-api-minor": self.min_api_minor,
            "min-build-id": self.min_build_id,
            "max-launches": self.max_launches,
            "user-id": self.user_id,
        }
        doc.update({key: value for key, value in optional.items() if value is not None})
        doc["secrets"] = [describe_secret(entry) for entry in self.secrets]
        return doc

    @classmethod
    def from_public(cls, doc: Mapping[str, Any]) -> Registration:
        """Rebuild the non-secret part from :meth:`public` (``secrets`` left empty)."""
        cloud = doc.get("cloud-cert")
        return cls(
            scheme=doc["scheme"],
            policy=int(doc["policy"]),
            cpu_count=int(doc["cpu-count"]),
            vcpu_types=tuple(doc["vcpu-types"]),
            vmsa_flavours=tuple(doc["vmsa-flavours"]),
            firmware_hashes=tuple(doc["firmware-hashes"]),
            kernel_hash=doc.get("kernel-hash"),
            initrd_hash=doc.get("initrd-hash"),
            cmdline_hash=doc.get("cmdline-hash"),
            launch_digests=tuple(doc["launch-digests"]),
            cloud_cert=None if cloud is None else base64.b64decode(cloud),
            min_api_major=doc.get("min-api-major"),
            min_api_minor=doc.get("min-api-minor"),
            min_build_id=doc.get("min-build-id"),
            max_launches=doc.get("max-launches"),
            user_id=doc.get("user-id"),
        )


def describe_secret(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A registered secret without its value: type, names, keys, flags."""
    kind = entry["type"]
    out: dict[str, Any] = {"type": kind}
    if kind == "volume":
        out["name"] = entry["name"]
        out["device"] = entry["device"]
        if entry.get("mount-point"):
            out["mount-point"] = entry["mount-point"]
        out["generate"] = bool(entry.get("generate"))
    elif kind in ("env", "secret-file"):
        out["name"] = entry["name"]
        out["keys"] = sorted(entry["values"])
    elif kind == "raw":
        out["guid"] = str(entry["guid"])
    return out
