"""Strict validation of the attestd payload v1 and of cvm-control's API requests.

Mirrors ``schemas/guest-payload-v1.schema.json`` by hand (stdlib only). Every
check runs before anything touches a disk; errors never quote passphrases or
secret values.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestd.guest.errors import PayloadError

PAYLOAD_GUID = "dcfb7d9b-597b-4a66-98d6-ce0ed5fb8cde"
PAYLOAD_VERSION = 1
MAX_PAYLOAD_BYTES = 0x5000
"""The largest secret table the firmware accepts (SEV_SCRATCH_BUF_LEN), so no payload is larger."""

MAX_VOLUMES = 16
MAX_FILES = 32
MAX_KEYS = 256
MAX_VALUE = 4096
MAX_PASSPHRASE = 512

_USER_ID = re.compile(r"[^\x00-\x1f]{1,128}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ENV_VALUE = re.compile(r"[^\x00\n\r]{0,4096}")
_VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_DEVICE = re.compile(r"virtio:[A-Za-z0-9_.-]{1,20}|/dev/[A-Za-z0-9_./:-]{1,200}")
_MOUNT_POINT = re.compile(r"(/[A-Za-z0-9_.-]+)+")

RESERVED_MOUNT_POINTS = frozenset(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /opt /proc /root /run /sbin "
    "/srv /sys /tmp /usr /var /var/lib /var/log /var/tmp /var/run".split()
)
"""System directories a volume may never be mounted over (sub-directories are fine)."""

PSEUDO_FS_ROOTS = ("/proc", "/sys", "/dev")
"""Kernel pseudo filesystems: no volume is mounted anywhere below them."""

RESERVED_VOLUME_NAMES = frozenset({"control"})
"""``/dev/mapper/control`` is device-mapper's own control node, never a volume."""


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    """One volume: device-mapper name, device, passphrase and mount point."""

    name: str
    device: str
    passphrase: bytes
    mount_point: str

    def public(self) -> dict[str, str]:
        """The non-secret part, as stored in the state record."""
        return {"device": self.device, "mount_point": self.mount_point}


