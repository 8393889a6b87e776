"""Guest-owner endpoints: VM registration, firmware upload, audit events."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import Schema
from werkzeug.exceptions import RequestEntityTooLarge

from attestd.api.schemas import (
    EventListSchema,
    EventQuerySchema,
    FirmwareSchema,
    RegistrationSchema,
    VmListSchema,
    VmQuerySchema,
    VmViewSchema,
    vm_uuid,
)
from attestd.api.snp_schemas import SnpRegistrationSchema
from attestd.api.state import current_owner, load_json, state
from attestd.errors import ParseError
from attestd.service.registration import Registration
from attestd.service.snp_registration import SNP_SCHEME, SnpRegistration
from attestd.storage.ports import VmRecord

bp = Blueprint("owner", __name__)

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _view(vm: VmRecord) -> dict[str, Any]:
    return {
        "uuid": vm.uuid,
        "revision": vm.revision,
        "launches_used": vm.launches_used,
        "registration": dict(vm.registration),
    }


def _respond(payload: dict[str, Any], schema: type[Schema], status: int = 200) -> Response:
    response = jsonify(schema().dump(payload))
    response.status_code = status
    return response


def _registration() -> Registration | SnpRegistration:
    """The body as the registration variant its ``scheme`` names."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None  # load_json refuses it with its own message
    if isinstance(body, dict) and body.get("scheme") == SNP_SCHEME:
        snp: SnpRegistration = load_json(SnpRegistrationSchema())
        return snp
    sev: Registration = load_json(RegistrationSchema())
    return sev


@bp.post("/vm/<uuid>")
def register(uuid: str) -> Response:
    """Register a VM."""
    owner = current_owner()
    canonical = vm_uuid(uuid)
    registration = _registration()
    vm = state().services.vms.register(owner, canonical, registration)
    return _respond(_view(vm), VmViewSchema, 201)


@bp.put("/vm/<uuid>")
def replace(uuid: str) -> Response:
    """Replace a registration."""
    owner = current_owner()
    canonical = vm_uuid(uuid)
    registration = _registration()
    vm = state().services.vms.replace(owner, canonical, registration)
    return _respond(_view(vm), VmViewSchema)


@bp.get("/vm/<uuid>")
def show(uuid: str) -> Response:
    """A registration without secret values."""
    owner = current_owner()
    vm = state().services.vms.get(owner, vm_uuid(uuid))
    return _respond(_view(vm), VmViewSchema)


@bp.delete("/vm/<uuid>")
def remove(uuid: str) -> Response:
    """Delete a registration and its secrets."""
    owner = current_owner()
    state().services.vms.delete(owner, vm_uuid(uuid))
    return Response(status=204)


@bp.get("/vm")
def index() -> Response:
    """The owner's VMs, one page (``?after=<uuid>&limit=<n>``) at a time."""
    owner = current_owner()
    query = VmQuerySchema().load(request.args.to_dict())
    after = "" if query["after"] is None else str(query["after"])
    page = state().services.vms.list(owner, after=after, limit=query["limit"])
    vms = [
        {
            "uuid": vm.uuid,
            "scheme": vm.registration["scheme"],
            "revision": vm.revision,
            "launches_used": vm.launches_used,
            "updated_at": vm.updated_at,
        }
        for vm in page
    ]
    last = page[-1].uuid if len(page) == query["limit"] else None
    return _respond({"vms": vms, "next": last}, VmListSchema)


@bp.get("/vm/<uuid>/events")
def events(uuid: str) -> Response:
    """The VM's audit trail."""
    owner = current_owner()
    canonical = vm_uuid(uuid)
    query = EventQuerySchema().load(request.args.to_dict())
    found = state().services.events.list(
        owner, canonical, after=query["after"], limit=query["limit"]
    )
    items = [
        {
            "id": ev.id,
            "ts": ev.ts,
            "kind": ev.kind,
            "launch_id": ev.launch_id,
            "outcome": ev.outcome,
            "detail": dict(ev.detail),
        }
        for ev in found
    ]
    return _respond({"events": items}, EventListSchema)


@bp.post("/firmware")
def upload_firmware() -> Response:
    """Upload a firmware image (raw bytes, content-addressed)."""
    owner = current_owner()
    settings = state().settings
    if request.content_length is not None and request.content_length > settings.max_firmware_size:
        raise RequestEntityTooLarge(
            f"firmware images are limited to {settings.max_firmware_size} bytes"
        )
    data = request.get_data(cache=False)
    if not data:
        raise ParseError("the request body must be the firmware image")
    if len(data) > settings.max_firmware_size:
        raise RequestEntityTooLarge(
            f"firmware images are limited to {settings.max_firmware_size} bytes"
        )
    info = state().services.firmware.upload(owner, data)
    return _respond(
        {"sha256": info.sha256, "size": info.size, "created": info.created},
        FirmwareSchema,
        201 if info.created else 200,
    )


@bp.delete("/firmware/<sha256>")
def delete_firmware(sha256: str) -> Response:
    """Delete an uploaded image (409 while one of the owner's registrations names it)."""
    owner = current_owner()
    if not SHA256_HEX.fullmatch(sha256):
        raise ParseError("the firmware is named by its SHA-256 in lower-case hex")
    state().services.firmware.delete(owner, sha256)
    return Response(status=204)
