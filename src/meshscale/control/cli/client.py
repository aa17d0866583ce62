"""AdminClient: the blocking REST client the ``meshscale-control`` verbs use.

The CLI never opens the database: it talks to a running server through the REST API,
over the server's unix socket (trusted, like Headscale's) or over HTTP(S) with an API
key (``--url`` + ``--api-key``, or ``cli.address`` / ``cli.api_key`` in the config).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

MAX_RESPONSE_BYTES: Final = 16 << 20  # a listing larger than this is refused, not buffered


class AdminError(Exception):
    """A request failed; the message is one line for the operator."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """Blocking REST client. ``url`` (http/https) with ``api_key``, or ``unix_socket``."""

    def __init__(
        self, *, unix_socket: str | None = None, url: str | None = None,
        api_key: str | None = None, timeout: float = 10.0, insecure: bool = False,
    ) -> None:
        if not unix_socket and not url:
            raise AdminError("no server: give --url or a unix socket")
        self.unix_socket = unix_socket
        self.url = url.rstrip("/") if url else None
        self.api_key = api_key
        self.timeout = timeout
        self.insecure = insecure

    def _connection(self) -> http.client.HTTPConnection:
        if self.url is None:
            assert self.unix_socket is not None
            return _UnixHTTPConnection(self.unix_socket, self.timeout)
        parts = urlsplit(self.url)
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            if self.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=ctx)
        if parts.scheme == "http":
            return http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        raise AdminError(f"--url must be http:// or https://, got {self.url[:60]!r}")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        target = path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.url is not None and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        where = self.url or self.unix_socket
        conn = self._connection()
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"cannot reach the server at {where}: {exc}") from exc
        finally:
            conn.close()
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AdminError("response too large")
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw[:200].decode("utf-8", "replace").strip()}
        if resp.status != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            raise AdminError(f"{message or resp.reason} (HTTP {resp.status})")
        return payload
