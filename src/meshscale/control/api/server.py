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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from meshscale.control.api.openapi import openapi_document
from meshscale.control.api.routes import Call, Route
from meshscale.control.api.scope import SERVER_OPERATIONS, TailnetScope
from meshscale.control.api.table import ROUTES
from meshscale.control.models import (
    AddressExhausted,
    APIKeyError,
    Conflict,
    Forbidden,
    InvalidArgument,
    LimitExceeded,
    NodeID,
    NotFound,
    PreAuthKeyError,
    StateError,
    TailnetID,
    UserID,
)
from meshscale.control.state import State
from meshscale.io.http import Request, Response, Router

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/"
# POSTs that change nothing (so the audit log does not record them).
READ_ONLY_OPERATIONS: Final = frozenset({"checkPolicy"})
MAX_API_BODY: Final = 64 * 1024  # bytes: admin requests are small; bounds memory per call

# (HTTP status, gRPC code) per error class; the first matching class wins.
_ERROR_MAP: Final[tuple[tuple[type[Exception], int, int], ...]] = (
    (NotFound, 404, 5),
    (Forbidden, 403, 7),
    (Conflict, 409, 6),
    (PreAuthKeyError, 400, 3),
    (InvalidArgument, 400, 3),
    (AddressExhausted, 503, 8),
    (LimitExceeded, 503, 8),
    (StateError, 400, 9),
)


@dataclass(frozen=True, slots=True)
class Change:
    """One admin change that succeeded, for the audit log: who, what, on what, from where."""

    actor: str  # "apikey:<prefix>", "unix:uid=<n>", "console:<actor>"
    action: str  # the operation id (setTags, createPreAuthKey, ...)
    target: str  # the path parameters, "nodeId=3" (empty when none)
    detail: dict[str, Any]  # the request's query and body fields (never a secret)
    source: str  # the client's address, or "unix"


AuditHook = Callable[[Change], None]


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
      audit: called with every change that succeeded (not with reads or failures);
        default: recorded in State's audit log.
    """

    def __init__(
        self, state: State, *, trusted: bool = False, policy_writable: bool = True,
        audit: AuditHook | None = None,
    ) -> None:  # fmt: skip
        self.state = state
        self.trusted = trusted
        self.policy_writable = policy_writable
        self.audit = audit if audit is not None else self._record
        self._routes = [(r, r.path.strip("/").split("/")) for r in ROUTES]
        self._by_op = {r.operation_id: r for r in ROUTES}
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
            return error_response(
                status,
                5 if status == 404 else 12,
                "not found" if status == 404 else "method not allowed",
            )
        route, params = found
        actor = f"unix:uid={req.peer_uid}" if req.peer_uid is not None else "unix"
        scope: TailnetID | None = None
        if not (self.trusted or route.public):
            denied = self._authenticate(req)
            if isinstance(denied, Response):
                return denied
            actor, scope = denied
        limit = route.max_body or MAX_API_BODY
        if len(req.body) > limit:
            return error_response(413, 8, f"request body larger than {limit} bytes")
        body: Any = {}
        if req.body.strip():
            try:
                body = json.loads(req.body)
            except (ValueError, RecursionError):  # incl. UnicodeDecodeError; deep nesting
                return error_response(400, 3, "request body is not valid JSON")
            if not isinstance(body, dict):
                return error_response(400, 3, "request body must be a JSON object")
        source = req.client[0] if req.client else "unix"
        try:
            return json_response(
                self._run(route, params, dict(req.query), body, actor, source, scope)
            )
        except StateError as exc:
            for cls, status, code in _ERROR_MAP:
                if isinstance(exc, cls):
                    return error_response(status, code, str(exc))
            raise  # pragma: no cover - StateError is in the map
        except Exception:
            log.exception("api: %s %s failed", req.method, req.path)
            return error_response(500, 13, "internal error")

    def _record(self, change: Change) -> None:
        c = change
        self.state.audit.record(c.actor, c.action, c.target, c.detail, c.source)

    def invoke(
        self, operation_id: str, params: dict[str, str] | None = None,
        query: dict[str, str] | None = None, body: dict[str, Any] | None = None, *,
        actor: str, source: str,
    ) -> dict[str, Any]:  # fmt: skip
        """Run one operation in-process, as a request to it would (the admin console's
        way in: the same handlers, checks and audit records as /api/v1). Raises StateError."""
        route = self._by_op[operation_id]
        return self._run(route, params or {}, query or {}, body or {}, actor, source)

    def _run(
        self, route: Route, params: dict[str, str], query: dict[str, str],
        body: dict[str, Any], actor: str, source: str, scope: TailnetID | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Run one operation; ``scope``: the caller's key is scoped to that tailnet (it
        sees State through a TailnetScope; server-level operations are 403)."""
        state: State = self.state
        if scope is not None:
            if route.operation_id in SERVER_OPERATIONS:
                raise Forbidden(
                    f"{route.operation_id} is for server admins; this API key is scoped to "
                    "one tailnet"
                )
            state = TailnetScope(self.state, scope)
        audited = (
            route.method != "GET"
            and not route.public
            and (route.operation_id not in READ_ONLY_OPERATIONS)
        )
        before = self._before(route, params) if audited else None
        result = route.handler(Call(state, params, query, body, self.policy_writable))
        if audited:
            target = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
            detail: dict[str, Any] = {**query, **body}
            if before:
                detail["before"] = before
            try:
                self.audit(Change(actor, route.operation_id, target, detail, source))
            except Exception:  # the change is made; a failed record must not undo it
                log.exception("audit: recording %s failed", route.operation_id)
        return result

    def _before(self, route: Route, params: dict[str, str]) -> dict[str, Any] | None:
        """What a node or user change is about to replace, for the audit record."""
        ref = params.get("nodeId", "")
        try:
            if ref.isascii() and ref.isdigit():
                n = self.state.get_node(NodeID(int(ref)))
                return {"givenName": n.given_name, "tags": list(n.tags),
                        "approvedRoutes": [str(r) for r in n.approved_routes],
                        "expiry": n.expiry.isoformat() if n.expiry else None}  # fmt: skip
            ref = params.get("oldId") or params.get("id") or ""
            if route.path.startswith(API_PREFIX + "user/") and ref.isascii() and ref.isdigit():
                return {"name": self.state.get_user(UserID(int(ref))).name}
        except (StateError, ValueError):
            return None
        return None

    def _authenticate(self, req: Request) -> Response | tuple[str, TailnetID | None]:
        """The actor ("apikey:<prefix>") and the key's tailnet scope, or the 401."""
        header = req.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(401, 16, "missing API key (Authorization: Bearer <key>)")
        try:
            key = self.state.verify_api_key(token.strip())
        except APIKeyError as exc:
            return error_response(401, 16, str(exc))
        return f"apikey:{key.prefix}", key.tailnet_id
