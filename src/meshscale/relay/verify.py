"""Admission hooks for DERPServer: derper's --verify-client-url and --verify-clients (1.9).

``URLVerifier`` POSTs ``{"NodePublic": "nodekey:<hex>", "Source": "<client IP>"}`` and admits
the client iff the answer is 200 with JSON ``{"Allow": true}`` (body read up to 4 KiB). An
unreachable endpoint admits when ``fail_open`` (derper's default) and refuses otherwise.

``LocalAPIVerifier`` asks the tailscaled (or meshscaled) on the relay's own host, over its
unix socket, ``GET /localapi/v0/whois?addr=nodekey:<hex>``: 200 admits, anything else (404 =
not a peer of this tailnet, or no answer) refuses.
"""

from __future__ import annotations

import json
import logging

import aiohttp

from ..derp.info import ClientInfo
from ..key import NodePublic
from .server import CLIENT_SOURCE

log = logging.getLogger(__name__)

VERIFY_URL_TIMEOUT = 5.0  # seconds per request
MAX_VERIFY_BODY = 4096  # bytes read from the answer: a hostile endpoint's endless body


class URLVerifier:
    """A ``verify_client`` hook for DERPServer backed by an admission URL."""

    def __init__(self, url: str, *, fail_open: bool = True) -> None:
        self.url = url
        self.fail_open = fail_open
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, key: NodePublic, info: ClientInfo) -> bool:
        body = {"NodePublic": key.text(), "Source": CLIENT_SOURCE.get()}
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=VERIFY_URL_TIMEOUT)
            )
        try:
            async with self._session.post(self.url, json=body) as resp:
                raw = await resp.content.read(MAX_VERIFY_BODY)
                if resp.status != 200:
                    log.info("derp verify: %s answered %d", self.url, resp.status)
                    return False
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "derp verify: %s unreachable (%r); fail_open=%s", self.url, exc, self.fail_open
            )
            return self.fail_open
        try:
            answer = json.loads(raw)
        except ValueError:
            return False
        return isinstance(answer, dict) and answer.get("Allow") is True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


DEFAULT_TAILSCALED_SOCKET = "/var/run/tailscale/tailscaled.sock"


class LocalAPIVerifier:
    """A ``verify_client`` hook that admits only peers of the local node's tailnet."""

    def __init__(self, socket_path: str = DEFAULT_TAILSCALED_SOCKET) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, key: NodePublic, info: ClientInfo) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=VERIFY_URL_TIMEOUT),
            )
        url = "http://local-tailscaled.sock/localapi/v0/whois"
        headers = {"Sec-Tailscale": "localapi"}
        try:
            async with self._session.get(url, params={"addr": key.text()}, headers=headers) as r:
                await r.content.read(MAX_VERIFY_BODY)
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("derp verify: local API at %s: %r", self.socket_path, exc)
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