@dataclass(frozen=True, slots=True)
class Payload:
    """A validated bootstrap request."""

    user_id: str
    env: Mapping[str, Mapping[str, str]]
    secret: Mapping[str, Mapping[str, str]]
    volumes: Mapping[str, VolumeSpec]

    def public_fingerprint(self) -> str:
        """SHA-256 over everything except secret values and passphrases."""
        doc = {
            "user_id": self.user_id,
            "env": self.env,
            "secret": {name: sorted(values) for name, values in self.secret.items()},
            "volumes": {name: v.public() for name, v in self.volumes.items()},
        }
        return hashlib.sha256(_canonical(doc)).hexdigest()

    def full_digest(self, key: bytes) -> bytes:
        """HMAC-SHA256 of the whole request (secrets and passphrases included), canonical
        JSON; tells an identical re-run from a different one without storing secrets."""
        doc = {
            "user_id": self.user_id,
            "env": self.env,
            "secret": self.secret,
            "volumes": {
                name: {**v.public(), "passphrase": v.passphrase.hex()}
                for name, v in self.volumes.items()
            },
        }
        return hmac.new(key, _canonical(doc), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class RotateSpec:
    """One passphrase change."""

    name: str
    old: bytes
    new: bytes


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PayloadError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise PayloadError(f"non-standard JSON constant {name}")


def parse_json(data: bytes) -> object:
    """Decode strict UTF-8 JSON (no duplicate keys, no NaN/Infinity, bounded size)."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("payload is not UTF-8") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc.msg} at offset {exc.pos}") from exc
    except RecursionError as exc:
        raise PayloadError("payload is nested too deeply") from exc


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where} must be an object")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{where} must be a string")
    return value


def _only(obj: Mapping[str, object], allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PayloadError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    missing = sorted(required - set(obj))
    if missing:
        raise PayloadError(f"{where}: missing field(s) {', '.join(missing)}")


def _files(value: object, where: str) -> dict[str, dict[str, str]]:
    files = _object(value, where)
    if len(files) > MAX_FILES:
        raise PayloadError(f"{where}: more than {MAX_FILES} files")
    out: dict[str, dict[str, str]] = {}
    for fname, pairs in files.items():
        if not _FILE_NAME.fullmatch(fname):
            raise PayloadError(f"{where}: invalid file name {fname!r}")
        kv = _object(pairs, f"{where}.{fname}")
        if len(kv) > MAX_KEYS:
            raise PayloadError(f"{where}.{fname}: more than {MAX_KEYS} keys")
        clean: dict[str, str] = {}
        for key, val in kv.items():
            if not _ENV_KEY.fullmatch(key):
                raise PayloadError(f"{where}.{fname}: invalid variable name {key!r}")
            text = _string(val, f"{where}.{fname}.{key}")
            if not _ENV_VALUE.fullmatch(text):
                raise PayloadError(f"{where}.{fname}.{key}: value too long or has NUL/CR/LF")
            clean[key] = text
        out[fname] = clean
    return out


def _mount_point(value: object, where: str) -> str:
    mp = _string(value, where)
    if not _MOUNT_POINT.fullmatch(mp):
        raise PayloadError(f"{where}: mount point must be an absolute path")
    if any(part in (".", "..") for part in mp.split("/")):
        raise PayloadError(f"{where}: mount point has '.' or '..' components")
    if mp in RESERVED_MOUNT_POINTS:
        raise PayloadError(f"{where}: refusing to mount over system directory {mp}")
    if any(mp.startswith(root + "/") for root in PSEUDO_FS_ROOTS):
        raise PayloadError(f"{where}: refusing to mount inside a kernel pseudo filesystem")
    return mp


def _passphrase(value: object, where: str) -> bytes:
    text = _string(value, where)
    if not 1 <= len(text) <= MAX_PASSPHRASE:
        raise PayloadError(f"{where}: passphrase must have 1 to {MAX_PASSPHRASE} characters")
    return text.encode("utf-8")


def _device(spec: Mapping[str, object], where: str, *, api: bool) -> str:
    if "device" in spec:
        if api and "volume_id" in spec:
            raise PayloadError(f"{where}: give either device or volume_id, not both")
        device = _string(spec["device"], f"{where}.device")
    elif api and "volume_id" in spec:
        device = _string(spec["volume_id"], f"{where}.volume_id")
        if not device.startswith("/dev/"):
            device = f"virtio:{device}"
    else:
        raise PayloadError(f"{where}: missing field(s) device")
    if not _DEVICE.fullmatch(device) or "/../" in device or device.endswith("/.."):
        raise PayloadError(f"{where}: invalid device {device!r}")
    return device


def _volume_name(name: str) -> None:
    if not _VOLUME_NAME.fullmatch(name) or name in RESERVED_VOLUME_NAMES:
        raise PayloadError(f"volumes: invalid volume name {name!r}")


def validate_record_volume(name: str, doc: object) -> VolumeSpec:
    """A state record's volume entry (no passphrase), held to the payload's rules."""
    _volume_name(name)
    spec = _object(doc, f"volumes.{name}")
    _only(spec, {"device", "mount_point"}, {"device", "mount_point"}, f"volumes.{name}")
    device = _device(spec, f"volumes.{name}", api=False)
    mount_point = _mount_point(spec["mount_point"], f"volumes.{name}.mount_point")
    return VolumeSpec(name, device, b"", mount_point)


def _volumes(value: object, *, api: bool) -> dict[str, VolumeSpec]:
    vols = _object(value, "volumes")
    if len(vols) > MAX_VOLUMES:
        raise PayloadError(f"volumes: more than {MAX_VOLUMES} volumes")
    out: dict[str, VolumeSpec] = {}
    for name, raw in vols.items():
        where = f"volumes.{name}"
        _volume_name(name)
        spec = _object(raw, where)
        allowed = {"device", "passphrase", "mount_point"} | ({"volume_id"} if api else set())
        _only(spec, allowed, {"passphrase"}, where)
        device = _device(spec, where, api=api)
        mp = _mount_point(spec.get("mount_point", f"/{name}"), f"{where}.mount_point")
        out[name] = VolumeSpec(name, device, _passphrase(spec["passphrase"], where), mp)
    _check_distinct(out)
    return out


def _check_distinct(vols: Mapping[str, VolumeSpec]) -> None:
    seen_dev: dict[str, str] = {}
    for name, vol in vols.items():
        if vol.device in seen_dev:
            raise PayloadError(f"volumes {seen_dev[vol.device]} and {name} share a device")
        seen_dev[vol.device] = name
    for a, b in itertools.combinations(sorted(vols), 2):
        mp_a, mp_b = sorted((vols[a].mount_point, vols[b].mount_point))
        if mp_b == mp_a or mp_b.startswith(mp_a + "/"):
            raise PayloadError(f"mount points of {a} and {b} overlap")


def validate_user_id(value: object) -> str:
    """The ``user_id``: 1 to 128 characters, no control characters."""
    user_id = _string(value, "user_id")
    if not _USER_ID.fullmatch(user_id):
        raise PayloadError("user_id must have 1 to 128 characters and no control characters")
    return user_id


def validate(doc: object, *, api: bool = False) -> Payload:
    """Validate a payload v1 (``api=False``) or a cvm-control bootstrap request (``api=True``).

    The API form has no mandatory ``version`` and accepts ``volume_id`` (an
    AWS-style id, mapped to the virtio serial ``virtio:<volume_id>``) for ``device``.
    """
    obj = _object(doc, "payload")
    allowed = {"version", "user_id", "env", "secret", "volumes"}
    _only(
        obj,
        allowed,
        {"user_id", "volumes"} if api else {"version", "user_id", "volumes"},
        "payload",
    )
    if "version" in obj:
        version = obj["version"]
        if type(version) is not int or version != PAYLOAD_VERSION:
            raise PayloadError(f"unsupported payload version {version!r}")
    return Payload(
        user_id=validate_user_id(obj["user_id"]),
        env=_files(obj.get("env", {}), "env"),
        secret=_files(obj.get("secret", {}), "secret"),
        volumes=_volumes(obj["volumes"], api=api),
    )


def parse_payload(data: bytes) -> Payload:
    """Parse and validate the bytes of the payload secret-table entry."""
    return validate(parse_json(data))


def validate_rotation(doc: object) -> dict[str, RotateSpec]:
    """Validate cvm-control's ``PUT /api/v1/passphrase`` body."""
    obj = _object(doc, "request")
    _only(obj, {"volumes"}, {"volumes"}, "request")
    vols = _object(obj["volumes"], "volumes")
    if not vols:
        raise PayloadError("volumes: at least one volume is required")
    if len(vols) > MAX_VOLUMES:
        raise PayloadError(f"volumes: more than {MAX_VOLUMES} volumes")
    out: dict[str, RotateSpec] = {}
    for name, raw in vols.items():
        where = f"volumes.{name}"
        _volume_name(name)
        spec = _object(raw, where)
        _only(
            spec, {"old_passphrase", "new_passphrase"}, {"old_passphrase", "new_passphrase"}, where
        )
        out[name] = RotateSpec(
            name,
            _passphrase(spec["old_passphrase"], f"{where}.old_passphrase"),
            _passphrase(spec["new_passphrase"], f"{where}.new_passphrase"),
        )
    return out
