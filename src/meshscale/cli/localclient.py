"""A small synchronous client for meshscaled's local API (unix socket, JSON).

The CLI talks to the daemon only through this. Every failure becomes a ``CLIError`` with a
one-line message that ``main`` prints as ``meshscale: <message>``.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlencode

DEFAULT_SOCKET = "/var/run/meshscale/meshscaled.sock"
MAX_RESPONSE = 16 << 20  # bytes: a status with thousands of peers stays far below this


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("local-meshscaled.sock", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


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
        path = "/localapi/v0/" + endpoint
        if query:
            path += "?" + urlencode(query)
        conn = _UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE)
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
        except (OSError, http.client.HTTPException) as exc:
            raise CLIError(f"talking to meshscaled: {exc}") from exc
        finally:
            conn.close()
        try:
            obj = json.loads(raw) if raw else {}
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
