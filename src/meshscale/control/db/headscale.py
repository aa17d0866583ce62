"""Import a Headscale SQLite database into an empty meshscale-control state.

Moving from Headscale without re-registering every device takes three things. Each node
must keep its machine key, node key and addresses, which this module imports. Clients
must see the same control key, so Headscale's ``noise_private.key`` is copied: its file
format, ``privkey:<hex>``, is ours too. And the server_url must stay the same. Then
clients reconnect as if the server had restarted.

What is imported:

- users: name, display name, email and provider identifier;
- nodes: keys, addresses, hostname, given name, Hostinfo, endpoints, tags, approved
  routes, expiry, last_seen and register method. A node is ephemeral when the pre-auth
  key that admitted it was. Tagged nodes without a user (Headscale >= 0.27) are given
  to a user called ``tagged-devices``, which is created when needed.

What is not imported:

- pre-auth keys and API keys: Headscale stores bcrypt hashes of secrets we never see;
- soft-deleted rows (``deleted_at`` set).

Headscale's schema facts come from its hscontrol/db/schema.sql. Headscale is read only
(``mode=ro``); the target must be empty.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from meshscale.control.models import NodeID, RegisterMethod, StateError, UserID
from meshscale.control.names import is_valid_label, unique_given_name
from meshscale.control.state import State
from meshscale.key import DiscoPublic, MachinePublic, NodePublic

TAGGED_DEVICES_USER: Final = "tagged-devices"  # Headscale's owner name for tagged nodes


class HeadscaleImportError(StateError):
    """The Headscale database cannot be imported; the message says why."""


@dataclass
class ImportReport:
    users: int = 0
    nodes: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per node not imported


def _ts(value: Any) -> datetime | None:
    """GORM's SQLite datetimes: ``2025-01-02 03:04:05.123456789+00:00`` and variants."""
    if value in (None, ""):
        return None
    text = str(value).strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go writes up to nine fractional digits; Python reads six.
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        rest = digits[:6].ljust(6, "0") + rest[len(digits) :]
        text = f"{head}.{rest}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed.year <= 1:  # Go's zero time: "no value"
        return None
    return parsed.astimezone(UTC)


def _json_list(value: Any) -> list[Any]:
    if value in (None, "", "null"):
        return []
    data = json.loads(value)
    return data if isinstance(data, list) else []


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}


def import_headscale(state: State, path: str | Path) -> ImportReport:
    """Copy users and nodes from Headscale's SQLite database at ``path`` into ``state``
    (a :class:`~meshscale.control.state.State`, which must hold no users or nodes)."""
    if state.list_users() or state.list_nodes():
        raise HeadscaleImportError(
            "the meshscale-control state is not empty; import into a new one"
        )
    try:
        src = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise HeadscaleImportError(f"cannot open {path}: {exc}") from exc
    src.row_factory = sqlite3.Row
    try:
        return _import(state, src)
    except sqlite3.Error as exc:
        raise HeadscaleImportError(f"{path} is not a Headscale database: {exc}") from exc
    finally:
        src.close()


def _import(state: State, src: sqlite3.Connection) -> ImportReport:
    report = ImportReport()
    user_cols = _columns(src, "users")
    if not {"id", "name"} <= user_cols or "machine_key" not in _columns(src, "nodes"):
        raise HeadscaleImportError("not a Headscale database: no users/nodes tables")
    live = " WHERE deleted_at IS NULL" if "deleted_at" in user_cols else ""
    users: dict[int, UserID] = {}
    for row in src.execute(f"SELECT * FROM users{live} ORDER BY id"):
        name = str(row["name"] or row["email"] or f"user-{row['id']}")
        provider = row["provider_identifier"] if "provider_identifier" in user_cols else None
        user = state.create_user(
            name,
            display_name=str(row["display_name"] or ""),
            email=str(row["email"] or ""),
            provider_id=str(provider) if provider else None,
        )
        users[int(row["id"])] = user.id
        report.users += 1
    ephemeral_keys = (
        {int(r[0]) for r in src.execute("SELECT id FROM pre_auth_keys WHERE ephemeral")}
        if "ephemeral" in _columns(src, "pre_auth_keys")
        else set()
    )

    node_cols = _columns(src, "nodes")
    live = " WHERE deleted_at IS NULL" if "deleted_at" in node_cols else ""
    tagged_owner: UserID | None = None
    for row in src.execute(f"SELECT * FROM nodes{live} ORDER BY id"):
        try:
            if row["user_id"] is None:
                if tagged_owner is None:
                    tagged_owner = state.create_user(TAGGED_DEVICES_USER).id
                owner = tagged_owner
            else:
                owner = users[int(row["user_id"])]
            _import_node(state, row, owner, node_cols, ephemeral_keys)
            report.nodes += 1
        except (KeyError, ValueError, TypeError) as exc:
            report.skipped.append(f"node {row['id']} ({row['hostname']}): {exc}")
    return report


def _import_node(
    state: State, row: sqlite3.Row, owner: UserID, cols: set[str], ephemeral_keys: set[int]
) -> None:
    hostinfo = json.loads(row["host_info"] or "{}") if "host_info" in cols else {}
    if not isinstance(hostinfo, dict):
        hostinfo = {}
    auth_key = row["auth_key_id"] if "auth_key_id" in cols else None
    node = state.register_node(
        MachinePublic.from_text(row["machine_key"]),
        NodePublic.from_text(row["node_key"]),
        owner,
        hostinfo,
        method=RegisterMethod(row["register_method"] or "cli"),
        ephemeral=auth_key is not None and int(auth_key) in ephemeral_keys,
        tags=[str(t) for t in _json_list(row["tags"])] if "tags" in cols else (),
    )
    given = str(row["given_name"] or "")
    if given and given != node.given_name:
        if not is_valid_label(given) or state.get_node_by_given_name(given) is not None:
            given = unique_given_name(given, lambda n: state.get_node_by_given_name(n) is not None)
        node = state.rename_node(node.id, given)
    # Addresses, keys and times are written as Headscale had them: the allocator hands
    # out fresh ones in register_node, so replace them (State re-indexes and frees).
    state.restore_node(
        NodeID(node.id),
        hostname=str(row["hostname"] or node.hostname),
        ipv4=ipaddress.IPv4Address(row["ipv4"]) if row["ipv4"] else None,
        ipv6=ipaddress.IPv6Address(row["ipv6"]) if row["ipv6"] else None,
        disco_key=DiscoPublic.from_text(row["disco_key"]) if row["disco_key"] else None,
        endpoints=[str(e) for e in _json_list(row["endpoints"])],
        expiry=_ts(row["expiry"]),
        last_seen=_ts(row["last_seen"]),
        created_at=_ts(row["created_at"]),
        approved_routes=[str(r) for r in _json_list(row["approved_routes"])]
        if "approved_routes" in cols
        else [],
    )
