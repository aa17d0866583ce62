"""A small synchronous client for meshscaled's local API (unix socket, JSON).

The CLI talks to the daemon only through this (on io.httpclient). Every failure becomes a
``CLIError`` with a one-line message that ``main`` prints as ``meshscale: <message>``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

DEFAULT_SOCKET = "/var/run/meshscale/meshscaled.sock"
MAX_RESPONSE = 16 << 20  # bytes: a status with thousands of peers stays far below this


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class LocalClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(
        self,
        method: str,
        endpoint: str,
        *,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        # Imported per call, not at the top: asyncio and h11 cost ~0.2 s that `version`
        # and `--help` do not need.
        from meshscale.io import httpclient

        path = "/localapi/v0/" + endpoint
        if query:
            path += "?" + urlencode(query)
        data = json.dumps(body).encode() if body is not None else b""
        headers = [("Content-Type", "application/json")] if body is not None else []
        try:
            resp = httpclient.request_sync(
                method, "http://local-meshscaled.sock" + path, unix_socket=self.socket_path,
                headers=headers, body=data, max_body=MAX_RESPONSE,
                time_limit=timeout or self.timeout,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise CLIError(
                f"failed to connect to local meshscaled (is it running?): "
                f"no socket at {self.socket_path}"
            ) from exc
        except ConnectionRefusedError as exc:
            raise CLIError(
                f"failed to connect to local meshscaled at {self.socket_path}: connection refused"
            ) from exc
        except PermissionError as exc:
            raise CLIError(f"permission denied opening {self.socket_path}") from exc
        except TimeoutError as exc:
            raise CLIError("timed out waiting for meshscaled") from exc
        except (OSError, httpclient.HTTPClientError) as exc:
            raise CLIError(f"talking to meshscaled: {exc}") from exc
        try:
            obj = json.loads(resp.body) if resp.body else {}
        except ValueError as exc:
            raise CLIError(f"meshscaled sent a malformed answer (HTTP {resp.status})") from exc
        if resp.status >= 400:
            msg = obj.get("error") if isinstance(obj, dict) else None
            raise CLIError(str(msg or f"meshscaled answered HTTP {resp.status}"))
        return obj

    def get(self, endpoint: str, **query: str) -> Any:
        return self.call("GET", endpoint, query=query or None)

    def post(self, endpoint: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self.call("POST", endpoint, body=body, **kw)

    def put(self, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("PUT", endpoint, body=body)
