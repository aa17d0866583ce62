"""``POST /machine/register`` (spec section 3), and the ``/register/<id>`` page.

Decision order for a RegisterRequest from the Noise peer ``M`` (machine key)::

    capver < 113                              -> HTTP 400 "unsupported client"
    NodeKey bound to another machine          -> HTTP 401 (spec 3.7, Headscale PR #1058)
    Followup set                              -> wait for the admin (long poll), or a new AuthURL
    Expiry set and in the past (logout)       -> expire the node (ephemeral: delete)   [before Auth]
    Expiry in the future on a known node      -> may only shorten
    Auth.AuthKey                              -> pre-auth key path (State consumes atomically)
    NodeKey known for M, not expired          -> current state (restart fast path)
    NodeKey known for M, expired              -> NodeKeyExpired: the client rotates its key
    M known, OldNodeKey == its current key    -> node-key rotation, same node
    otherwise                                 -> interactive: AuthURL <server_url>/register/<id>

User-facing failures are HTTP 200 with ``Error`` set (spec 3.8).
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from meshscale.control import models
from meshscale.controlhttp import NoiseRequest
from meshscale.io.http import Request, Response
from meshscale.io.http import Response as NoiseResponse
from meshscale.key import MachinePublic, NodePublic
from meshscale.tailcfg import (
    MIN_SUPPORTED_CAPABILITY_VERSION,
    Hostinfo,
    Login,
    ParseError,
    RegisterRequest,
    RegisterResponse,
    User,
    dumps,
    from_json,
    loads,
    to_json,
)

REGISTER_PATH = "/register/"
MAX_ROUTES = 1024  # RoutableIPs kept per Hostinfo: a client announcing endless routes


class NodeBindingError(Exception):
    """The NodeKey belongs to a different machine key than the Noise peer."""


def lookup_node(state: Any, machine_key: MachinePublic, node_key: NodePublic) -> models.Node | None:
    """The node ``node_key`` names, checked against the Noise peer (spec 3.7 and 7.2)."""
    node: models.Node | None = state.get_node_by_node_key(node_key)
    if node is not None and node.machine_key != machine_key:
        raise NodeBindingError("node key is bound to a different machine key")
    return node


def raw_field(body: bytes, name: str) -> Any:
    """One top-level field of a JSON object body, as raw JSON values (Go matches keys
    case-insensitively). Hostinfo is stored raw so peers see every field the client sent."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lname = name.lower()
    for k, v in data.items():
        if k.lower() == lname:
            return v
    return None


def valid_addrport(text: str) -> bool:
    """Go's netip.ParseAddrPort accepts it: ``1.2.3.4:5`` or ``[v6]:5`` (no zone checks)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1].split("%", 1)[0]
        version = 6
    else:
        version = 4
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def _valid_prefix(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def sanitize_hostinfo(raw: Any) -> dict[str, Any] | None:
    """The client's Hostinfo as we store it and show it to peers.

    It goes through the typed tailcfg.Hostinfo, so every field a peer's decoder reads has
    the right type (a bad value would make every peer's netmap fail to decode), fields we do
    not model are dropped, and RoutableIPs keeps only valid prefixes.
    """
    if not isinstance(raw, dict):
        return None
    try:
        hi = from_json(Hostinfo, raw)
    except ParseError:
        return None
    hi.TPM = None
    if hi.NetInfo is not None:
        # Latencies change on every netcheck; peers do not use them, and storing them would
        # turn each netcheck into a fan-out to every peer.
        hi.NetInfo.DERPLatency = {}
    hi.Services = [sv for sv in hi.Services if 0 <= sv.Port <= 0xFFFF][:MAX_ROUTES]  # uint16
    hi.RoutableIPs = [p for p in hi.RoutableIPs if _valid_prefix(p)][:MAX_ROUTES]
    return to_json(hi)


def unsupported(version: int) -> NoiseResponse | None:
    if version < MIN_SUPPORTED_CAPABILITY_VERSION:
        return NoiseResponse.text(400, f"unsupported client capability version {version}\n")
    return None


class RegisterHandler:
    """Serves /machine/register over Noise.

    Parameters:
      state: the State.
      server_url: base of the AuthURL (``https://control.example``).
      clock: wall-clock UTC datetime.
    """

    def __init__(self, state: Any, server_url: str, clock: Callable[[], datetime]) -> None:
        self.state = state
        self.server_url = server_url.rstrip("/")
        self.clock = clock

    async def __call__(self, req: NoiseRequest) -> NoiseResponse:
        try:
            rr = loads(RegisterRequest, req.body)
        except ParseError as exc:
            return NoiseResponse.text(400, f"bad RegisterRequest: {exc}\n")
        bad = unsupported(rr.Version)
        if bad is not None:
            return bad
        if rr.NodeKey is None:
            return self._error("node key is required")
        hostinfo = sanitize_hostinfo(raw_field(req.body, "Hostinfo")) or {}
        try:
            resp = await self._register(req.machine_key, rr, rr.NodeKey, hostinfo)
        except NodeBindingError:
            return NoiseResponse.text(401, "node exists with a different machine key\n")
        except models.StateError as exc:
            resp = RegisterResponse(Error=str(exc))
        return NoiseResponse.json_bytes(dumps(resp))

    def _error(self, msg: str) -> NoiseResponse:
        return NoiseResponse.json_bytes(dumps(RegisterResponse(Error=msg)))

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
        existing: models.Node | None = self.state.get_node_by_machine_key(mkey)
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
            u: models.User = self.state.get_user(node.user_id)
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


def register_page(state: Any) -> Callable[[Request], Any]:
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
