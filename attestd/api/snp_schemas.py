"""marshmallow schemas of the SEV-SNP operations: the SNP registration, challenge, attest.

Like :mod:`attestd.api.schemas`, they only map JSON to the model; the rules of an
SNP registration are :meth:`attestd.service.snp_registration.SnpRegistration.check`.
"""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509
from marshmallow import Schema, ValidationError, fields, post_load, validate

from attestd.api.schemas import (
    HEX64,
    HEX96,
    Base64Bytes,
    Policy,
    RegistrationFields,
    StrictBoolean,
    _hex,
    _hex_list,
    _Strict,
    cmdline_to_hash,
)
from attestd.guest.initdata import InitdataError, parse_pin
from attestd.service.snp_registration import SIGNING_KEYS, SNP_SCHEME, SnpRegistration
from attestd.sev.measure.vmsa import VCPU_TYPES
from attestd.sev.snp.report import REPORT_SIZE

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX128 = re.compile(r"^[0-9a-f]{128}$")
#: The largest certificate table / VCEK accepted in an attest request.
MAX_CERT_TABLE = 16 * 1024


def _component() -> fields.Integer:
    return fields.Integer(strict=True, required=True, validate=validate.Range(0, 255))


class TcbSchema(_Strict):
    """A minimum TCB: one SPL per component (``fmc`` on Turin only)."""

    bootloader = _component()
    tee = _component()
    snp = _component()
    microcode = _component()
    fmc = fields.Integer(strict=True, validate=validate.Range(0, 255))


class FirmwareMinimumSchema(_Strict):
    """A minimum SNP firmware version (CURRENT_MAJOR.MINOR, build)."""

    major = _component()
    minor = _component()
    build = _component()


class SnpRegistrationSchema(RegistrationFields):
    """``POST``/``PUT /v1/vm/<uuid>`` body for ``"scheme": "amd-sev-snp"``."""

    scheme = fields.String(required=True, validate=validate.Equal(SNP_SCHEME))
    policy = Policy(
        bits=64, required=True, metadata={"description": "64-bit SNP guest policy; bit 17 set"}
    )
    launch_digests = _hex_list(
        HEX96, "a 48-byte digest", data_key="launch-digests", load_default=list
    )
    firmware_hashes = _hex_list(HEX64, "a SHA-256", data_key="firmware-hashes", load_default=list)
    kernel_hash = _hex(HEX64, "a SHA-256", data_key="kernel-hash")
    initrd_hash = _hex(HEX64, "a SHA-256", data_key="initrd-hash")
    cmdline_hash = _hex(HEX64, "a SHA-256", data_key="cmdline-hash")
    cmdline = fields.String(validate=[validate.Length(max=4096), validate.Regexp(r"^[^\x00]*$")])
    cpu_count = fields.Integer(
        strict=True, data_key="cpu-count", load_default=1, validate=validate.Range(1, 512)
    )
    vcpu_types = fields.List(
        fields.String(validate=validate.OneOf(sorted(VCPU_TYPES))),
        data_key="vcpu-types",
        load_default=lambda: ["EPYC-v4"],
        validate=validate.Length(min=1, max=16),
    )
    guest_features = fields.Integer(
        strict=True,
        data_key="guest-features",
        load_default=1,
        validate=validate.Range(0, 2**64 - 1),
    )
    min_tcb = fields.Nested(TcbSchema, data_key="min-tcb")
    min_launch_tcb = fields.Nested(TcbSchema, data_key="min-launch-tcb")
    vmpl = fields.Integer(strict=True, load_default=0, validate=validate.Range(0, 3))
    host_data = _hex(HEX64, "32 bytes", data_key="host-data")
    signing_keys = fields.List(
        fields.String(validate=validate.OneOf(sorted(SIGNING_KEYS))),
        data_key="signing-keys",
        load_default=lambda: ["vcek", "vlek"],
        validate=validate.Length(min=1, max=2),
    )
    chip_ids = _hex_list(HEX128, "a 64-byte chip id", data_key="chip-ids")
    id_key_digests = _hex_list(HEX96, "a SHA-384", data_key="id-key-digests")
    author_key_digests = _hex_list(HEX96, "a SHA-384", data_key="author-key-digests")
    family_id = _hex(HEX32, "16 bytes", data_key="family-id")
    image_id = _hex(HEX32, "16 bytes", data_key="image-id")
    min_guest_svn = fields.Integer(
        strict=True, data_key="min-guest-svn", validate=validate.Range(0, 2**32 - 1)
    )
    min_firmware = fields.Nested(FirmwareMinimumSchema, data_key="min-firmware")
    allow_provisional_firmware = StrictBoolean(
        data_key="allow-provisional-firmware",
        load_default=False,
        metadata={
            "description": "accept a report whose running firmware (CURRENT_TCB, version) is "
            "not yet the committed one; default false"
        },
    )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> SnpRegistration:
        cmdline_to_hash(data)
        for name in ("vcpu_types", "firmware_hashes", "launch_digests", "signing_keys"):
            data[name] = tuple(dict.fromkeys(data[name]))
        for name in ("chip_ids", "id_key_digests", "author_key_digests"):
            if name in data:
                data[name] = tuple(dict.fromkeys(data[name]))
        data["secrets"] = tuple(data["secrets"])
        return SnpRegistration(**data)


