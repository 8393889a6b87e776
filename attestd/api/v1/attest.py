"""Guest endpoints of SEV-SNP attestation: ``/attest/challenge`` and ``/attest``.

No owner or host token: the guest has none; the report, the nonce and REPORT_DATA
are what is checked (:mod:`attestd.service.attestations`). The owner is named by the
base URL the guest was given (``/owners/<name>/v1``); at ``/v1`` the UUID must be one
owner's only (409 ``owner_required`` otherwise).
"""

from __future__ import annotations

from flask import Blueprint, Response

from attestd.api.schemas import vm_uuid
from attestd.api.snp_schemas import AttestRequestSchema, AttestResultSchema, ChallengeSchema
from attestd.api.state import base_owner_id, json_response, load_json, state
from attestd.errors import AttestdError
from attestd.service.attestations import AttestRequest

bp = Blueprint("attest", __name__)

# built once, as the host views' (a schema instance deep-copies its fields when created)
_CHALLENGE = ChallengeSchema()
_ATTEST_REQUEST = AttestRequestSchema()
_ATTEST_RESULT = AttestResultSchema()


@bp.post("/vm/<uuid>/attest/challenge")
def challenge(uuid: str) -> Response:
    """A single-use nonce for the VM's next attestation."""
    st = state()
    issued = st.services.attestations.challenge(vm_uuid(uuid), base_owner_id())
    return json_response(_CHALLENGE.dump({"nonce": issued.nonce, "expires_at": issued.expires_at}))


@bp.post("/vm/<uuid>/attest")
def attest(uuid: str) -> Response:
    """Verify an SEV-SNP report and release the guest payload as a JWE."""
    st = state()
    canonical = vm_uuid(uuid)
    body = load_json(_ATTEST_REQUEST)
    try:
        token = st.services.attestations.attest(canonical, AttestRequest(**body), base_owner_id())
    except AttestdError as exc:
        st.metrics.outcome("attest", exc.code)
        raise
    st.metrics.outcome("attest", "released")
    return json_response(_ATTEST_RESULT.dump({"payload": token}))
