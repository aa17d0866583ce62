"""POST /verify: admission for relays run with derper's ``--verify-client-url``.

A standalone ``meshscale-derp`` (or Tailscale's derper) posts
``{"NodePublic": "nodekey:…", "Source": "ip"}`` (tailcfg.DERPAdmitClientRequest) for each client
that logs in and admits it only on ``{"Allow": true}``: only nodes this server knows, with an
unexpired key, may use the relay. Headscale serves the same endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from meshscale.control.state import StateReader
from meshscale.io.http import Request, Response, Router
from meshscale.key import InvalidKeyError, NodePublic

MAX_VERIFY_BODY = 4096  # bytes: the request is one small JSON object


def admits(state: StateReader, key: NodePublic) -> bool:
    """Relay admission (/verify and embedded DERP): a known node whose key has not expired."""
    node = state.get_node_by_node_key(key)
    return node is not None and (node.expiry is None or node.expiry > state.clock())


def _parse_key(raw: bytes) -> NodePublic | None:
    # Unauthenticated input: nesting, non-object bodies and non-string keys are a 400, never a 500.
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("NodePublic"), str):
        return None
    try:
        return NodePublic.from_text(body["NodePublic"])
    except (ValueError, InvalidKeyError):
        return None


def verify_handler(state: StateReader) -> Callable[[Request], Awaitable[Response]]:
    async def verify(req: Request) -> Response:
        if len(req.body) > MAX_VERIFY_BODY:
            return Response.text(413, "request too large")
        key = _parse_key(req.body)
        if key is None:
            return Response.text(400, "want a JSON DERPAdmitClientRequest")
        return Response.json_bytes(json.dumps({"Allow": admits(state, key)}).encode())

    return verify


def mount_verify(router: Router, state: StateReader) -> None:
    router.add("POST", "/verify", verify_handler(state))
