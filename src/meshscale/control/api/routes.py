"""The /api/v1 operations: one function per route, over State.

Paths, methods and JSON fields follow Headscale's v1 API where the operation exists
(``GET /api/v1/node``, ``POST /api/v1/preauthkey``, ...). Each handler takes a
:class:`Call` and returns the JSON body; errors are StateError subclasses (mapped to
status codes by :mod:`meshscale.control.api.server`) or :class:`BadRequest`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshscale.control.api.serialize import (
    api_key_json,
    node_json,
    parse_ts,
    preauth_key_json,
    ts,
    user_json,
)
from meshscale.control.models import (
    PREAUTH_KEY_PREFIX,
    InvalidArgument,
    Node,
    NodeID,
    NotFound,
    PreAuthKeyID,
    TailnetID,
    User,
    UserID,
)
from meshscale.control.state import State
from meshscale.policy.checks import admits


class BadRequest(InvalidArgument):
    """A request parameter or body field is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Call:
    state: State
    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]
    policy_writable: bool = True  # False with policy.mode: file (the file is the source)


Handler = Callable[[Call], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # with {param} segments
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    response: str  # the schema name of the response body (see openapi.py)
    body: dict[str, str] = field(default_factory=dict)  # request field -> schema type
    query: tuple[str, ...] = ()
    public: bool = False  # no API key needed (health and the OpenAPI document)
    max_body: int = 0  # bytes of request body accepted (0: the API default)


# ---- helpers ------------------------------------------------------------------------------


def _id(text: str | None, what: str) -> int:
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise BadRequest(f"invalid {what}: want a decimal id, got {str(text)[:30]!r}")
    return int(text)


def _user(state: State, ref: str | None, tailnet: TailnetID | None = None) -> User:
    """A user by id (digits) or by name (in ``tailnet``, else in the one tailnet that
    has a user of that name)."""
    if not ref:
        raise BadRequest("missing user")
    if ref.isdigit():
        user = state.get_user(UserID(int(ref)))
        if tailnet is not None and user.tailnet_id != tailnet:
            raise NotFound(f"user {ref} not found in that tailnet")
        return user
    return state.get_user_by_name(ref, tailnet)


def _tailnet(c: Call, where: dict[str, Any] | None = None) -> TailnetID | None:
    """The ``tailnet`` parameter (a name; from the query, or ``where``): None if absent."""
    raw = (c.query if where is None else where).get("tailnet")
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadRequest("tailnet: want a tailnet name")
    return c.state.get_tailnet_by_name(raw).id


def _policy_tailnet(c: Call) -> TailnetID:
    """The tailnet a policy call is about: ``?tailnet=NAME``, else the default one (for a
    tailnet-scoped key: its own)."""
    found = _tailnet(c)
    if found is not None:
        return found
    return c.state.list_tailnets()[0].id


def _str(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"{key}: want a string")
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key}: want true or false")
    return value


def _strs(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key}: want a list of strings")
    return value


def _time(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key}: want an RFC 3339 timestamp")
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise BadRequest(f"{key}: {exc}") from exc


# ---- handlers -----------------------------------------------------------------------------


def health(c: Call) -> dict[str, Any]:
    c.state.list_users()
    return {"databaseConnectivity": True}


def list_users(c: Call) -> dict[str, Any]:
    users = c.state.list_users(_tailnet(c))
    if c.query.get("id"):
        uid = _id(c.query["id"], "id")
        users = [u for u in users if u.id == uid]
    if c.query.get("name"):
        users = [u for u in users if u.name == c.query["name"]]
    if c.query.get("email"):
        users = [u for u in users if u.email == c.query["email"]]
    return {"users": [user_json(u) for u in users]}


def create_user(c: Call) -> dict[str, Any]:
    tailnet = _tailnet(c, c.body)
    user = c.state.create_user(
        _str(c.body, "name"),
        display_name=_str(c.body, "displayName"),
        email=_str(c.body, "email"),
        tailnet=_policy_tailnet(c) if tailnet is None else tailnet,
    )
    return {"user": user_json(user)}


def rename_user(c: Call) -> dict[str, Any]:
    user = c.state.rename_user(UserID(_id(c.params["oldId"], "user id")), c.params["newName"])
    return {"user": user_json(user)}


def delete_user(c: Call) -> dict[str, Any]:
    c.state.delete_user(UserID(_id(c.params["id"], "user id")))
    return {}


