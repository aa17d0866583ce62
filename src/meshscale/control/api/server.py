"""HTTP glue for /api/v1: routing, Bearer API-key auth, bounded bodies, JSON errors.

Mounted on a :class:`meshscale.io.http.Router` under ``/api/v1/``. The unix socket gets a
``trusted`` instance (file permissions are the access control, as in Headscale); TCP
listeners require ``Authorization: Bearer <hskey-api-...>``.

Errors are gRPC-gateway shaped: ``{"code": <grpc code>, "message": "...", "details": []}``
with the matching HTTP status. A handler bug becomes a 500 with a generic message (the
traceback is logged, never sent).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final
from urllib.parse import unquote

from meshscale.control.api.openapi import openapi_document
from meshscale.control.api.routes import ROUTES, Call, Route
from meshscale.control.models import (
    AddressExhausted,
    APIKeyError,
    Conflict,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PreAuthKeyError,
    StateError,
)
from meshscale.control.state import State
from meshscale.io.http import Request, Response, Router

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/"
MAX_API_BODY: Final = 64 * 1024  # bytes: admin requests are small; bounds memory per call

# (HTTP status, gRPC code) per error class; the first matching class wins.
_ERROR_MAP: Final[tuple[tuple[type[Exception], int, int], ...]] = (
    (NotFound, 404, 5),
    (Conflict, 409, 6),
    (PreAuthKeyError, 400, 3),
    (InvalidArgument, 400, 3),
    (AddressExhausted, 503, 8),
    (LimitExceeded, 503, 8),
    (StateError, 400, 9),
)


def error_response(status: int, code: int, message: str) -> Response:
    body = json.dumps({"code": code, "message": message, "details": []}).encode()
    return Response(status, body, [("Cache-Control", "no-store")], "application/json")


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status, body, [("Cache-Control", "no-store")], "application/json")


class API:
    """The /api/v1 handler.

    Parameters:
      state: the one State.
      trusted: skip API-key checks (the unix socket).
      policy_writable: accept PUT /api/v1/policy (policy.mode database).
    """

    def __init__(
        self, state: State, *, trusted: bool = False, policy_writable: bool = True
    ) -> None:
        self.state = state
        self.trusted = trusted
        self.policy_writable = policy_writable
        self._routes = [(r, r.path.strip("/").split("/")) for r in ROUTES]
        self._openapi = json.dumps(openapi_document()).encode()

    def mount(self, router: Router) -> None:
        router.add_prefix("*", API_PREFIX, self.handle)

    def match(
        self, method: str, path: str, raw_path: str = ""
    ) -> tuple[Route, dict[str, str]] | int:
        """The route and its path parameters, or 404/405. Segments are split from the
        still-encoded ``raw_path`` when given and then decoded once: ``a%252Fb`` names
        ``a%2Fb``, not ``a/b`` (``path`` was decoded already by the HTTP server)."""
        if raw_path:
            parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        else:
            parts = path.strip("/").split("/")
        path_known = False
        for route, pattern in self._routes:
            if len(pattern) != len(parts):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if route.method == method or (method == "HEAD" and route.method == "GET"):
                    return route, params
                path_known = True
        return 405 if path_known else 404

    async def handle(self, req: Request) -> Response:
        if req.path == API_PREFIX + "openapi.json":
            if req.method not in ("GET", "HEAD"):
                return error_response(405, 12, "method not allowed")
            return Response(200, self._openapi, [], "application/json")
        found = self.match(req.method, req.path, req.raw_path)
        if isinstance(found, int):
            status = found
            return error_response(status, 5 if status == 404 else 12,
                                  "not found" if status == 404 else "method not allowed")
        route, params = found
        if not (self.trusted or route.public):
            denied = self._authenticate(req)
            if denied is not None:
                return denied
        if len(req.body) > MAX_API_BODY:
            return error_response(413, 8, f"request body larger than {MAX_API_BODY} bytes")
        body: Any = {}
        if req.body.strip():
            try:
                body = json.loads(req.body)
            except (ValueError, RecursionError):  # incl. UnicodeDecodeError; deep nesting
                return error_response(400, 3, "request body is not valid JSON")
            if not isinstance(body, dict):
                return error_response(400, 3, "request body must be a JSON object")
        try:
            call = Call(self.state, params, dict(req.query), body, self.policy_writable)
            return json_response(route.handler(call))
        except StateError as exc:
            for cls, status, code in _ERROR_MAP:
                if isinstance(exc, cls):
                    return error_response(status, code, str(exc))
            raise  # pragma: no cover - StateError is in the map
        except Exception:
            log.exception("api: %s %s failed", req.method, req.path)
            return error_response(500, 13, "internal error")

    def _authenticate(self, req: Request) -> Response | None:
        header = req.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(401, 16, "missing API key (Authorization: Bearer <key>)")
        try:
            self.state.verify_api_key(token.strip())
        except APIKeyError as exc:
            return error_response(401, 16, str(exc))
        return None
