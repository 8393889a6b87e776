"""Operational endpoints: /healthz, /metrics (Prometheus text), /v1/openapi.json."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from attestd.api.openapi import build_spec
from attestd.api.state import state

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 when the database answers and accepts a write (503 envelope otherwise).

    ``host_tokens`` says whether /launch and /validate demand a host token
    (``"not required"`` only in a development setup, ``require_host_token = false``).
    """
    st = state()
    st.store.ping()
    st.store.check_writable(st.services.clock())
    required = st.settings.require_host_token
    return jsonify({"status": "ok", "host_tokens": "required" if required else "not required"})


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition (process counters + database gauges)."""
    st = state()
    lines = [
        "# HELP attestd_http_requests_total HTTP requests handled by this process.",
        "# TYPE attestd_http_requests_total counter",
    ]
    with st.metrics.lock:
        requests = sorted(st.metrics.requests.items())
        outcomes = sorted(st.metrics.outcomes.items())
        latency = sorted(
            (k, st.metrics.latency_sum[k], st.metrics.latency_count[k])
            for k in st.metrics.latency_count
        )
    for (endpoint, method, status), count in requests:
        lines.append(
            f'attestd_http_requests_total{{endpoint="{_label(endpoint)}",method="{method}",'
            f'status="{status}"}} {count}'
        )
    lines += [
        "# HELP attestd_http_request_seconds Time spent handling requests.",
        "# TYPE attestd_http_request_seconds summary",
    ]
    for endpoint, total, count in latency:
        lines.append(
            f'attestd_http_request_seconds_sum{{endpoint="{_label(endpoint)}"}} {total:.6f}'
        )
        lines.append(f'attestd_http_request_seconds_count{{endpoint="{_label(endpoint)}"}} {count}')
    lines += [
        "# HELP attestd_attestations_total Launch and validation outcomes in this process.",
        "# TYPE attestd_attestations_total counter",
    ]
    for (operation, result), count in outcomes:
        lines.append(
            f'attestd_attestations_total{{operation="{_label(operation)}",'
            f'result="{_label(result)}"}} {count}'
        )
    stats = st.store.stats(st.services.clock())
    lines += [
        "# HELP attestd_owners Registered guest owners.",
        "# TYPE attestd_owners gauge",
        f"attestd_owners {stats['owners']}",
        "# HELP attestd_vms Registered VMs.",
        "# TYPE attestd_vms gauge",
        f"attestd_vms {stats['vms']}",
        "# HELP attestd_launches Launches by state.",
        "# TYPE attestd_launches gauge",
    ]
    for key, value in sorted(stats.items()):
        if key.startswith("launches_"):
            lines.append(f'attestd_launches{{state="{key.removeprefix("launches_")}"}} {value}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI document."""
    return jsonify(build_spec())
