"""marshmallow schemas of the v1 protocol (kebab-case JSON, base64 binaries, hex digests).

The schemas only map JSON to the model (shape, types, patterns); the rules of a
registration are :meth:`attestd.service.registration.Registration.check`, run by
the VM use-cases for every entry.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from attestd.errors import AttestdError
from attestd.service.registration import SCHEMES, Registration, Secret, cmdline_sha256, from_stored
from attestd.sev.certs import SEV_CERT_SIZE
from attestd.sev.measure.vmsa import VCPU_TYPES
from attestd.sev.policy import GuestPolicy

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX96 = re.compile(r"^[0-9a-f]{96}$")
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
VOLUME_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
DEVICE = r"^(virtio:[A-Za-z0-9_.-]{1,20}|/dev/[A-Za-z0-9_./:-]{1,200})$"
MOUNT_POINT = r"^(/[A-Za-z0-9_.-]+)+$"
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
ENV_VALUE = re.compile(r"^[^\x00\n\r]*$")
NO_CONTROL = r"^[^\x00-\x1f]+$"
VCPU_TYPE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Base64Bytes(fields.Field[bytes]):
    """Standard base64 text <-> bytes, with an optional exact or maximum length."""

    def __init__(
        self, *, length: int | None = None, max_length: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.length = length
        self.max_length = max_length

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return base64.b64encode(value).decode("ascii")

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bytes:
        if not isinstance(value, str):
            raise ValidationError("must be a base64 string")
        limit = self.length or self.max_length
        if limit is not None and len(value) > 4 * (limit // 3 + 1) + 8:
            raise ValidationError("too long")
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("not valid base64") from None
        if self.length is not None and len(raw) != self.length:
            raise ValidationError(f"must decode to exactly {self.length} bytes")
        if self.max_length is not None and len(raw) > self.max_length:
            raise ValidationError(f"must decode to at most {self.max_length} bytes")
        return raw


class Policy(fields.Field[int]):
    """A guest policy: an integer or a hex string (``"0x3"``) of ``bits`` bits (SEV 32,
    SNP 64), optionally checked by ``check`` (e.g. SEV's reserved bits 6-15 are zero)."""

    def __init__(
        self,
        *,
        bits: int = 32,
        check: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bits = bits
        self.check = check
        hex_digits, dec_digits = bits // 4, len(str(2**bits - 1))
        self.pattern = f"0[xX][0-9a-fA-F]{{1,{hex_digits}}}|[0-9]{{1,{dec_digits}}}"

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> int | None:
        return None if value is None else int(value)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int:
        if isinstance(value, bool):
            raise ValidationError("must be an integer or a hex string")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and re.fullmatch(self.pattern, value):
            number = int(value, 0) if value[:2].lower() == "0x" else int(value, 10)
        else:
            raise ValidationError("must be an integer or a hex string")
        if not 0 <= number < 1 << self.bits:
            raise ValidationError(f"must fit in {self.bits} bits")
        if self.check is not None:
            self.check(number)
        return number


def _sev_policy_bits(number: int) -> None:
    try:
        GuestPolicy.from_u32(number)
    except AttestdError:
        raise ValidationError("reserved policy bits 6-15 must be zero") from None


class StrictBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only (not 1, 0 or strings)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


def _hex_list(regex: re.Pattern[str], what: str, **kwargs: Any) -> fields.List[str]:
    return fields.List(
        fields.String(validate=validate.Regexp(regex, error=f"must be {what} (lower-case hex)")),
        validate=validate.Length(max=64),
        **kwargs,
    )


def _hex(regex: re.Pattern[str], what: str, **kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.Regexp(regex, error=f"must be {what} (lower-case hex)"), **kwargs
    )


def _env_values(value: Mapping[str, Any]) -> None:
    if len(value) > 256:
        raise ValidationError("at most 256 keys")
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_KEY.match(key):
            raise ValidationError(f"key {str(key)[:64]!r} is not a shell identifier")
        if not isinstance(item, str) or len(item) > 4096 or not ENV_VALUE.match(item):
            raise ValidationError(f"value of {key} must be a string without NUL, CR or LF")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class LuksPassphraseSchema(_Strict):
    """GRUB/crypttab LUKS passphrase (secret-table GUID 736869e5-...)."""

    type = fields.String(required=True, validate=validate.Equal("luks-passphrase"))
    passphrase = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=512), validate.Regexp(r"^[^\x00]*$")],
    )


class VolumeSchema(_Strict):
    """A LUKS2 volume the in-guest agent unlocks and mounts."""

    type = fields.String(required=True, validate=validate.Equal("volume"))
    name = fields.String(required=True, validate=validate.Regexp(VOLUME_NAME))
    device = fields.String(required=True, validate=validate.Regexp(DEVICE))
    passphrase = fields.String(validate=validate.Length(min=1, max=512))
    generate = fields.Boolean()
    mount_point = fields.String(data_key="mount-point", validate=validate.Regexp(MOUNT_POINT))


