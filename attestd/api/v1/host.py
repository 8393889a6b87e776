"""Host-side endpoints: ``/launch`` and ``/validate`` (libvirt / attestd-host)."""

from __future__ import annotations

from flask import Blueprint, Response

from attestd.api.schemas import (
    LaunchRequestSchema,
    LaunchSecretSchema,
    LaunchSessionSchema,
    ValidateRequestSchema,
    vm_uuid,
)
from attestd.api.state import base_owner_id, bearer_token, json_response, load_json, state
from attestd.errors import AttestdError
from attestd.service.launches import ValidateRequest

bp = Blueprint("host", __name__)

# built once: a marshmallow schema instance deep-copies its fields when created, which
# cost more than the load or dump itself; instances are safe to share between threads
_LAUNCH_REQUEST = LaunchRequestSchema()
_LAUNCH_SESSION = LaunchSessionSchema()
_VALIDATE_REQUEST = ValidateRequestSchema()
_LAUNCH_SECRET = LaunchSecretSchema()


@bp.post("/vm/<uuid>/launch")
def launch(uuid: str) -> Response:
    """Verify the host platform and start a launch session."""
    st = state()
    host = st.services.principals.authenticate_host(bearer_token())
    canonical = vm_uuid(uuid)
    body = load_json(_LAUNCH_REQUEST)
    try:
        session = st.services.launches.begin(
            canonical,
            pdh=body["pdh"],
            cert_chain=body["cert_chain"],
            cpu_id=body.get("cpu_id"),
            cek=body.get("cek"),
            host=host,
            owner_id=base_owner_id(),
        )
    except AttestdError as exc:
        st.metrics.outcome("launch", exc.code)
        raise
    st.metrics.outcome("launch", "started")
    return json_response(
        _LAUNCH_SESSION.dump(
            {
                "launch_id": session.launch_id,
                "session": session.session,
                "owner_cert": session.owner_cert,
                "policy": session.policy,
                "expires_at": session.expires_at,
            }
        )
    )


@bp.post("/vm/<uuid>/validate")
def validate(uuid: str) -> Response:
    """Verify the launch measurement and release the secret table."""
    st = state()
    host = st.services.principals.authenticate_host(bearer_token())
    canonical = vm_uuid(uuid)
    body = load_json(_VALIDATE_REQUEST)
    try:
        secret = st.services.launches.validate(
            canonical, ValidateRequest(**body), host=host, owner_id=base_owner_id()
        )
    except AttestdError as exc:
        st.metrics.outcome("validate", exc.code)
        raise
    st.metrics.outcome("validate", "released")
    return json_response(
        _LAUNCH_SECRET.dump({"secret_header": secret.header, "secret_table": secret.ciphertext})
    )
