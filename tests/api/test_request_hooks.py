"""What every response gets from the request hooks: /metrics counts and latency, no-store,
and the host views' JSON written exactly as :func:`flask.jsonify` writes it."""

from __future__ import annotations

import re

from flask import Flask, jsonify
from flask.testing import FlaskClient

from attestd.api.state import json_response

VM = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def _seconds(text: str, endpoint: str) -> tuple[float, int]:
    total = re.search(rf'attestd_http_request_seconds_sum{{endpoint="{endpoint}"}} (\S+)', text)
    count = re.search(rf'attestd_http_request_seconds_count{{endpoint="{endpoint}"}} (\d+)', text)
    assert total and count, text
    return float(total[1]), int(count[1])


def test_every_response_is_counted_timed_and_not_cached(client: FlaskClient) -> None:
    answers = [
        client.get("/healthz"),  # 200
        client.post(f"/v1/vm/{VM}/launch", data=b"{", content_type="application/json"),  # 400
        client.post(f"/v1/vm/{VM}/launch", data=b"{}", content_type="text/plain"),  # 415
        client.get("/v2/nothing"),  # 404, no URL rule
    ]
    assert [a.status_code for a in answers] == [200, 400, 415, 404]
    assert all(a.headers["Cache-Control"] == "no-store" for a in answers)
    text = client.get("/metrics").text
    launch = "/v1/vm/<uuid>/launch"
    assert (
        f'attestd_http_requests_total{{endpoint="{launch}",method="POST",status="400"}} 1' in text
    )
    assert (
        f'attestd_http_requests_total{{endpoint="{launch}",method="POST",status="415"}} 1' in text
    )
    assert 'attestd_http_requests_total{endpoint="unmatched",method="GET",status="404"} 1' in text
    for endpoint, count in [(launch, 2), ("/healthz", 1), ("unmatched", 1)]:
        seconds, counted = _seconds(text, endpoint)
        assert counted == count
        assert 0 < seconds < 10


def test_json_response_is_jsonify_byte_for_byte(app: Flask) -> None:
    value = {"b": [1, 2.5, None, True], "a": "é\u2028\U0001f600<>&'", "c": {"z": 1, "y": ""}}
    with app.app_context():
        ours, flasks = json_response(value), jsonify(value)
        assert ours.get_data() == flasks.get_data()
        assert ours.mimetype == flasks.mimetype == "application/json"
        assert ours.status_code == flasks.status_code == 200