def list_nodes(c: Call) -> dict[str, Any]:
    ref = c.query.get("user")
    tailnet = _tailnet(c)
    uid = _user(c.state, ref, tailnet).id if ref else None
    return {"nodes": [node_json(n, c.state) for n in c.state.list_nodes(uid, tailnet)]}


def _node_id(c: Call) -> NodeID:
    return NodeID(_id(c.params["nodeId"], "node id"))


def get_node(c: Call) -> dict[str, Any]:
    return {"node": node_json(c.state.get_node(_node_id(c)), c.state)}


def delete_node(c: Call) -> dict[str, Any]:
    c.state.delete_node(_node_id(c))
    return {}


def expire_node(c: Call) -> dict[str, Any]:
    if _bool(c.body, "disableExpiry"):
        node = c.state.set_expiry(_node_id(c), None)
    else:
        node = c.state.expire_node(_node_id(c), _time(c.body, "expiry"))
    return {"node": node_json(node, c.state)}


def backfill_node_ips(c: Call) -> dict[str, Any]:
    """Headscale's POST /api/v1/node/backfillips?confirmed=true (it changes addresses)."""
    if c.query.get("confirmed") not in ("true", "1"):
        raise BadRequest("backfilling addresses must be confirmed (?confirmed=true)")
    return {"changes": c.state.backfill_ips()}


def rename_node(c: Call) -> dict[str, Any]:
    node = c.state.rename_node(_node_id(c), c.params["newName"])
    return {"node": node_json(node, c.state)}


def set_tags(c: Call) -> dict[str, Any]:
    node = c.state.set_tags(_node_id(c), _strs(c.body, "tags"))
    return {"node": node_json(node, c.state)}


def approve_routes(c: Call) -> dict[str, Any]:
    node = c.state.approve_routes(_node_id(c), _strs(c.body, "routes"))
    # Re-read: the HA election ran at commit and may have made this node primary.
    return {"node": node_json(c.state.get_node(node.id), c.state)}


def move_node(c: Call) -> dict[str, Any]:
    user = _user(c.state, _str(c.body, "user"))
    node = c.state.move_node(_node_id(c), user.id)
    return {"node": node_json(node, c.state)}


def register_node(c: Call) -> dict[str, Any]:
    user = _user(c.state, c.query.get("user"))
    key = c.query.get("key", "")
    if not key:
        raise BadRequest("missing key (the registration id from the AuthURL)")
    node = c.state.complete_registration(key.rsplit("/", 1)[-1], user.id)
    return {"node": node_json(node, c.state)}


def reject_registration(c: Call) -> dict[str, Any]:
    key = c.query.get("key", "")
    if not key:
        raise BadRequest("missing key (the registration id from the AuthURL)")
    c.state.cancel_registration(key.rsplit("/", 1)[-1])
    return {}


def list_registrations(c: Call) -> dict[str, Any]:
    return {
        "registrations": [
            {
                "id": r.id,
                "nodeKey": r.node_key.text(),
                "machineKey": r.machine_key.text(),
                "hostname": str(r.hostinfo.get("Hostname") or ""),
                "expiration": ts(r.expires_at),
            }
            for r in c.state.list_registrations()
        ]
    }


def list_preauth_keys(c: Call) -> dict[str, Any]:
    ref = c.query.get("user")
    tailnet = _tailnet(c)
    uid = _user(c.state, ref, tailnet).id if ref else None
    keys = c.state.list_preauth_keys(uid, tailnet)
    return {"preAuthKeys": [preauth_key_json(k, c.state) for k in keys]}


def create_preauth_key(c: Call) -> dict[str, Any]:
    # The key admits nodes into the user's tailnet; "tailnet" only picks the user.
    user = _user(c.state, _str(c.body, "user"), _tailnet(c, c.body))
    new = c.state.create_preauth_key(
        user.id,
        reusable=_bool(c.body, "reusable"),
        ephemeral=_bool(c.body, "ephemeral"),
        expiration=_time(c.body, "expiration"),
        tags=_strs(c.body, "aclTags"),
    )
    return {"preAuthKey": preauth_key_json(new.key, c.state, full_key=new.secret)}


def _preauth_key_id(c: Call, body: dict[str, Any]) -> PreAuthKeyID:
    if body.get("id"):
        return PreAuthKeyID(_id(str(body["id"]), "id"))
    text = _str(body, "key")
    prefix = text.removeprefix(PREAUTH_KEY_PREFIX)[:12]
    for key in c.state.list_preauth_keys():
        if key.prefix == prefix and prefix:
            return key.id
    raise NotFound("pre-auth key not found")


