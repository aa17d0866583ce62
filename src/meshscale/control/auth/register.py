"""``POST /machine/register`` (docs/protocol/control.md §3), and the ``/register/<id>`` page.

Decision order for a RegisterRequest from the Noise peer ``M`` (machine key)::

    capver < 109 (v1.78)                      -> HTTP 400 "unsupported client ... v1.78"
    NodeKey bound to another machine          -> HTTP 401 (docs/protocol/control.md §3.7, Headscale
                                              PR #1058)
    Followup set                              -> wait for the admin (long poll), or a new AuthURL
    Expiry set and in the past (logout)       -> expire the node (ephemeral: delete)   [before Auth]
    Expiry in the future on a known node      -> may only shorten
    Auth.AuthKey                              -> pre-auth key path (State consumes atomically)
    NodeKey known for M, not expired          -> current state (restart fast path)
    NodeKey known for M, expired              -> NodeKeyExpired: the client rotates its key
    M known, OldNodeKey == its current key    -> node-key rotation, same node
    otherwise                                 -> interactive: AuthURL <server_url>/register/<id>

User-facing failures are HTTP 200 with ``Error`` set (docs/protocol/control.md §3.8).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from meshscale.control import models
from meshscale.control.auth.request import (
    NodeBindingError,
    decode_request,
    lookup_node,
    raw_field,
    sanitize_hostinfo,
)
from meshscale.control.state import State, StateReader
from meshscale.controlhttp import NoiseRequest
from meshscale.io.http import Request, Response
from meshscale.key import MachinePublic, NodePublic
from meshscale.tailcfg import Login, RegisterRequest, RegisterResponse, User, dumps

REGISTER_PATH = "/register/"


class RegisterHandler:
    """Serves /machine/register over Noise.

    Parameters:
      state: the State.
      server_url: base of the AuthURL (``https://control.example``).
      clock: wall-clock UTC datetime.
    """

    def __init__(self, state: State, server_url: str, clock: Callable[[], datetime]) -> None:
        self.state = state
        self.server_url = server_url.rstrip("/")
        self.clock = clock

    async def __call__(self, req: NoiseRequest) -> Response:
        rr = decode_request(RegisterRequest, req)
        if isinstance(rr, Response):
            return rr
        if rr.NodeKey is None:
            return self._error("node key is required")
        hostinfo = sanitize_hostinfo(raw_field(req.body, "Hostinfo")) or {}
        try:
            resp = await self._register(req.machine_key, rr, rr.NodeKey, hostinfo)
        except NodeBindingError:
            return Response.text(401, "node exists with a different machine key\n")
        except models.StateError as exc:
            resp = RegisterResponse(Error=str(exc))
        return Response.json_bytes(dumps(resp))

    def _error(self, msg: str) -> Response:
        return Response.json_bytes(dumps(RegisterResponse(Error=msg)))

    async def _register(
        self, mkey: MachinePublic, rr: RegisterRequest, nkey: NodePublic, hostinfo: dict[str, Any]
    ) -> RegisterResponse:
        now = self.clock()
        node = lookup_node(self.state, mkey, nkey)
        if rr.Followup:
            return await self._followup(mkey, rr, nkey, hostinfo)
        if rr.Expiry is not None and rr.Expiry <= now:
            if node is None:
                return RegisterResponse(NodeKeyExpired=True)
            after = self.state.logout(node.id)
            return self._success(after or node, expired=True)
        if rr.Expiry is not None and node is not None:
            if node.expiry is None or rr.Expiry > node.expiry:
                return RegisterResponse(Error="extending key is not allowed")
            node = self.state.expire_node(node.id, at=rr.Expiry)
            return self._success(node)
        if rr.Auth is not None and rr.Auth.AuthKey:
            node = self.state.register_with_preauth_key(
                rr.Auth.AuthKey, mkey, nkey, hostinfo, ephemeral=rr.Ephemeral
            )
            return self._success(node)
        if node is not None:
            if node.is_expired(now):
                return RegisterResponse(NodeKeyExpired=True, User=self._user(node)[0],
                                        Login=self._user(node)[1])  # fmt: skip
            return self._success(node)
        existing = self.state.get_node_by_machine_key(mkey)
        if (
            existing is not None
            and rr.OldNodeKey is not None
            and existing.node_key == rr.OldNodeKey
            and not existing.is_expired(now)
        ):
            node = self.state.register_node(
                mkey, nkey, existing.user_id, hostinfo, method=existing.register_method,
                auth_key_id=existing.auth_key_id, ephemeral=existing.ephemeral,
                tags=existing.tags,
            )  # fmt: skip
            return self._success(node)
        reg = self.state.begin_registration(mkey, nkey, hostinfo, ephemeral=rr.Ephemeral)
        return RegisterResponse(AuthURL=self.auth_url(reg.id))

    def auth_url(self, reg_id: str) -> str:
        return f"{self.server_url}{REGISTER_PATH}{reg_id}"

    async def _followup(
        self, mkey: MachinePublic, rr: RegisterRequest, nkey: NodePublic, hostinfo: dict[str, Any]
    ) -> RegisterResponse:
        reg_id = rr.Followup.rsplit("/", 1)[-1]
        reg = self.state.get_registration(reg_id)
        # The followup must come from the machine that started it (Headscale PR #3393).
        if reg is None or reg.machine_key != mkey or reg.node_key != nkey:
            done = lookup_node(self.state, mkey, nkey)
            if reg is None and done is not None and not done.is_expired(self.clock()):
                return self._success(done)  # completed before this followup arrived
            new = self.state.begin_registration(mkey, nkey, hostinfo, ephemeral=rr.Ephemeral)
            return RegisterResponse(AuthURL=self.auth_url(new.id))
        try:
            node = await reg.wait()
        except models.RegistrationFailed as exc:
            return RegisterResponse(Error=str(exc))
        except asyncio.CancelledError:
            raise
        return self._success(node)

    def _user(self, node: models.Node) -> tuple[User, Login]:
        try:
            u = self.state.get_user(node.user_id)
        except models.NotFound:
            return User(ID=int(node.user_id)), Login(ID=int(node.user_id))
        user = User(ID=int(u.id), DisplayName=u.display_name or u.name, Created=u.created_at)
        login = Login(ID=int(u.id), LoginName=u.login_name, DisplayName=u.display_name or u.name)
        return user, login

    def _success(self, node: models.Node, expired: bool = False) -> RegisterResponse:
        user, login = self._user(node)
        expired = expired or node.is_expired(self.clock())
        return RegisterResponse(
            User=user, Login=login, NodeKeyExpired=expired, MachineAuthorized=not expired
        )


def register_page(state: StateReader) -> Callable[[Request], Awaitable[Response]]:
    """``GET /register/<id>``: tells the admin the command that admits the node."""

    async def page(req: Request) -> Response:
        reg_id = req.path[len(REGISTER_PATH) :]
        reg = state.get_registration(reg_id) if reg_id else None
        if reg is None:
            return Response.text(404, "unknown or expired registration\n")
        rid = html.escape(reg_id)
        host = html.escape(str(reg.hostinfo.get("Hostname") or "this machine"))
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>meshscale: register "
            f"node</title></head><body><h1>Register {host}</h1><p>Ask an administrator "
            "of this meshscale server to run:</p><pre>meshscale-control nodes register "
            f"--user USERNAME --key {rid}</pre><p>Machine key: <code>"
            f"{html.escape(reg.machine_key.text())}</code></p></body></html>\n"
        )
        return Response(200, body.encode(), [], "text/html; charset=utf-8")

    return page
