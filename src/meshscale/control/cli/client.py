"""AdminClient: the blocking REST client the ``meshscale-control`` verbs use.

The CLI never opens the database: it talks to a running server through the REST API,
over the server's unix socket (trusted, like Headscale's) or over HTTP(S) with an API
key (``--url`` + ``--api-key``, or ``cli.address`` / ``cli.api_key`` in the config).
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

MAX_RESPONSE_BYTES: Final = 16 << 20  # a listing larger than this is refused, not buffered


class AdminError(Exception):
    """A request failed; the message is one line for the operator."""


class AdminClient:
    """Blocking REST client. ``url`` (http/https) with ``api_key``, or ``unix_socket``."""

    def __init__(
        self,
        *,
        unix_socket: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        insecure: bool = False,
    ) -> None:
        if not unix_socket and not url:
            raise AdminError("no server: give --url or a unix socket")
        self.unix_socket = unix_socket
        self.url = url.rstrip("/") if url else None
        self.api_key = api_key
        self.timeout = timeout
        self.insecure = insecure

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        # Imported per call, not at the top: asyncio and h11 cost ~0.2 s that `version`
        # and `--help` do not need.
        from meshscale.io import httpclient

        target = path + ("?" + urlencode(query) if query else "")
        headers = [("Accept", "application/json")]
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            headers.append(("Content-Type", "application/json"))
        if self.url is not None and self.api_key:
            headers.append(("Authorization", f"Bearer {self.api_key}"))
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            raise AdminError(f"--url must be http:// or https://, got {self.url[:60]!r}")
        where = self.url or self.unix_socket
        try:
            resp = httpclient.request_sync(
                method, (self.url or "http://localhost") + target,
                unix_socket=None if self.url else self.unix_socket, headers=headers, body=data,
                verify=not self.insecure, max_body=MAX_RESPONSE_BYTES, time_limit=self.timeout,
            )  # fmt: skip
        except httpclient.ResponseTooLarge as exc:
            raise AdminError("response too large") from exc
        except (OSError, TimeoutError, httpclient.HTTPClientError) as exc:
            raise AdminError(f"cannot reach the server at {where}: {exc or 'timed out'}") from exc
        raw = resp.body
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw[:200].decode("utf-8", "replace").strip()}
        if resp.status != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            raise AdminError(f"{message or resp.reason} (HTTP {resp.status})")
        return payload