def expire_preauth_key(c: Call) -> dict[str, Any]:
    c.state.expire_preauth_key(_preauth_key_id(c, c.body))
    return {}


def delete_preauth_key(c: Call) -> dict[str, Any]:
    c.state.delete_preauth_key(_preauth_key_id(c, dict(c.query)))
    return {}


def list_api_keys(c: Call) -> dict[str, Any]:
    return {"apiKeys": [api_key_json(k) for k in c.state.list_api_keys(_tailnet(c))]}


def create_api_key(c: Call) -> dict[str, Any]:
    """``tailnet``: a key scoped to that tailnet (a scoped caller's keys are always
    scoped to its own); none: a server admin key."""
    key = c.state.create_api_key(_time(c.body, "expiration"), _tailnet(c, c.body))
    return {"apiKey": key.secret}


def _api_key_ref(body: dict[str, Any]) -> Any:
    if body.get("id"):
        return _id(str(body["id"]), "id")
    prefix = _str(body, "prefix")
    if not prefix:
        raise BadRequest("missing prefix or id")
    return prefix


def expire_api_key(c: Call) -> dict[str, Any]:
    c.state.expire_api_key(_api_key_ref(c.body))
    return {}


def delete_api_key(c: Call) -> dict[str, Any]:
    c.state.delete_api_key(c.params["prefix"])
    return {}


def _policy_json(c: Call) -> dict[str, Any]:
    tailnet = _policy_tailnet(c)
    v = c.state.policy_version_of(tailnet)
    return {
        "policy": c.state.policy_of(tailnet) or "",
        "updatedAt": ts(v.created_at) if v else None,
        "version": v.version if v else None,
    }


def get_policy(c: Call) -> dict[str, Any]:
    return _policy_json(c)


def _writable(c: Call) -> None:
    if not c.policy_writable:
        raise BadRequest(
            "policy.mode is file: edit the policy file (it is reloaded on change and on SIGHUP)"
        )


def set_policy(c: Call) -> dict[str, Any]:
    _writable(c)
    c.state.set_policy(_str(c.body, "policy"), "api", _policy_tailnet(c))
    return _policy_json(c)


_AT = re.compile(r" at (\d+):(\d+)")


def check_policy(c: Call) -> dict[str, Any]:
    """Validate without applying: 200 either way, the errors (with line and column where
    the message names them) in the body; ``tests`` run against today's nodes."""
    try:
        warnings = c.state.check_policy(_str(c.body, "policy"), _policy_tailnet(c))
    except BadRequest:
        raise
    except InvalidArgument as exc:
        msg = str(exc).removeprefix("policy: ")
        m = _AT.search(msg)
        err: dict[str, Any] = {
            "message": msg,
            "line": int(m[1]) if m else None,
            "column": int(m[2]) if m else None,
        }
        return {"valid": False, "errors": [err], "warnings": []}
    return {"valid": True, "errors": [], "warnings": warnings}


def policy_history(c: Call) -> dict[str, Any]:
    limit = _id(c.query["limit"], "limit") if c.query.get("limit") else 100
    return {
        "versions": [
            {
                "version": v.version,
                "policy": v.data,
                "updatedAt": ts(v.created_at),
                "source": v.source,
            }
            for v in c.state.policy_history(min(limit, 1000), _policy_tailnet(c))
        ]
    }


def rollback_policy(c: Call) -> dict[str, Any]:
    _writable(c)
    raw = c.body.get("version")
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadRequest("version: want a version number")
    c.state.rollback_policy(_id(str(raw), "version"), _policy_tailnet(c))
    return _policy_json(c)


_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132}


def _node_ref(c: Call, ref: str, what: str) -> Node:
    """A node by id, MagicDNS name or tailnet address."""
    ref = ref.strip()
    if not ref:
        raise BadRequest(f"missing {what}")
    for n in c.state.list_nodes():
        if ref in (str(n.id), n.given_name, *(str(a) for a in n.addresses())):
            return n
    raise NotFound(f"{what}: no machine {ref[:60]!r}")


def check_reach(c: Call) -> dict[str, Any]:
    """Whether the policy in force lets machine ``src`` open a connection to ``dst`` on
    ``port`` (``proto`` tcp by default): ``dst``'s packet filter is what decides."""
    src = _node_ref(c, c.query.get("src", ""), "src")
    dst = _node_ref(c, c.query.get("dst", ""), "dst")
    port = _id(c.query.get("port"), "port")
    proto = _PROTOS.get(c.query.get("proto", "tcp").lower())
    if proto is None or port > 65535:
        raise BadRequest("want proto tcp, udp, icmp or sctp and a port 0-65535")
    rules = list(c.state.packet_filter(dst.id))
    local = dst.addresses()
    allowed = any(
        admits(rules, s, d, proto, port, local)
        for s in src.addresses() for d in local if s.version == d.version
    )  # fmt: skip
    return {"allowed": allowed, "src": src.given_name, "dst": dst.given_name, "port": port,
            "proto": c.query.get("proto", "tcp").lower()}  # fmt: skip


