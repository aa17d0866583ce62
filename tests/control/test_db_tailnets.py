"""Migration 0006 (issue #16): a database from before tailnets opens as tailnet ``default``
with every user, node, key, address and the policy intact (SQLite here; the same rows on
PostgreSQL in test_db_postgres.py)."""

from __future__ import annotations

import ipaddress
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshscale.control.db import IntegrityError, SQLiteStore, StoreError, migrations
from meshscale.control.db.repository import Snapshot
from meshscale.control.db.sqlite import split_statements
from meshscale.control.models import DEFAULT_TAILNET, Tailnet, TailnetID, User
from meshscale.control.state import State

STAMP = "2026-01-02T03:04:05.000000Z"
T0 = datetime(2026, 1, 2, tzinfo=UTC)
POLICY = '{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:*"]}]}'
MK = "mkey:" + "11" * 32
NK = "nodekey:" + "22" * 32
MK2 = "mkey:" + "33" * 32
NK2 = "nodekey:" + "44" * 32

# Rows as the pre-0006 schema (migrations 0001-0005) holds them; literal SQL so the same
# list fills a SQLite and a PostgreSQL database.
PRE_0006_ROWS = [
    f"INSERT INTO users (name, display_name, email, created_at) VALUES "
    f"('alice', 'Alice', 'alice@example.com', '{STAMP}')",
    f"INSERT INTO users (name, provider_id, created_at, oidc_issuer, oidc_subject, idp_groups) "
    f"VALUES ('bob', 'https://idp/1', '{STAMP}', 'https://idp', '1', '[\"eng\"]')",
    f"INSERT INTO pre_auth_keys (user_id, prefix, hash, reusable, tags, created_at) VALUES "
    f"(1, 'aaaaaaaaaaaa', 'h', 1, '[\"tag:ci\"]', '{STAMP}')",
    f"INSERT INTO api_keys (prefix, hash, created_at) VALUES ('bbbbbbbbbbbb', 'h', '{STAMP}')",
    f"INSERT INTO nodes (machine_key, node_key, user_id, hostname, given_name, ipv4, ipv6, "
    f"register_method, auth_key_id, created_at) VALUES ('{MK}', '{NK}', 1, 'laptop', 'laptop', "
    f"'100.64.0.1', 'fd7a:115c:a1e0::1', 'authkey', 1, '{STAMP}')",
    f"INSERT INTO nodes (machine_key, node_key, user_id, hostname, given_name, ipv4, ipv6, "
    f"register_method, created_at) VALUES ('{MK2}', '{NK2}', 2, 'phone', 'phone', "
    f"'100.64.0.2', 'fd7a:115c:a1e0::2', 'oidc', '{STAMP}')",
    f"INSERT INTO policies (id, data, updated_at) VALUES (1, '{POLICY}', '{STAMP}')",
    f"INSERT INTO policy_versions (data, created_at, source) VALUES ('{POLICY}', '{STAMP}', 'api')",
]


def check_migrated(snap: Snapshot) -> None:
    """Everything of PRE_0006_ROWS is there, in tailnet ``default``."""
    assert [(t.id, t.name, t.base_domain) for t in snap.tailnets] == [(1, "default", None)]
    users = {u.name: u for u in snap.users}
    assert set(users) == {"alice", "bob"}
    assert users["alice"].email == "alice@example.com"
    assert (users["bob"].oidc_subject, users["bob"].groups) == ("1", ("eng",))
    assert {u.tailnet_id for u in snap.users} == {DEFAULT_TAILNET}
    nodes = {n.given_name: n for n in snap.nodes}
    assert set(nodes) == {"laptop", "phone"}
    assert nodes["laptop"].ipv4 == ipaddress.IPv4Address("100.64.0.1")
    assert nodes["phone"].ipv6 == ipaddress.IPv6Address("fd7a:115c:a1e0::2")
    assert nodes["laptop"].machine_key.text() == MK
    assert nodes["laptop"].auth_key_id == 1
    assert {n.tailnet_id for n in snap.nodes} == {DEFAULT_TAILNET}
    [pak] = snap.preauth_keys
    assert (pak.prefix, pak.reusable, pak.tags, pak.tailnet_id) == (
        "aaaaaaaaaaaa", True, ("tag:ci",), DEFAULT_TAILNET
    )  # fmt: skip
    [api] = snap.api_keys
    assert (api.prefix, api.tailnet_id) == ("bbbbbbbbbbbb", None)  # a server admin key
    assert snap.policy == POLICY
    assert snap.policy_version is not None and snap.policy_version.data == POLICY
    assert set(snap.policies) == {DEFAULT_TAILNET}


def _pre_0006(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
        "applied_at text NOT NULL)"
    )
    for version, name, sql in migrations()[:5]:
        assert version <= 5
        for statement in split_statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, STAMP))
    for statement in PRE_0006_ROWS:
        conn.execute(statement.replace("'h'", "x'00'"))
    conn.close()


def test_pre_tailnet_database_opens_as_tailnet_default(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _pre_0006(path)
    store = SQLiteStore(path)
    check_migrated(store.load())
    # foreign keys are back on after the migration, and the new ones hold
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []
    fks = {tuple(r)[2:4] for r in store.conn.execute("PRAGMA foreign_key_list(nodes)")}
    assert ("tailnets", "tailnet_id") in fks and ("users", "user_id") in fks
    # the tailnets table hands out fresh ids after the migrated row
    tid = store.insert_tailnet(Tailnet(TailnetID(0), "acme", None, T0))
    assert tid == 2
    store.close()
    # and State runs on it: the node keeps its address, the policy is in force
    st = State.open(path)
    assert st.get_user_by_name("alice").tailnet_id == DEFAULT_TAILNET
    assert st.policy == POLICY
    st.close()


def test_names_are_unique_per_tailnet_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    acme = store.insert_tailnet(Tailnet(TailnetID(0), "acme", "acme.example", T0))
    store.insert_user(User(id=0, name="alice", created_at=T0))  # type: ignore[arg-type]
    store.insert_user(User(id=0, name="alice", created_at=T0, tailnet_id=acme))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        store.insert_user(User(id=0, name="alice", created_at=T0, tailnet_id=acme))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        store.insert_tailnet(Tailnet(TailnetID(0), "acme", None, T0))
    with pytest.raises(StoreError):  # a user of a tailnet that does not exist
        store.insert_user(User(id=0, name="x", created_at=T0, tailnet_id=TailnetID(99)))  # type: ignore[arg-type]
    store.close()


def test_policies_are_per_tailnet(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    acme = store.insert_tailnet(Tailnet(TailnetID(0), "acme", None, T0))
    v1 = store.set_policy("{}", "api")
    v2 = store.set_policy('{"acls": []}', "api", acme)
    snap = store.load()
    assert snap.policy == "{}"
    assert snap.policies[acme] == ('{"acls": []}', v2)
    assert [v.version for v in store.policy_history(10)] == [v1.version]
    assert [v.version for v in store.policy_history(10, acme)] == [v2.version]
    assert store.policy_version(v2.version) is None  # not the default tailnet's
    assert store.policy_version(v2.version, acme) == v2
    store.close()
