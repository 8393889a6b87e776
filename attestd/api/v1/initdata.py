"""SEV-SNP initdata of a VM: ``GET`` (owner or host token) and ``POST`` (owner) to change it.

The answer is what a host writes into the VM's libvirt domain (``attestd-host
prepare-domain``): the registered policy, the initdata document and the HOST_DATA.
It holds no secret (service URLs, the VM UUID, the service's CA or key pin).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from attestd.api.schemas import vm_uuid
from attestd.api.snp_schemas import InitdataChangeSchema, InitdataSchema
from attestd.api.state import base_owner_id, bearer_token, current_owner, load_json, state
from attestd.service.initdata import InitdataChange, InitdataView
from attestd.service.owners import OWNER_TOKEN_PREFIX

bp = Blueprint("initdata", __name__)

_VIEW = InitdataSchema()
_CHANGE = InitdataChangeSchema()


def _respond(view: InitdataView) -> Response:
    return jsonify(
        _VIEW.dump(
            {
                "scheme": view.scheme,
                "policy": f"0x{view.policy:016x}",
                "initdata": view.initdata.decode("utf-8"),
                "host_data": view.host_data.hex(),
            }
        )
    )


@bp.get("/vm/<uuid>/initdata")
def show(uuid: str) -> Response:
    """The SNP VM's initdata, policy and HOST_DATA (owner token, or host token)."""
    st = state()
    token = bearer_token()
    canonical = vm_uuid(uuid)
    if token is not None and token.startswith(OWNER_TOKEN_PREFIX):
        view = st.services.initdata.show(canonical, owner=current_owner())
    else:
        host = st.services.principals.authenticate_host(token)
        view = st.services.initdata.show(canonical, host=host, owner_id=base_owner_id())
    return _respond(view)


@bp.post("/vm/<uuid>/initdata")
def change(uuid: str) -> Response:
    """Rebuild the SNP VM's initdata from the settings (and the body's overrides)."""
    owner = current_owner()
    canonical = vm_uuid(uuid)
    # the body is optional: none at all rebuilds from the settings alone
    body = load_json(_CHANGE) if request.content_length or request.mimetype else {}
    view = state().services.initdata.change(
        owner,
        canonical,
        InitdataChange(
            services=body.get("services"), ca_pem=body.get("ca_pem"), pin=body.get("pin")
        ),
    )
    return _respond(view)
