"""The OpenAPI document of the v1 protocol, built from the marshmallow schemas.

``schemas/openapi-v1.json`` is this document, committed; ``attestd openapi``
prints it and a test fails when the two differ (or when a Flask route is missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from attestd.api import schemas as s
from attestd.api import snp_schemas as snp

#: The protocol version the document describes (not the package version).
PROTOCOL_VERSION = "1.0"


@dataclass(frozen=True)
class Operation:
    """One documented operation."""

    path: str
    method: str
    summary: str
    status: int
    response: type[Schema] | None
    request: type[Schema] | None = None
    #: the bearer token(s) accepted: one scheme, or alternatives (any one of them)
    security: str | tuple[str, ...] | None = None
    binary_body: bool = False
    query: type[Schema] | None = None
    produces: str = "application/json"
    optional_body: bool = False


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/vm",
        "get",
        "List the owner's VMs (paginated by UUID)",
        200,
        s.VmListSchema,
        security="owner",
        query=s.VmQuerySchema,
    ),
    Operation(
        "/v1/vm/{uuid}", "post", "Register a VM", 201, s.VmViewSchema, s.RegistrationSchema, "owner"
    ),
    Operation(
        "/v1/vm/{uuid}",
        "put",
        "Replace a registration",
        200,
        s.VmViewSchema,
        s.RegistrationSchema,
        "owner",
    ),
    Operation(
        "/v1/vm/{uuid}",
        "get",
        "Show a registration (no secret values)",
        200,
        s.VmViewSchema,
        security="owner",
    ),
    Operation(
        "/v1/vm/{uuid}",
        "delete",
        "Delete a registration and its secrets",
        204,
        None,
        security="owner",
    ),
    Operation(
        "/v1/vm/{uuid}/events",
        "get",
        "Audit trail of a VM",
        200,
        s.EventListSchema,
        security="owner",
        query=s.EventQuerySchema,
    ),
    Operation(
        "/v1/vm/{uuid}/launch",
        "post",
        "Start a launch: verify the platform, new session",
        200,
        s.LaunchSessionSchema,
        s.LaunchRequestSchema,
        "host",
    ),
    Operation(
        "/v1/vm/{uuid}/validate",
        "post",
        "Verify the measurement, release the secret",
        200,
        s.LaunchSecretSchema,
        s.ValidateRequestSchema,
        "host",
    ),
    Operation(
        "/v1/vm/{uuid}/attest/challenge",
        "post",
        "SEV-SNP: a single-use nonce for the guest's next attestation",
        200,
        snp.ChallengeSchema,
    ),
    Operation(
        "/v1/vm/{uuid}/attest",
        "post",
        "SEV-SNP: verify the guest's report, release its payload as a JWE",
        200,
        snp.AttestResultSchema,
        snp.AttestRequestSchema,
    ),
    Operation(
        "/v1/vm/{uuid}/initdata",
        "get",
        "SEV-SNP: the VM's initdata, policy and HOST_DATA (what the host writes)",
        200,
        snp.InitdataSchema,
        security=("owner", "host"),
    ),
    Operation(
        "/v1/vm/{uuid}/initdata",
        "post",
        "SEV-SNP: rebuild the VM's initdata from the settings (an owner action, an event)",
        200,
        snp.InitdataSchema,
        snp.InitdataChangeSchema,
        "owner",
        optional_body=True,
    ),
    Operation(
        "/v1/firmware",
        "post",
        "Upload a firmware image (content-addressed)",
        201,
        s.FirmwareSchema,
        security="owner",
        binary_body=True,
    ),
    Operation(
        "/v1/firmware/{sha256}",
        "delete",
        "Delete an uploaded firmware image (refused while a registration names it)",
        204,
        None,
        security="owner",
    ),
    Operation("/v1/openapi.json", "get", "This document", 200, None),
    Operation("/healthz", "get", "Liveness and database check", 200, None),
    Operation("/metrics", "get", "Prometheus metrics", 200, None, produces="text/plain"),
)


#: Schemas of the path parameters.
PATH_PARAMETERS: dict[str, dict[str, str]] = {
    "uuid": {"type": "string", "format": "uuid"},
    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}

#: Error statuses of the /v1 operations (the table itself is in ``attestd.api.errors``).
ERROR_STATUSES = {
    "400": "malformed input (bad JSON, base64, certificate layout)",
    "401": "missing or invalid bearer token",
    "403": "attestation failed: chain, measurement or policy (nothing released); or a token"
    " used at the base URL of another owner (wrong_owner, whether or not that owner exists)",
    "404": "unknown VM or launch (another owner's VM or launch is unknown alike: each owner"
    " has its own VM UUID namespace)",
    "409": "conflict: launch or nonce used or expired, budget exhausted, VM exists, firmware"
    " quota used up or firmware still named by a registration, SNP VM without initdata;"
    " owner_required: several owners registered the UUID and the request names none (use an"
    " owner-scoped host token or the owner's base URL /owners/{owner}/v1)",
    "413": "body too large, or the secret table would not fit the secret area",
    "422": "the request does not match the schema, or is unsupported",
    "429": "too many pending launches for the VM or launches by the host, or too many live"
    " attestation challenges or attestation requests for the VM (Retry-After)",
    "503": "database, storage key or signed CEK unavailable",
}


def _base64_limits(field: s.Base64Bytes) -> dict[str, Any]:
    """The text lengths ``Base64Bytes`` enforces (``_deserialize``), as the server does."""
    limits: dict[str, Any] = {}
    limit = field.length or field.max_length
    if limit is not None:
        limits["maxLength"] = 4 * (limit // 3 + 1) + 8
    if field.length is not None:
        # refused when empty; the exact decoded length is in the description, as a
        # minLength of the base64 text would leave generators nothing to produce
        limits["minLength"] = 1
        exact = f"base64 of exactly {field.length} bytes"
        described = field.metadata.get("description")
        limits["description"] = f"{described} ({exact})" if described else exact
    return limits


def _custom_fields(plugin: MarshmallowPlugin) -> None:
    plugin.map_to_openapi_type(s.Base64Bytes, "string", "byte")  # type: ignore[no-untyped-call]

    def extra(self: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
        if isinstance(field, s.Base64Bytes):
            return _base64_limits(field)
        if isinstance(field, s.Policy):
            return {
                "oneOf": [
                    {"type": "integer", "minimum": 0, "maximum": 2**field.bits - 1},
                    {"type": "string", "pattern": f"^({field.pattern})$"},
                ]
            }
        if isinstance(field, s.SecretField):
            return {
                "oneOf": [
                    {"$ref": "#/components/schemas/LuksPassphrase"},
                    {"$ref": "#/components/schemas/Volume"},
                    {"$ref": "#/components/schemas/Env"},
                    {"$ref": "#/components/schemas/Raw"},
                ]
            }
        return {}

    plugin.converter.add_attribute_function(extra)  # type: ignore[union-attr]


#: The v1 API is served at ``/v1`` and, the same, at each owner's base URL.
SERVERS: list[dict[str, Any]] = [
    {"url": "/", "description": "the service"},
    {
        "url": "/owners/{owner}",
        "description": (
            "an owner's base URL: the same /v1 API about that owner's VM UUID namespace only."
            " Hosts and guests without an owner token name the owner by it (e.g. the"
            " domain's service URL https://attest.example/owners/{owner}/v1); an owner or"
            " owner-scoped host token for another owner gets 403 wrong_owner there"
        ),
        "variables": {"owner": {"default": "owner", "description": "the owner's name"}},
    },
]
#: The paths also served at an owner's base URL.
OWNER_SCOPED = ("/v1/vm", "/v1/firmware")


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.0 document as a dict."""
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="attestd",
        version=PROTOCOL_VERSION,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={
            "description": (
                "Remote attestation service for AMD SEV, SEV-ES and SEV-SNP guests (protocol v1)."
            ),
        },
    )
    _custom_fields(plugin)
    spec.components.security_scheme("owner", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("host", {"type": "http", "scheme": "bearer"})
    for name, schema in (
        ("LuksPassphrase", s.LuksPassphraseSchema),
        ("Volume", s.VolumeSchema),
        ("Env", s.EnvSchema),
        ("Raw", s.RawSchema),
        ("Error", s.ErrorSchema),
        ("Registration", s.RegistrationSchema),
        ("SnpRegistration", snp.SnpRegistrationSchema),
    ):
        spec.components.schema(name, schema=schema)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    for path, operations in paths.items():
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in PATH_PARAMETERS.items()
            if f"{{{name}}}" in path
        ]
        spec.path(path=path, operations=operations, parameters=parameters)
    document = spec.to_dict()
    document["servers"] = SERVERS
    for path, item in document["paths"].items():
        if not path.startswith(OWNER_SCOPED):
            item["servers"] = [SERVERS[0]]  # not served at an owner's base URL
    return json.loads(json.dumps(document, sort_keys=True))  # type: ignore[no-any-return]