class EnvSchema(_Strict):
    """An env file (``type`` env, 0644) or a secret file (``type`` secret-file, 0600)."""

    type = fields.String(required=True, validate=validate.OneOf(["env", "secret-file"]))
    name = fields.String(required=True, validate=validate.Regexp(FILE_NAME))
    values = fields.Dict(keys=fields.String(), values=fields.String(), required=True)

    @validates_schema
    def _check(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        try:
            _env_values(data["values"])
        except ValidationError as exc:
            raise ValidationError(exc.messages, "values") from None


class RawSchema(_Strict):
    """Any other secret-table entry, by GUID."""

    type = fields.String(required=True, validate=validate.Equal("raw"))
    guid = fields.UUID(required=True)
    data = Base64Bytes(required=True, max_length=4096)


SECRET_SCHEMAS: dict[str, type[Schema]] = {
    "luks-passphrase": LuksPassphraseSchema,
    "volume": VolumeSchema,
    "env": EnvSchema,
    "secret-file": EnvSchema,
    "raw": RawSchema,
}


class SecretField(fields.Field[Secret]):
    """One ``secrets`` entry, dispatched on its ``type``; loads to its typed value."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Secret:
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        kind = value.get("type")
        if not isinstance(kind, str) or kind not in SECRET_SCHEMAS:
            raise ValidationError({"type": [f"must be one of {sorted(SECRET_SCHEMAS)}"]})
        loaded = SECRET_SCHEMAS[kind]().load(value)
        if not isinstance(loaded, dict):
            raise TypeError("secret schemas load to dicts")
        return from_stored(loaded)


def check_cmdline(data: Mapping[str, Any]) -> None:
    """``cmdline`` is JSON sugar for ``cmdline-hash``: its own two mapping rules."""
    if "cmdline" in data and "cmdline_hash" in data:
        raise ValidationError("give cmdline or cmdline-hash, not both", "cmdline")
    if "cmdline" in data and "kernel_hash" not in data:
        raise ValidationError("needs kernel-hash", "cmdline")


def cmdline_to_hash(data: dict[str, Any]) -> None:
    """Replace a loaded ``cmdline`` by its ``cmdline_hash``."""
    cmdline = data.pop("cmdline", None)
    if cmdline is not None:
        data["cmdline_hash"] = cmdline_sha256(cmdline)


class RegistrationFields(_Strict):
    """What every registration scheme's body has: budget, user id, secrets, cmdline."""

    max_launches = fields.Integer(
        strict=True, data_key="max-launches", validate=validate.Range(1, 2**31 - 1)
    )
    user_id = fields.String(
        data_key="user-id", validate=[validate.Length(1, 128), validate.Regexp(NO_CONTROL)]
    )
    secrets = fields.List(SecretField(), load_default=list, validate=validate.Length(max=64))

    @validates_schema
    def _check(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        check_cmdline(data)


class RegistrationSchema(RegistrationFields):
    """``POST``/``PUT /v1/vm/<uuid>`` body."""

    scheme = fields.String(required=True, validate=validate.OneOf(SCHEMES))
    policy = Policy(
        check=_sev_policy_bits,
        required=True,
        metadata={"description": "integer or hex string"},
    )
    cloud_cert = Base64Bytes(
        data_key="cloud-cert",
        length=SEV_CERT_SIZE,
        metadata={"description": "the OCA certificate that must sign the platform's PEK"},
    )
    cpu_count = fields.Integer(
        strict=True, data_key="cpu-count", load_default=1, validate=validate.Range(1, 512)
    )
    vcpu_types = fields.List(
        fields.String(validate=validate.OneOf(sorted(VCPU_TYPES))),
        data_key="vcpu-types",
        load_default=lambda: ["EPYC-v4"],
        validate=validate.Length(min=1, max=16),
    )
    vmsa_flavours = fields.List(
        fields.String(validate=validate.OneOf(["current", "legacy"])),
        data_key="vmsa-flavours",
        load_default=lambda: ["current"],
        validate=validate.Length(min=1, max=2),
    )
    firmware_hashes = _hex_list(HEX64, "a SHA-256", data_key="firmware-hashes", load_default=list)
    kernel_hash = _hex(HEX64, "a SHA-256", data_key="kernel-hash")
    initrd_hash = _hex(HEX64, "a SHA-256", data_key="initrd-hash")
    cmdline_hash = _hex(HEX64, "a SHA-256", data_key="cmdline-hash")
    cmdline = fields.String(validate=[validate.Length(max=4096), validate.Regexp(r"^[^\x00]*$")])
    launch_digests = _hex_list(
        HEX64, "a 32-byte digest", data_key="launch-digests", load_default=list
    )
    min_api_major = fields.Integer(
        strict=True, data_key="min-api-major", validate=validate.Range(0, 255)
    )
    min_api_minor = fields.Integer(
        strict=True, data_key="min-api-minor", validate=validate.Range(0, 255)
    )
    min_build_id = fields.Integer(
        strict=True, data_key="min-build-id", validate=validate.Range(0, 255)
    )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Registration:
        cmdline_to_hash(data)
        for name in ("vcpu_types", "vmsa_flavours", "firmware_hashes", "launch_digests"):
            data[name] = tuple(dict.fromkeys(data[name]))
        data["secrets"] = tuple(data["secrets"])
        return Registration(**data)


class LaunchRequestSchema(_Strict):
    """``POST /v1/vm/<uuid>/launch`` body (from ``virNodeGetSEVInfo``)."""

    pdh = Base64Bytes(required=True, length=SEV_CERT_SIZE)
    cert_chain = Base64Bytes(data_key="cert-chain", required=True, length=3 * SEV_CERT_SIZE)
    cpu_id = Base64Bytes(data_key="cpu-id", length=64, metadata={"description": "chip id"})
    cek = Base64Bytes(length=SEV_CERT_SIZE, metadata={"description": "ASK-signed CEK"})


class LaunchSessionSchema(Schema):
    """``/launch`` success: the :class:`~attestd.service.launches.LaunchSession`."""

    launch_id = fields.String(data_key="launch-id", required=True)
    session = Base64Bytes(required=True)
    owner_cert = Base64Bytes(data_key="owner-cert", required=True)
    policy = fields.Integer(strict=True, required=True)
    expires_at = fields.Float(data_key="expires-at", required=True)


class ValidateRequestSchema(_Strict):
    """``POST /v1/vm/<uuid>/validate`` body."""

    launch_id = fields.String(
        data_key="launch-id", required=True, validate=validate.Regexp(r"^[A-Za-z0-9_-]{8,64}$")
    )
    api_major = fields.Integer(
        strict=True, data_key="api-major", required=True, validate=validate.Range(0, 255)
    )
    api_minor = fields.Integer(
        strict=True, data_key="api-minor", required=True, validate=validate.Range(0, 255)
    )
    build_id = fields.Integer(
        strict=True, data_key="build-id", required=True, validate=validate.Range(0, 255)
    )
    policy = Policy(check=_sev_policy_bits, required=True)
    measurement = Base64Bytes(required=True, length=48)
    firmware_hash = _hex(HEX64, "a SHA-256", data_key="firmware-hash")
    cpu_count = fields.Integer(strict=True, data_key="cpu-count", validate=validate.Range(1, 512))
    vcpu_type = fields.String(data_key="vcpu-type", validate=validate.Regexp(VCPU_TYPE))


class LaunchSecretSchema(Schema):
    """``/validate`` success: the LAUNCH_SECRET packet (``attestd.sev.secrets.LaunchSecret``)."""

    secret_header = Base64Bytes(data_key="secret-header", required=True)
    secret_table = Base64Bytes(data_key="secret-table", required=True)


class VmSummarySchema(Schema):
    """One entry of ``GET /v1/vm``."""

    uuid = fields.String(required=True)
    scheme = fields.String(required=True)
    revision = fields.Integer(required=True)
    launches_used = fields.Integer(data_key="launches-used", required=True)
    updated_at = fields.Float(data_key="updated-at", required=True)


class VmListSchema(Schema):
    """``GET /v1/vm``: one page, ordered by UUID."""

    vms = fields.List(fields.Nested(VmSummarySchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "pass as ?after= for the next page; null on the last page"},
    )


class VmQuerySchema(_Strict):
    """Query of ``GET /v1/vm``: the VMs after UUID ``after``, at most ``limit``."""

    after = fields.UUID(load_default=None)
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class VmViewSchema(Schema):
    """``GET /v1/vm/<uuid>``: the registration without secret values."""

    class Meta:
        unknown = EXCLUDE

    uuid = fields.String(required=True)
    revision = fields.Integer(required=True)
    launches_used = fields.Integer(data_key="launches-used", required=True)
    registration = fields.Dict(required=True)


class FirmwareSchema(Schema):
    """``POST /v1/firmware`` result."""

    sha256 = fields.String(required=True)
    size = fields.Integer(required=True)
    created = fields.Boolean(required=True)


class EventSchema(Schema):
    """One audit event."""

    id = fields.Integer(required=True)
    ts = fields.Float(required=True)
    kind = fields.String(required=True)
    launch_id = fields.String(data_key="launch-id", allow_none=True)
    outcome = fields.String(allow_none=True)
    detail = fields.Dict(required=True)


class EventListSchema(Schema):
    """``GET /v1/vm/<uuid>/events``."""

    events = fields.List(fields.Nested(EventSchema), required=True)


class EventQuerySchema(_Strict):
    """Query of ``GET /v1/vm/<uuid>/events``."""

    after = fields.Integer(load_default=0, validate=validate.Range(0, 2**62))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class ErrorSchema(Schema):
    """The one error envelope."""

    code = fields.Integer(required=True)
    status = fields.String(required=True)
    message = fields.String(required=True)
    errors = fields.Dict(required=True)


def vm_uuid(text: str) -> str:
    """Canonical lower-case UUID text, or :class:`ValidationError`."""
    try:
        return str(UUID(text))
    except ValueError:
        raise ValidationError({"uuid": ["not a UUID"]}) from None