class ChallengeSchema(Schema):
    """``POST /v1/vm/<uuid>/attest/challenge`` success."""

    nonce = fields.String(required=True, metadata={"description": "base64 of 32 random bytes"})
    expires_at = fields.Integer(data_key="expires-at", required=True)


class TeePubkeySchema(_Strict):
    """The guest's EC P-384 public key as a JWK (checked again by the SNP core)."""

    kty = fields.String(required=True, validate=validate.Equal("EC"))
    crv = fields.String(required=True, validate=validate.Equal("P-384"))
    x = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_-]{64}$"))
    y = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_-]{64}$"))


class AttestRequestSchema(_Strict):
    """``POST /v1/vm/<uuid>/attest`` body."""

    nonce = fields.String(
        required=True, validate=validate.Regexp(r"^[A-Za-z0-9+/]{43}=$", error="not a nonce")
    )
    tee_pubkey = fields.Nested(TeePubkeySchema, data_key="tee-pubkey", required=True)
    report = Base64Bytes(required=True, length=REPORT_SIZE)
    vcek = Base64Bytes(max_length=MAX_CERT_TABLE, metadata={"description": "VCEK or VLEK DER"})
    cert_table = Base64Bytes(
        data_key="cert-table",
        max_length=MAX_CERT_TABLE,
        metadata={"description": "the extended-report certificate table"},
    )


class AttestResultSchema(Schema):
    """``POST /v1/vm/<uuid>/attest`` success."""

    payload = fields.String(
        required=True,
        metadata={"description": "JWE compact (ECDH-ES+A256KW, A256GCM) to tee-pubkey"},
    )


def _check_pem(text: str) -> None:
    try:
        x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValidationError("must be PEM X.509 certificates") from None


def _check_pin(text: str) -> None:
    try:
        parse_pin(text)
    except InitdataError as exc:
        raise ValidationError(exc.message) from None


class InitdataSchema(Schema):
    """``GET``/``POST /v1/vm/<uuid>/initdata`` success: what the host puts in the domain."""

    scheme = fields.String(required=True, metadata={"description": "amd-sev-snp"})
    policy = fields.String(
        required=True,
        validate=validate.Regexp(r"^0x[0-9a-f]{16}$"),
        metadata={"description": "the registered 64-bit SNP guest policy, 0x + 16 hex"},
    )
    initdata = fields.String(
        required=True,
        metadata={"description": "the initdata document (Trustee TOML), the exact bytes"},
    )
    host_data = fields.String(
        data_key="host-data",
        required=True,
        validate=validate.Regexp(r"^[0-9a-f]{64}$"),
        metadata={
            "description": "HOST_DATA for <hostData>: the pinned host-data, else the "
            "SHA-256 of initdata"
        },
    )


class InitdataChangeSchema(_Strict):
    """``POST /v1/vm/<uuid>/initdata`` body (optional): overrides of the service settings."""

    services = fields.List(
        fields.String(
            validate=[
                validate.Length(max=512),
                validate.Regexp(r"^https?://\S+$", error="must be an http(s) URL"),
            ]
        ),
        validate=validate.Length(min=1, max=8),
        metadata={"description": "service base URLs (default: the service's public_urls)"},
    )
    ca_pem = fields.String(
        data_key="ca-pem",
        validate=[validate.Length(max=MAX_CERT_TABLE), _check_pem],
        metadata={"description": "CA certificate(s) the guest trusts (default: guest_ca_file)"},
    )
    pin = fields.String(
        validate=[validate.Length(max=64), _check_pin],
        metadata={"description": "service key pin sha256//BASE64 (default: guest_pin)"},
    )