def _schema_name(schema: Any) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__
    return name[: -len("Schema")] if name.endswith("Schema") else name


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    error = {
        "description": "error envelope",
        "content": {"application/json": {"schema": "Error"}},
    }
    if op.response is not None:
        success: dict[str, Any] = {
            "description": "success",
            "content": {"application/json": {"schema": op.response}},
        }
    elif op.status == 204:
        success = {"description": "done"}
    elif op.produces == "text/plain":
        success = {
            "description": "success",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    else:
        success = {
            "description": "success",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    out["responses"] = {str(op.status): success, "default": error}
    if op.path.startswith(("/v1/vm", "/v1/firmware")):
        for status, what in ERROR_STATUSES.items():
            out["responses"][status] = {
                "description": what,
                "content": {"application/json": {"schema": "Error"}},
            }
    if op.path == "/v1/firmware":
        out["responses"]["200"] = {
            "description": "already uploaded",
            "content": {"application/json": {"schema": op.response}},
        }
    if op.request is not None:
        out["requestBody"] = {
            "required": not op.optional_body,
            "content": {"application/json": {"schema": op.request}},
        }
    if op.request is s.RegistrationSchema:
        variants = [f"#/components/schemas/{n}" for n in ("Registration", "SnpRegistration")]
        out["requestBody"]["content"]["application/json"]["schema"] = {
            "oneOf": [{"$ref": ref} for ref in variants]
        }
    if op.binary_body:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    if op.query is not None:
        out["parameters"] = [{"in": "query", "schema": op.query}]
    if op.security is not None:
        names = (op.security,) if isinstance(op.security, str) else op.security
        out["security"] = [{name: []} for name in names]
    return out


def _operation_id(op: Operation) -> str:
    words = [w for w in op.path.replace("{uuid}", "by-uuid").split("/") if w and w != "v1"]
    return op.method + "".join(w.replace(".", "-").title().replace("-", "") for w in words)


def render() -> str:
    """The document as committed in ``schemas/openapi-v1.json``."""
    return json.dumps(build_spec(), indent=2, sort_keys=True) + "\n"
