"""Host-side endpoints: ``/launch`` and ``/validate`` (libvirt / attestd-host)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from attestd.api.schemas import (
    LaunchRequestSchema,
    LaunchResponseSchema,
    ValidateRequestSchema,
    ValidateResponseSchema,
    vm_uuid,
)
from attestd.api.state import bearer_token, load_json, state
from attestd.errors import AttestdError
from attestd.launch import LaunchService, ValidateRequest

bp = Blueprint("host", __name__)


def _launches() -> LaunchService:
    value = state().launches
    assert isinstance(value, LaunchService)
    return value


@bp.post("/vm/<uuid>/launch")
def launch(uuid: str) -> Response:
    """Verify the host platform and start a launch session."""
    st = state()
    st.service.authenticate_host(bearer_token())
    canonical = vm_uuid(uuid)
    body = load_json(LaunchRequestSchema())
    try:
        grant = _launches().begin(
            canonical,
            pdh=body["pdh"],
            cert_chain=body["cert_chain"],
            cpu_id=body.get("cpu_id"),
            cek=body.get("cek"),
        )
    except AttestdError as exc:
        st.metrics.outcome("launch", exc.code)
        raise
    st.metrics.outcome("launch", "started")
    return jsonify(
        LaunchResponseSchema().dump(
            {
                "launch_id": grant.launch_id,
                "session": grant.session,
                "owner_cert": grant.owner_cert,
                "policy": grant.policy,
                "expires_at": grant.expires_at,
            }
        )
    )


@bp.post("/vm/<uuid>/validate")
def validate(uuid: str) -> Response:
    """Verify the launch measurement and release the secret table."""
    st = state()
    st.service.authenticate_host(bearer_token())
    canonical = vm_uuid(uuid)
    body = load_json(ValidateRequestSchema())
    try:
        released = _launches().validate(canonical, ValidateRequest(**body))
    except AttestdError as exc:
        st.metrics.outcome("validate", exc.code)
        raise
    st.metrics.outcome("validate", "released")
    return jsonify(
        ValidateResponseSchema().dump(
            {"secret_header": released.header, "secret_table": released.table}
        )
    )
