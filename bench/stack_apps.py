"""Stand-in WSGI applications for ``bench_stack.py``: they answer a request shaped like
``POST /v1/vm/<uuid>/launch`` with a JSON object the size of a launch session, and do
nothing else, so what a request costs in them is the HTTP stack's own cost."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request

#: The size of a real launch session answer: the GODH certificate (0x824 bytes) and the
#: session blob (0x80 bytes) in base64, an id, a policy and an expiry
ANSWER = json.dumps(
    {
        "expires-at": 1_800_000_000,
        "launch-id": "L" * 32,
        "owner-cert": "C" * 2784,
        "policy": 1,
        "session": "S" * 172,
    },
    sort_keys=True,
    separators=(",", ":"),
).encode()


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A plain WSGI callable: reads the body, answers :data:`ANSWER`."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]
    )
    return [ANSWER]


flask = Flask("stack")


@flask.post("/v1/vm/<uuid>/launch")
def launch(uuid: str) -> Response:
    """A minimal Flask view: a routed URL, the JSON body parsed, a JSON answer."""
    body = request.get_json()
    if not isinstance(body, dict) or not uuid:
        return Response(status=400)
    return Response(ANSWER, mimetype="application/json")
