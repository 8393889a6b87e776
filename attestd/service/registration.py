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
from typing import Any, ClassVar, Protocol
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


def generate_passphrase() -> str:
    """A new random passphrase (256 bits)."""
    return _secrets.token_urlsafe(32)


def cmdline_sha256(cmdline: str) -> str:
    """The SEV kernel-hashes digest of a command line (QEMU hashes it with its NUL)."""
    return cmdline_digest(cmdline).hex()


# -- the owner's secrets, one typed value per ``type`` -----------------------------------
#
# ``type`` in the API and in the stored (encrypted) JSON selects the class; from_stored()
# and to_stored() convert to and from the stored form existing databases already hold.
# Values never appear in ``repr``.


@dataclass(frozen=True, slots=True)
class LuksPassphrase:
    """The GRUB / crypttab passphrase of the root volume (its own secret-table entry)."""

    TYPE: ClassVar[str] = "luks-passphrase"
    passphrase: str = field(repr=False)

    def describe(self) -> dict[str, Any]:
        """The entry without its value."""
        return {"type": self.TYPE}

    def to_stored(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {"type": self.TYPE, "passphrase": self.passphrase}


@dataclass(frozen=True, slots=True)
class Volume:
    """A LUKS2 volume the guest agent unlocks (and formats on first use) and mounts."""

    TYPE: ClassVar[str] = "volume"
    name: str
    device: str
    passphrase: str | None = field(default=None, repr=False)
    generate: bool = False
    mount_point: str | None = None

    @property
    def mount(self) -> str:
        """Where it is mounted (``/<name>`` unless given)."""
        return self.mount_point or f"/{self.name}"

    def describe(self) -> dict[str, Any]:
        """The entry without its value."""
        out: dict[str, Any] = {"type": self.TYPE, "name": self.name, "device": self.device}
        if self.mount_point:
            out["mount-point"] = self.mount_point
        out["generate"] = self.generate
        return out

    def to_stored(self) -> dict[str, Any]:
        """The stored JSON form."""
        out: dict[str, Any] = {"type": self.TYPE, "name": self.name, "device": self.device}
        if self.passphrase is not None:
            out["passphrase"] = self.passphrase
        if self.generate:
            out["generate"] = True
        if self.mount_point:
            out["mount-point"] = self.mount_point
        return out


@dataclass(frozen=True, slots=True)
class _ValuesFile:
    """A file of ``KEY=value`` lines the guest agent writes (``TYPE`` in subclasses)."""

    TYPE: ClassVar[str]
    name: str
    values: Mapping[str, str] = field(repr=False)

    def describe(self) -> dict[str, Any]:
        """The entry without its values: its name and keys."""
        return {"type": self.TYPE, "name": self.name, "keys": sorted(self.values)}

    def to_stored(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {"type": self.TYPE, "name": self.name, "values": dict(self.values)}


@dataclass(frozen=True, slots=True)
class EnvFile(_ValuesFile):
    """An environment file (0644)."""

    TYPE: ClassVar[str] = "env"


@dataclass(frozen=True, slots=True)
class SecretFile(_ValuesFile):
    """A secret file (0600)."""

    TYPE: ClassVar[str] = "secret-file"


@dataclass(frozen=True, slots=True)
class Raw:
    """Any other secret-table entry, by GUID."""

    TYPE: ClassVar[str] = "raw"
    guid: UUID
    data: bytes = field(repr=False)

    def describe(self) -> dict[str, Any]:
        """The entry without its value."""
        return {"type": self.TYPE, "guid": str(self.guid)}

    def to_stored(self) -> dict[str, Any]:
        """The stored JSON form (data in base64)."""
        return {
            "type": self.TYPE,
            "guid": str(self.guid),
            "data": base64.b64encode(self.data).decode("ascii"),
        }


Secret = LuksPassphrase | Volume | EnvFile | SecretFile | Raw
SECRET_TYPES: tuple[type[Secret], ...] = (LuksPassphrase, Volume, EnvFile, SecretFile, Raw)
NAMED_TYPES: tuple[type[Volume | EnvFile | SecretFile], ...] = (Volume, EnvFile, SecretFile)


def from_stored(entry: Mapping[str, Any]) -> Secret:
    """A secret from its stored (or API-loaded) form; ``ValueError`` for an unknown type."""
    kind = entry.get("type")
    if kind == LuksPassphrase.TYPE:
        return LuksPassphrase(entry["passphrase"])
    if kind == Volume.TYPE:
        return Volume(
            name=entry["name"],
            device=entry["device"],
            passphrase=entry.get("passphrase"),
            generate=bool(entry.get("generate")),
            mount_point=entry.get("mount-point") or entry.get("mount_point"),
        )
    if kind == EnvFile.TYPE:
        return EnvFile(entry["name"], dict(entry["values"]))
    if kind == SecretFile.TYPE:
        return SecretFile(entry["name"], dict(entry["values"]))
    if kind == Raw.TYPE:
        data = entry["data"]
        return Raw(
            UUID(str(entry["guid"])),
            data if isinstance(data, bytes) else base64.b64decode(data),
        )
    raise ValueError(f"unknown secret type {kind!r}")


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
    secrets: tuple[Secret, ...] = field(default=())

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
        out += launch_input_problems(self)
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
            if isinstance(entry, Volume):
                out += _check_volume(index, entry)
            elif isinstance(entry, Raw) and entry.guid in RESERVED_GUIDS:
                out.append(
                    Problem(
                        ("secrets", index, "guid"),
                        "guid_reserved",
                        "this GUID is reserved for attestd's own entries",
                    )
                )
        if sum(1 for s in secrets if isinstance(s, LuksPassphrase)) > 1:
            out.append(Problem("secrets", "luks_passphrase_twice", "at most one luks-passphrase"))
        for cls, limit in SECRET_LIMITS:
            names = [s.name for s in secrets if isinstance(s, cls)]
            if len(names) != len(set(names)):
                out.append(Problem("secrets", "duplicate_name", f"duplicate {cls.TYPE} name"))
            if len(names) > limit:
                out.append(
                    Problem("secrets", "too_many_secrets", f"at most {limit} {cls.TYPE} entries")
                )
        volumes = [s for s in secrets if isinstance(s, Volume)]
        devices = [v.device for v in volumes]
        if len(devices) != len(set(devices)):
            out.append(Problem("secrets", "duplicate_device", "two volumes share a device"))
        mounts = sorted(v.mount for v in volumes)
        for a, b in itertools.combinations(mounts, 2):
            if b == a or b.startswith(a + "/"):
                out.append(
                    Problem("secrets", "mounts_overlap", f"mount points {a} and {b} overlap")
                )
        guids = [s.guid for s in secrets if isinstance(s, Raw)]
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
        doc["secrets"] = [entry.describe() for entry in self.secrets]
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


class LaunchInputFields(Protocol):
    """The launch-input fields SEV and SEV-SNP registrations share."""

    @property
    def firmware_hashes(self) -> tuple[str, ...]: ...
    @property
    def launch_digests(self) -> tuple[str, ...]: ...
    @property
    def kernel_hash(self) -> str | None: ...
    @property
    def initrd_hash(self) -> str | None: ...
    @property
    def cmdline_hash(self) -> str | None: ...


def launch_input_problems(reg: LaunchInputFields) -> list[Problem]:
    """Launch digests or firmware are given; initrd and cmdline hashes need a kernel hash."""
    out: list[Problem] = []
    if not reg.firmware_hashes and not reg.launch_digests:
        out.append(
            Problem("firmware-hashes", "no_launch_inputs", "give firmware-hashes or launch-digests")
        )
    if reg.kernel_hash is None:
        for name, value in (("initrd-hash", reg.initrd_hash), ("cmdline-hash", reg.cmdline_hash)):
            if value is not None:
                out.append(Problem(name, "needs_kernel_hash", "needs kernel-hash"))
    return out


def _check_volume(index: int, volume: Volume) -> list[Problem]:
    out: list[Problem] = []
    if bool(volume.passphrase) == volume.generate:
        out.append(
            Problem(
                ("secrets", index, "passphrase"),
                "passphrase_or_generate",
                "give either passphrase or generate: true",
            )
        )
    where = ("secrets", index, "mount-point")
    if any(part in (".", "..") for part in volume.mount.split("/")):
        out.append(Problem(where, "mount_point_dots", "no '.' or '..' components"))
    if volume.mount in RESERVED_MOUNT_POINTS:
        out.append(Problem(where, "mount_point_reserved", f"{volume.mount} is a system directory"))
    if "/../" in volume.device or volume.device.endswith("/.."):
        out.append(Problem(("secrets", index, "device"), "device_dots", "no '..' components"))
    return out


#: At most this many entries of each named secret type.
SECRET_LIMITS: tuple[tuple[type[Volume | EnvFile | SecretFile], int], ...] = (
    (Volume, 16),
    (EnvFile, 32),
    (SecretFile, 32),
)
