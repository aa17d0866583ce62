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


def verify_handler(state: StateReader) -> Callable[[Request], Awaitable[Response]]:
    async def verify(req: Request) -> Response:
        if len(req.body) > MAX_VERIFY_BODY:
            return Response.text(413, "request too large")
        try:
            body = json.loads(req.body)
            key = NodePublic.from_text(body["NodePublic"])
        except (ValueError, KeyError, TypeError, InvalidKeyError):
            return Response.text(400, "want a JSON DERPAdmitClientRequest")
        node = state.get_node_by_node_key(key)
        now = state.clock()
        allow = node is not None and (node.expiry is None or node.expiry > now)
        return Response.json_bytes(json.dumps({"Allow": allow}).encode())

    return verify


def mount_verify(router: Router, state: StateReader) -> None:
    router.add("POST", "/verify", verify_handler(state))
