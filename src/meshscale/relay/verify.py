"""Admission hooks for DERPServer: derper's --verify-client-url and --verify-clients (1.9).

``URLVerifier`` POSTs ``{"NodePublic": "nodekey:<hex>", "Source": "<client IP>"}`` and admits
the client iff the answer is 200 with JSON ``{"Allow": true}`` (body read up to 4 KiB). An
unreachable endpoint admits when ``fail_open`` (derper's default) and refuses otherwise.

``LocalAPIVerifier`` asks the tailscaled (or meshscaled) on the relay's own host, over its
unix socket, ``GET /localapi/v0/whois?addr=nodekey:<hex>``: 200 admits, anything else (404 =
not a peer of this tailnet, or no answer) refuses.

Both speak through io.httpclient, one connection per question.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

from ..derp.info import ClientInfo
from ..io import httpclient
from ..key import NodePublic
from .server import CLIENT_SOURCE

log = logging.getLogger(__name__)

VERIFY_URL_TIMEOUT = 5.0  # seconds per request
MAX_VERIFY_BODY = 4096  # bytes read from the answer: a hostile endpoint's endless body
# A whois answer (node, Hostinfo, user profile) of a real tailscaled runs to several KiB; only
# its status matters, the bound only caps memory.
MAX_WHOIS_BODY = 1 << 20  # bytes


class URLVerifier:
    """A ``verify_client`` hook for DERPServer backed by an admission URL."""

    def __init__(self, url: str, *, fail_open: bool = True) -> None:
        self.url = url
        self.fail_open = fail_open

    async def __call__(self, key: NodePublic, info: ClientInfo) -> bool:
        body = json.dumps({"NodePublic": key.text(), "Source": CLIENT_SOURCE.get()}).encode()
        try:
            resp = await httpclient.request(
                "POST", self.url, headers=[("Content-Type", "application/json")], body=body,
                max_body=MAX_VERIFY_BODY, time_limit=VERIFY_URL_TIMEOUT,
            )  # fmt: skip
        except httpclient.ResponseTooLarge:
            log.info("derp verify: %s answered more than %d bytes", self.url, MAX_VERIFY_BODY)
            return False  # it answered, just not with a verdict we can read
        except (TimeoutError, httpclient.HTTPClientError, OSError) as exc:
            log.warning(
                "derp verify: %s unreachable (%r); fail_open=%s", self.url, exc, self.fail_open
            )
            return self.fail_open
        if resp.status != 200:
            log.info("derp verify: %s answered %d", self.url, resp.status)
            return False
        try:
            answer = resp.json()
        except ValueError:
            return False
        return isinstance(answer, dict) and answer.get("Allow") is True

    async def close(self) -> None:
        """Nothing to release: each question has its own connection."""


DEFAULT_TAILSCALED_SOCKET = "/var/run/tailscale/tailscaled.sock"


class LocalAPIVerifier:
    """A ``verify_client`` hook that admits only peers of the local node's tailnet."""

    def __init__(self, socket_path: str = DEFAULT_TAILSCALED_SOCKET) -> None:
        self.socket_path = socket_path

    async def __call__(self, key: NodePublic, info: ClientInfo) -> bool:
        url = "http://local-tailscaled.sock/localapi/v0/whois?" + urlencode({"addr": key.text()})
        try:
            resp = await httpclient.request(
                "GET", url, unix_socket=self.socket_path,
                headers=[("Sec-Tailscale", "localapi")], max_body=MAX_WHOIS_BODY,
                time_limit=VERIFY_URL_TIMEOUT,
            )  # fmt: skip
        except (httpclient.HTTPClientError, TimeoutError, OSError) as exc:
            log.warning("derp verify: local API at %s: %r", self.socket_path, exc)
            return False
        return resp.status == 200

    async def close(self) -> None:
        """Nothing to release: each question has its own connection."""