def list_audit(c: Call) -> dict[str, Any]:
    before = c.query.get("before")
    limit = c.query.get("limit") or "100"
    entries = c.state.audit.list(
        limit=_id(limit, "limit"), before=_id(before, "before") if before else None,
        actor=c.query.get("actor", ""), action=c.query.get("action", ""),
    )  # fmt: skip
    return {"entries": [
        {"id": str(e.id), "at": ts(e.at), "actor": e.actor, "action": e.action,
         "target": e.target, "detail": e.detail, "source": e.source}
        for e in entries
    ]}  # fmt: skip


def _r(method: str, path: str, op: str, summary: str, tag: str, handler: Handler,
       response: str, *, body: dict[str, str] | None = None, query: tuple[str, ...] = (),
       public: bool = False, max_body: int = 0) -> Route:  # fmt: skip
    return Route(method, path, op, summary, tag, handler, response, body or {}, query, public,
                 max_body)  # fmt: skip


POLICY_BODY = 1024 * 1024  # a policy text may be up to 1 MiB (policy/hujson.py MAX_BYTES)


V1 = "/api/v1"
ROUTES: tuple[Route, ...] = (
    _r("GET", f"{V1}/health", "health", "Health check", "Health", health, "Health", public=True),
    _r(
        "GET",
        f"{V1}/user",
        "listUsers",
        "List users",
        "Users",
        list_users,
        "UserList",
        query=("id", "name", "email", "tailnet"),
    ),
    _r(
        "POST",
        f"{V1}/user",
        "createUser",
        "Create user",
        "Users",
        create_user,
        "UserOne",
        body={
            "name": "string",
            "displayName": "string",
            "email": "string",
            "pictureUrl": "string",
            "tailnet": "string",
        },
    ),
    _r(
        "POST",
        f"{V1}/user/{{oldId}}/rename/{{newName}}",
        "renameUser",
        "Rename user",
        "Users",
        rename_user,
        "UserOne",
    ),
    _r("DELETE", f"{V1}/user/{{id}}", "deleteUser", "Delete user", "Users", delete_user, "Empty"),
    _r(
        "GET",
        f"{V1}/node",
        "listNodes",
        "List nodes",
        "Nodes",
        list_nodes,
        "NodeList",
        query=("user", "tailnet"),
    ),
    _r(
        "POST",
        f"{V1}/node/backfillips",
        "backfillNodeIPs",
        "Backfill missing node addresses",
        "Nodes",
        backfill_node_ips,
        "BackfillNodeIPs",
        query=("confirmed",),
    ),
    _r("GET", f"{V1}/node/{{nodeId}}", "getNode", "Get node", "Nodes", get_node, "NodeOne"),
    _r(
        "DELETE",
        f"{V1}/node/{{nodeId}}",
        "deleteNode",
        "Delete node",
        "Nodes",
        delete_node,
        "Empty",
    ),
    _r(
        "POST",
        f"{V1}/node/{{nodeId}}/expire",
        "expireNode",
        "Expire node",
        "Nodes",
        expire_node,
        "NodeOne",
        body={"expiry": "timestamp", "disableExpiry": "boolean"},
    ),
    _r(
        "POST",
        f"{V1}/node/{{nodeId}}/rename/{{newName}}",
        "renameNode",
        "Rename node",
        "Nodes",
        rename_node,
        "NodeOne",
    ),
    _r(
        "POST",
        f"{V1}/node/{{nodeId}}/tags",
        "setTags",
        "Set tags",
        "Nodes",
        set_tags,
        "NodeOne",
        body={"tags": "strings"},
    ),
    _r(
        "POST",
        f"{V1}/node/{{nodeId}}/approve_routes",
        "setApprovedRoutes",
        "Approve routes",
        "Nodes",
        approve_routes,
        "NodeOne",
        body={"routes": "strings"},
    ),
    _r(
        "POST",
        f"{V1}/node/{{nodeId}}/user",
        "moveNode",
        "Move node to a user",
        "Nodes",
        move_node,
        "NodeOne",
        body={"user": "string"},
    ),
    _r(
        "POST",
        f"{V1}/node/register",
        "registerNode",
        "Complete a pending registration",
        "Nodes",
        register_node,
        "NodeOne",
        query=("user", "key"),
    ),
    _r(
        "POST",
        f"{V1}/registration/reject",
        "rejectRegistration",
        "Reject a pending registration",
        "Nodes",
        reject_registration,
        "Empty",
        query=("key",),
    ),
    _r(
        "GET",
        f"{V1}/registration",
        "listRegistrations",
        "List pending registrations",
        "Nodes",
        list_registrations,
        "RegistrationList",
    ),
    _r(
        "GET",
        f"{V1}/preauthkey",
        "listPreAuthKeys",
        "List pre-auth keys",
        "PreAuthKeys",
        list_preauth_keys,
        "PreAuthKeyList",
        query=("user", "tailnet"),
    ),
    _r(
        "POST",
        f"{V1}/preauthkey",
        "createPreAuthKey",
        "Create pre-auth key",
        "PreAuthKeys",
        create_preauth_key,
        "PreAuthKeyOne",
        body={
            "user": "string",
            "reusable": "boolean",
            "ephemeral": "boolean",
            "expiration": "timestamp",
            "aclTags": "strings",
            "tailnet": "string",
        },
    ),
    _r(
        "POST",
        f"{V1}/preauthkey/expire",
        "expirePreAuthKey",
        "Expire pre-auth key",
        "PreAuthKeys",
        expire_preauth_key,
        "Empty",
        body={"id": "string", "key": "string"},
    ),
    _r(
        "DELETE",
        f"{V1}/preauthkey",
        "deletePreAuthKey",
        "Delete pre-auth key",
        "PreAuthKeys",
        delete_preauth_key,
        "Empty",
        query=("id", "key"),
    ),
    _r(
        "GET",
        f"{V1}/apikey",
        "listApiKeys",
        "List API keys",
        "ApiKeys",
        list_api_keys,
        "ApiKeyList",
        query=("tailnet",),
    ),
    _r(
        "POST",
        f"{V1}/apikey",
        "createApiKey",
        "Create API key",
        "ApiKeys",
        create_api_key,
        "ApiKeyCreated",
        body={"expiration": "timestamp", "tailnet": "string"},
    ),
    _r(
        "POST",
        f"{V1}/apikey/expire",
        "expireApiKey",
        "Expire API key",
        "ApiKeys",
        expire_api_key,
        "Empty",
        body={"prefix": "string", "id": "string"},
    ),
    _r(
        "DELETE",
        f"{V1}/apikey/{{prefix}}",
        "deleteApiKey",
        "Delete API key",
        "ApiKeys",
        delete_api_key,
        "Empty",
    ),
    _r(
        "GET",
        f"{V1}/policy",
        "getPolicy",
        "Get policy",
        "Policy",
        get_policy,
        "Policy",
        query=("tailnet",),
    ),
    _r(
        "PUT",
        f"{V1}/policy",
        "setPolicy",
        "Set policy",
        "Policy",
        set_policy,
        "Policy",
        body={"policy": "string"},
        query=("tailnet",),
        max_body=POLICY_BODY,
    ),
    _r(
        "POST",
        f"{V1}/policy/check",
        "checkPolicy",
        "Check a policy without applying it",
        "Policy",
        check_policy,
        "PolicyCheck",
        body={"policy": "string"},
        query=("tailnet",),
        max_body=POLICY_BODY,
    ),
    _r(
        "GET",
        f"{V1}/policy/history",
        "listPolicyVersions",
        "List accepted policy versions",
        "Policy",
        policy_history,
        "PolicyHistory",
        query=("limit", "tailnet"),
    ),
    _r(
        "POST",
        f"{V1}/policy/rollback",
        "rollbackPolicy",
        "Put an earlier policy version back in force (as a new version)",
        "Policy",
        rollback_policy,
        "Policy",
        body={"version": "integer"},
        query=("tailnet",),
    ),
    _r(
        "GET",
        f"{V1}/policy/reach",
        "checkReach",
        "Can machine src reach machine dst on a port under the policy in force?",
        "Policy",
        check_reach,
        "Reach",
        query=("src", "dst", "port", "proto"),
    ),
    _r(
        "GET",
        f"{V1}/audit",
        "listAudit",
        "List the audit log of admin changes, newest first",
        "Audit",
        list_audit,
        "AuditList",
        query=("limit", "before", "actor", "action"),
    ),
)
