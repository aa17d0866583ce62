"""Row <-> model conversion shared by every store (the column forms of schema.sql).

Timestamps are RFC 3339 UTC text with microseconds, booleans 0/1, keys their
``prefix:hex`` text, lists and Hostinfo JSON text. A row this code cannot read raises
:class:`~meshscale.control.db.repository.StoreError` naming the table and id.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from meshscale.control.db.repository import StoreError
from meshscale.control.models import (
    APIKey,
    APIKeyID,
    Node,
    NodeID,
    PreAuthKey,
    PreAuthKeyID,
    RegisterMethod,
    Tailnet,
    TailnetID,
    User,
    UserID,
)
from meshscale.key import DiscoPublic, MachinePublic, NodePublic

Row = Mapping[str, Any]


def ts_to_db(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime: all control-state times are UTC-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts_from_db(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_list(value: str | None) -> list[Any]:
    data = json.loads(value or "[]")
    if not isinstance(data, list):
        raise ValueError("expected a JSON list")
    return data


def user_from_row(row: Row) -> User:
    try:
        return User(
            id=UserID(int(row["id"])),
            name=str(row["name"]),
            display_name=str(row["display_name"] or ""),
            email=str(row["email"] or ""),
            provider_id=row["provider_id"],
            created_at=ts_from_db(row["created_at"]),
            oidc_issuer=row["oidc_issuer"],
            oidc_subject=row["oidc_subject"],
            groups=tuple(str(g) for g in _json_list(row["idp_groups"])),
            tailnet_id=TailnetID(int(row["tailnet_id"])),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"users row {row['id']}: {exc}") from exc


def user_to_row(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "display_name": user.display_name,
        "email": user.email,
        "provider_id": user.provider_id,
        "created_at": ts_to_db(user.created_at),
        "oidc_issuer": user.oidc_issuer,
        "oidc_subject": user.oidc_subject,
        "idp_groups": json.dumps(list(user.groups)),
        "tailnet_id": user.tailnet_id,
    }


def node_from_row(row: Row) -> Node:
    try:
        hostinfo = json.loads(row["host_info"] or "{}")
        if not isinstance(hostinfo, dict):
            raise ValueError("host_info is not a JSON object")
        ipv4 = ipaddress.IPv4Address(row["ipv4"]) if row["ipv4"] else None
        ipv6 = ipaddress.IPv6Address(row["ipv6"]) if row["ipv6"] else None
        return Node(
            id=NodeID(int(row["id"])),
            machine_key=MachinePublic.from_text(row["machine_key"]),
            node_key=NodePublic.from_text(row["node_key"]),
            disco_key=DiscoPublic.from_text(row["disco_key"]) if row["disco_key"] else None,
            user_id=UserID(int(row["user_id"])),
            hostname=str(row["hostname"]),
            given_name=str(row["given_name"]),
            ipv4=ipv4,
            ipv6=ipv6,
            hostinfo=hostinfo,
            endpoints=tuple(str(e) for e in _json_list(row["endpoints"])),
            last_seen=ts_from_db(row["last_seen"]),
            expiry=ts_from_db(row["expiry"]),
            tags=tuple(str(t) for t in _json_list(row["tags"])),
            approved_routes=tuple(
                ipaddress.ip_network(str(r)) for r in _json_list(row["approved_routes"])
            ),
            register_method=RegisterMethod(row["register_method"]),
            auth_key_id=PreAuthKeyID(int(row["auth_key_id"])) if row["auth_key_id"] else None,
            ephemeral=bool(row["ephemeral"]),
            created_at=ts_from_db(row["created_at"]),
            tailnet_id=TailnetID(int(row["tailnet_id"])),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"nodes row {row['id']}: {exc}") from exc


def node_to_row(node: Node) -> dict[str, Any]:
    return {
        "machine_key": node.machine_key.text(),
        "node_key": node.node_key.text(),
        "disco_key": node.disco_key.text() if node.disco_key else None,
        "user_id": node.user_id,
        "hostname": node.hostname,
        "given_name": node.given_name,
        "ipv4": str(node.ipv4) if node.ipv4 else None,
        "ipv6": str(node.ipv6) if node.ipv6 else None,
        "host_info": json.dumps(node.hostinfo, sort_keys=True),
        "endpoints": json.dumps(list(node.endpoints)),
        "last_seen": ts_to_db(node.last_seen),
        "expiry": ts_to_db(node.expiry),
        "tags": json.dumps(list(node.tags)),
        "approved_routes": json.dumps([str(r) for r in node.approved_routes]),
        "register_method": node.register_method.value,
        "auth_key_id": node.auth_key_id,
        "ephemeral": int(node.ephemeral),
        "created_at": ts_to_db(node.created_at),
        "tailnet_id": node.tailnet_id,
    }


def preauth_key_from_row(row: Row) -> PreAuthKey:
    try:
        return PreAuthKey(
            id=PreAuthKeyID(int(row["id"])),
            user_id=UserID(int(row["user_id"])),
            prefix=str(row["prefix"]),
            hash=bytes(row["hash"]),
            reusable=bool(row["reusable"]),
            ephemeral=bool(row["ephemeral"]),
            used=bool(row["used"]),
            expiration=ts_from_db(row["expiration"]),
            tags=tuple(str(t) for t in _json_list(row["tags"])),
            created_at=ts_from_db(row["created_at"]),
            tailnet_id=TailnetID(int(row["tailnet_id"])),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"pre_auth_keys row {row['id']}: {exc}") from exc


def preauth_key_to_row(key: PreAuthKey) -> dict[str, Any]:
    return {
        "user_id": key.user_id,
        "prefix": key.prefix,
        "hash": key.hash,
        "reusable": int(key.reusable),
        "ephemeral": int(key.ephemeral),
        "used": int(key.used),
        "expiration": ts_to_db(key.expiration),
        "tags": json.dumps(list(key.tags)),
        "created_at": ts_to_db(key.created_at),
        "tailnet_id": key.tailnet_id,
    }


def api_key_from_row(row: Row) -> APIKey:
    try:
        return APIKey(
            id=APIKeyID(int(row["id"])),
            prefix=str(row["prefix"]),
            hash=bytes(row["hash"]),
            expiration=ts_from_db(row["expiration"]),
            last_seen=ts_from_db(row["last_seen"]),
            created_at=ts_from_db(row["created_at"]),
            tailnet_id=None if row["tailnet_id"] is None else TailnetID(int(row["tailnet_id"])),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"api_keys row {row['id']}: {exc}") from exc


def api_key_to_row(key: APIKey) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "hash": key.hash,
        "expiration": ts_to_db(key.expiration),
        "last_seen": ts_to_db(key.last_seen),
        "created_at": ts_to_db(key.created_at),
        "tailnet_id": key.tailnet_id,
    }


def tailnet_from_row(row: Row) -> Tailnet:
    try:
        return Tailnet(
            id=TailnetID(int(row["id"])),
            name=str(row["name"]),
            base_domain=None if row["base_domain"] is None else str(row["base_domain"]),
            created_at=ts_from_db(row["created_at"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"tailnets row {row['id']}: {exc}") from exc


def tailnet_to_row(tailnet: Tailnet) -> dict[str, Any]:
    return {
        "name": tailnet.name,
        "base_domain": tailnet.base_domain,
        "created_at": ts_to_db(tailnet.created_at),
    }
