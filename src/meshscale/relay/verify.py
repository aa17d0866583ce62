"""Admission hooks for DERPServer: derper's --verify-client-url and --verify-clients (1.9).

``URLVerifier`` POSTs ``{"NodePublic": "nodekey:<hex>", "Source": "<client IP>"}`` and admits
the client iff the answer is 200 with JSON ``{"Allow": true}`` (body read up to 4 KiB). An
unreachable endpoint admits when ``fail_open`` (derper's default) and refuses otherwise --
but only for ``fail_open_grace`` seconds (FAIL_OPEN_GRACE) after the endpoint last answered
(or the verifier started): an outage of the admission service opens the relay to anyone
for a bounded time, not indefinitely (issue #12 finding 8; SECURITY.md).

``LocalAPIVerifier`` asks the tailscaled (or meshscaled) on the relay's own host, over its
unix socket, ``GET /localapi/v0/whois?addr=nodekey:<hex>``: 200 admits, anything else (404 =
not a peer of this tailnet, or no answer) refuses.

Both speak through io.httpclient, one connection per question.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
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
FAIL_OPEN_GRACE = 300.0  # seconds an unreachable admission URL still admits (fail_open)


class URLVerifier:
    """A ``verify_client`` hook for DERPServer backed by an admission URL."""

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        fail_open_grace: float = FAIL_OPEN_GRACE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.fail_open = fail_open
        self.fail_open_grace = fail_open_grace
        self.monotonic = monotonic
        self.last_answer = monotonic()  # start counts as an answer: the grace runs from here

    def _unreachable_verdict(self) -> bool:
        if not self.fail_open:
            return False
        return self.monotonic() - self.last_answer < self.fail_open_grace

    async def __call__(self, key: NodePublic, info: ClientInfo) -> bool:
        body = json.dumps({"NodePublic": key.text(), "Source": CLIENT_SOURCE.get()}).encode()
        try:
            resp = await httpclient.request(
                "POST", self.url, headers=[("Content-Type", "application/json")], body=body,
                max_body=MAX_VERIFY_BODY, time_limit=VERIFY_URL_TIMEOUT,
            )  # fmt: skip
        except httpclient.ResponseTooLarge:
            self.last_answer = self.monotonic()
            log.info("derp verify: %s answered more than %d bytes", self.url, MAX_VERIFY_BODY)
            return False  # it answered, just not with a verdict we can read
        except (TimeoutError, httpclient.HTTPClientError, OSError) as exc:
            verdict = self._unreachable_verdict()
            log.warning(
                "derp verify: %s unreachable (%r); fail_open=%s, admitting=%s",
                self.url, exc, self.fail_open, verdict,
            )  # fmt: skip
            return verdict
        self.last_answer = self.monotonic()
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
