"""JSON shapes of the REST API, as Headscale's /api/v1 (protojson conventions).

protojson: 64-bit ids are decimal *strings*, field names lowerCamelCase, timestamps RFC
3339 UTC, zero values emitted (``null`` for an absent timestamp or message).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshscale.control.models import APIKey, Node, PreAuthKey, RegisterMethod, User, UserID
from meshscale.control.state import State

_REGISTER_METHOD = {
    RegisterMethod.AUTH_KEY: "REGISTER_METHOD_AUTH_KEY",
    RegisterMethod.CLI: "REGISTER_METHOD_CLI",
    RegisterMethod.OIDC: "REGISTER_METHOD_OIDC",
}


def ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    # protojson trims trailing zero fractions; a whole second has none.
    text = text.replace("+00:00", "Z")
    return text.replace(".000000Z", "Z")


def parse_ts(text: str) -> datetime:
    """RFC 3339 (``Z`` or an offset). Raises ValueError."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text[:40]!r} has no time zone")
    return parsed.astimezone(UTC)


def user_json(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {
        "id": str(user.id),
        "name": user.name,
        "createdAt": ts(user.created_at),
        "displayName": user.display_name,
        "email": user.email,
        "providerId": user.provider_id or "",
        "provider": "oidc" if user.provider_id else "",
        "profilePicUrl": "",
        "tailnetId": str(user.tailnet_id),
    }


def preauth_key_json(key: PreAuthKey, state: State, full_key: str | None = None) -> dict[str, Any]:
    return {
        "user": user_json(_user_or_none(state, key.user_id)),
        "id": str(key.id),
        "key": full_key if full_key is not None else key.display(),
        "reusable": key.reusable,
        "ephemeral": key.ephemeral,
        "used": key.used,
        "expiration": ts(key.expiration),
        "createdAt": ts(key.created_at),
        "aclTags": list(key.tags),
    }


def api_key_json(key: APIKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "prefix": key.prefix,
        "expiration": ts(key.expiration),
        "createdAt": ts(key.created_at),
        "lastSeen": ts(key.last_seen),
        "tailnetId": None if key.tailnet_id is None else str(key.tailnet_id),
    }


def node_json(node: Node, state: State) -> dict[str, Any]:
    pak = None
    if node.auth_key_id is not None:
        try:
            pak = preauth_key_json(state.get_preauth_key(node.auth_key_id), state)
        except ValueError:
            pak = None
    return {
        "id": str(node.id),
        "machineKey": node.machine_key.text(),
        "nodeKey": node.node_key.text(),
        "discoKey": node.disco_key.text() if node.disco_key else "",
        "ipAddresses": [str(a) for a in node.addresses()],
        "name": node.hostname,
        "user": user_json(_user_or_none(state, node.user_id)),
        "lastSeen": ts(node.last_seen),
        "expiry": ts(node.expiry),
        "preAuthKey": pak,
        "createdAt": ts(node.created_at),
        "registerMethod": _REGISTER_METHOD.get(node.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": node.given_name,
        "online": node.online,
        "approvedRoutes": [str(r) for r in node.approved_routes],
        "availableRoutes": [str(r) for r in node.announced_routes()],
        "subnetRoutes": [str(r) for r in (*node.primary_routes(), *node.exit_routes())],
        "tags": list(node.tags),
        "ephemeral": node.ephemeral,
    }


def _user_or_none(state: State, user_id: UserID) -> User | None:
    try:
        return state.get_user(user_id)
    except ValueError:
        return None
