"""The SQLite store: migrations end at schema.sql, indexes enforce the invariants."""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meshscale.control.db import IntegrityError, SQLiteStore, StoreError, migrate, migrations
from meshscale.control.db.codec import ts_from_db, ts_to_db
from meshscale.control.db.sqlite import connect, schema_sql, split_statements
from meshscale.control.models import (
    APIKey,
    APIKeyID,
    Node,
    NodeID,
    PreAuthKey,
    PreAuthKeyID,
    RegisterMethod,
    User,
    UserID,
)
from meshscale.key import DiscoPublic, MachinePublic, NodePublic

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def structure(conn: sqlite3.Connection) -> dict[str, Any]:
    """Tables (columns, foreign keys) and indexes (uniqueness, columns, partial WHERE)."""
    out: dict[str, Any] = {}
    for name, kind, sql in conn.execute(
        "SELECT name, type, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ):
        if kind == "table":
            cols = [tuple(r) for r in conn.execute(f"PRAGMA table_xinfo({name})")]
            fks = sorted(tuple(r)[2:] for r in conn.execute(f"PRAGMA foreign_key_list({name})"))
            checks = "CHECK" in sql
            out[name] = ("table", cols, fks, checks)
        elif kind == "index":
            cols = [tuple(r) for r in conn.execute(f"PRAGMA index_xinfo({name})")]
            where = " ".join(sql.split(" WHERE ", 1)[1].split()) if " WHERE " in sql else None
            unique = "UNIQUE" in sql.split(" ON ", 1)[0]
            out[name] = ("index", cols, where, unique)
    return out


def test_migrations_end_at_schema_sql() -> None:
    from_migrations = sqlite3.connect(":memory:")
    applied = migrate(from_migrations)
    assert applied == [v for v, _, _ in migrations()]
    assert len(applied) >= 2
    from_schema = sqlite3.connect(":memory:")
    for statement in split_statements(schema_sql()):
        from_schema.execute(statement)
    a, b = structure(from_migrations), structure(from_schema)
    assert set(a) == set(b)
    for name in a:
        assert a[name] == b[name], name


def test_migrate_is_idempotent_and_records_versions() -> None:
    conn = sqlite3.connect(":memory:")
    first = migrate(conn)
    assert migrate(conn) == []
    rows = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert rows == first


def test_partial_migration_is_continued(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    migrate(conn)
    # Pretend only 0001 ran: undo 0002 and forget it.
    conn.execute("DROP INDEX nodes_ipv4")
    conn.execute("DROP INDEX nodes_ipv6")
    conn.execute("DROP TABLE policies")
    conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    assert migrate(conn) == [2]


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', '2030-01-01T00:00:00Z')")
    conn.close()
    with pytest.raises(StoreError, match="newer than this meshscale"):
        SQLiteStore(path)


def test_pragmas(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_timestamps_round_trip() -> None:
    assert ts_to_db(T0) == "2026-01-02T03:04:05.123456Z"
    assert ts_from_db(ts_to_db(T0)) == T0
    assert ts_from_db(None) is None
    with pytest.raises(ValueError, match="naive"):
        ts_to_db(datetime(2026, 1, 1))


def _node(n: int, user: UserID, **kw: Any) -> Node:
    base: dict[str, Any] = {
        "id": NodeID(0),
        "machine_key": MachinePublic(bytes([n]) * 32),
        "node_key": NodePublic(bytes([n + 100]) * 32),
        "user_id": user,
        "hostname": f"host{n}",
        "given_name": f"host{n}",
        "ipv4": ipaddress.IPv4Address(f"100.64.0.{n}"),
        "ipv6": ipaddress.IPv6Address(f"fd7a:115c:a1e0::{n}"),
        "created_at": T0,
    }
    base.update(kw)
    return Node(**base)


def test_models_round_trip() -> None:
    store = SQLiteStore(":memory:")
    uid = store.insert_user(User(UserID(0), "alice", "Alice", "a@example.org", None, T0))
    kid = store.insert_preauth_key(
        PreAuthKey(
            PreAuthKeyID(0), uid, "0123456789ab", b"h" * 32, True, True, False, T0, ("tag:a",), T0
        )
    )
    node = _node(
        1,
        uid,
        disco_key=DiscoPublic(b"\x07" * 32),
        hostinfo={"Hostname": "h", "OS": "linux"},
        endpoints=("192.0.2.1:41641", "[2001:db8::1]:41641"),
        last_seen=T0,
        expiry=T0,
        tags=("tag:a",),
        approved_routes=(ipaddress.ip_network("10.0.0.0/8"),),
        register_method=RegisterMethod.AUTH_KEY,
        auth_key_id=kid,
        ephemeral=True,
    )
    nid = store.insert_node(node)
    aid = store.insert_api_key(APIKey(APIKeyID(0), "abcdefabcdef", b"x" * 32, T0, None, T0))
    store.set_policy('{"acls": []}')
    snap = store.load()
    assert snap.users == [User(uid, "alice", "Alice", "a@example.org", None, T0)]
    assert snap.nodes == [Node(**{**_as_dict(node), "id": nid})]
    assert snap.preauth_keys[0].tags == ("tag:a",)
    assert snap.api_keys[0].id == aid
    assert snap.policy == '{"acls": []}'


def _as_dict(node: Node) -> dict[str, Any]:
    return {f: getattr(node, f) for f in node.__dataclass_fields__}


@pytest.mark.parametrize(
    "clash",
    [
        {"machine_key": MachinePublic(b"\x01" * 32)},
        {"node_key": NodePublic(bytes([101]) * 32)},
        {"given_name": "host1"},
        {"ipv4": ipaddress.IPv4Address("100.64.0.1")},
        {"ipv6": ipaddress.IPv6Address("fd7a:115c:a1e0::1")},
    ],
    ids=lambda d: next(iter(d)),
)
def test_unique_indexes(clash: dict[str, Any]) -> None:
    store = SQLiteStore(":memory:")
    uid = store.insert_user(User(UserID(0), "alice", created_at=T0))
    store.insert_node(_node(1, uid))
    with pytest.raises(IntegrityError):
        store.insert_node(_node(2, uid, **clash))


def test_nodes_without_addresses_do_not_clash() -> None:
    store = SQLiteStore(":memory:")
    uid = store.insert_user(User(UserID(0), "alice", created_at=T0))
    store.insert_node(_node(1, uid, ipv6=None))
    store.insert_node(_node(2, uid, ipv6=None))


def test_local_user_names_are_unique_but_providers_may_reuse_them() -> None:
    store = SQLiteStore(":memory:")
    store.insert_user(User(UserID(0), "alice", created_at=T0))
    store.insert_user(User(UserID(0), "alice", provider_id="https://idp/1", created_at=T0))
    with pytest.raises(IntegrityError):
        store.insert_user(User(UserID(0), "alice", created_at=T0))
    with pytest.raises(IntegrityError):
        store.insert_user(User(UserID(0), "bob", provider_id="https://idp/1", created_at=T0))


def test_transaction_rolls_back_everything() -> None:
    store = SQLiteStore(":memory:")

    def clash() -> None:
        with store.transaction():
            store.insert_user(User(UserID(0), "alice", created_at=T0))
            store.insert_user(User(UserID(0), "alice", created_at=T0))

    with pytest.raises(IntegrityError):
        clash()
    assert store.load().users == []
    with store.transaction(), store.transaction():  # nesting commits once, at the outside
        uid = store.insert_user(User(UserID(0), "alice", created_at=T0))
    assert [u.id for u in store.load().users] == [uid]


def test_consume_preauth_key_is_decided_by_the_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    a, b = SQLiteStore(path), SQLiteStore(path)
    uid = a.insert_user(User(UserID(0), "alice", created_at=T0))
    kid = a.insert_preauth_key(PreAuthKey(PreAuthKeyID(0), uid, "p" * 12, b"h" * 32, created_at=T0))
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def race(store: SQLiteStore) -> None:
        barrier.wait()
        results.append(store.consume_preauth_key(kid))

    threads = [threading.Thread(target=race, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [False, True]
    a.close()
    b.close()


def test_deleting_a_user_cascades_to_its_keys() -> None:
    store = SQLiteStore(":memory:")
    uid = store.insert_user(User(UserID(0), "alice", created_at=T0))
    store.insert_preauth_key(PreAuthKey(PreAuthKeyID(0), uid, "p" * 12, b"h", created_at=T0))
    store.delete_user(uid)
    assert store.load().preauth_keys == []


def test_database_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path)
    store.insert_user(User(UserID(0), "alice", created_at=T0))
    assert path.stat().st_mode & 0o777 == 0o600
    wal = tmp_path / "db.sqlite-wal"
    assert wal.exists() and wal.stat().st_mode & 0o777 == 0o600
    store.close()


@pytest.mark.parametrize(
    ("table", "column", "value", "where"),
    [
        ("nodes", "machine_key", "mkey:zz", "nodes row"),
        ("nodes", "host_info", "[1]", "nodes row"),
        ("nodes", "approved_routes", '["not-a-net"]', "nodes row"),
        ("users", "created_at", "yesterday", "users row"),
        ("pre_auth_keys", "tags", "{}", "pre_auth_keys row"),
        ("api_keys", "expiration", "soon", "api_keys row"),
    ],
)
def test_unreadable_rows_name_table_and_id(
    tmp_path: Path, table: str, column: str, value: str, where: str
) -> None:
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path)
    uid = store.insert_user(User(UserID(0), "alice", created_at=T0))
    store.insert_node(_node(1, uid))
    store.insert_preauth_key(PreAuthKey(PreAuthKeyID(0), uid, "p" * 12, b"h", created_at=T0))
    store.insert_api_key(APIKey(APIKeyID(0), "a" * 12, b"h", created_at=T0))
    store.conn.execute(f"UPDATE {table} SET {column} = ?", (value,))
    with pytest.raises(StoreError, match=f"^{where} 1: "):
        store.load()
    store.close()


def test_soft_transactions_skip_the_flush_and_restore_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")

    def sync() -> int:
        return int(store.conn.execute("PRAGMA synchronous").fetchone()[0])

    with store.transaction(durable=False):
        store.insert_user(User(UserID(0), "alice", created_at=T0))
        with store.transaction():  # nested: follows the outermost
            pass
    assert sync() == 2  # FULL again
    inside: list[int] = []

    def failing() -> None:
        with store.transaction(durable=False):
            inside.append(int(store.conn.execute("PRAGMA synchronous").fetchone()[0]))
            store.insert_user(User(UserID(0), "alice", created_at=T0))

    with pytest.raises(IntegrityError):
        failing()
    assert inside == [1] and sync() == 2  # NORMAL inside, FULL after a rollback too
    with store.transaction():
        assert sync() == 2
    store.close()


def test_rollback_journal_when_wal_is_off(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite", wal=False, wal_autocheckpoint=500)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    store.insert_user(User(UserID(0), "alice", created_at=T0))
    with store.transaction(durable=False):
        store.insert_user(User(UserID(0), "bob", created_at=T0))
    assert len(store.load().users) == 2
    assert not (tmp_path / "db.sqlite-wal").exists()
    store.close()
    wal = SQLiteStore(tmp_path / "w.sqlite", wal_autocheckpoint=500)
    assert wal.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 500
    wal.close()
