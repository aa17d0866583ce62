"""Importing a Headscale SQLite database (db/headscale.py, ``import-headscale``).

The source database is built here from Headscale's schema facts (hscontrol/db/schema.sql
at f20f1f1: table and column names, JSON-in-text columns, GORM's datetime text); the rows
are our own.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshscale.control.db import SQLiteStore
from meshscale.control.db.headscale import TAGGED_DEVICES_USER, import_headscale
from meshscale.control.main import main
from meshscale.control.models import RegisterMethod
from meshscale.control.state import State
from meshscale.key import MachinePrivate, MachinePublic, NodePublic

HEADSCALE_TABLES = """
CREATE TABLE users(id integer PRIMARY KEY AUTOINCREMENT, name text, display_name text,
  email text, provider_identifier text, provider text, profile_pic_url text,
  created_at datetime, updated_at datetime, deleted_at datetime);
CREATE TABLE pre_auth_keys(id integer PRIMARY KEY AUTOINCREMENT, key text, prefix text,
  hash blob, user_id integer, description text, reusable numeric,
  ephemeral numeric DEFAULT false, used numeric DEFAULT false, tags text,
  expiration datetime, revoked datetime, created_at datetime);
CREATE TABLE nodes(id integer PRIMARY KEY AUTOINCREMENT, machine_key text, node_key text,
  disco_key text, endpoints text, host_info text, ipv4 text, ipv6 text, hostname text,
  given_name varchar(63), user_id integer, register_method text, tags text,
  auth_key_id integer, last_seen datetime, expiry datetime, approved_routes text,
  created_at datetime, updated_at datetime, deleted_at datetime);
"""


def hexkey(prefix: str, n: int) -> str:
    return f"{prefix}:{(bytes([n]) * 32).hex()}"


def build_headscale_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(HEADSCALE_TABLES)
    conn.executemany(
        "INSERT INTO users(id, name, display_name, email, provider_identifier, created_at, "
        "deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (1, "alice", "Alice", "alice@example.org", None, "2025-05-01 10:00:00+00:00", None),
            (
                2,
                "bob",
                "",
                "bob@example.org",
                "https://idp.example/1234",
                "2025-05-02 10:00:00.123456789+00:00",
                None,
            ),
            (3, "gone", "", "", None, "2025-05-03 10:00:00+00:00", "2025-06-01 00:00:00+00:00"),
        ],
    )
    conn.executemany(
        "INSERT INTO pre_auth_keys(id, prefix, hash, user_id, reusable, ephemeral, used, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (1, "aaaaaaaaaaaa", b"$2a$10$bcrypt", 1, 1, 0, 1, "2025-05-01 10:00:00+00:00"),
            (2, "bbbbbbbbbbbb", b"$2a$10$bcrypt", 1, 1, 1, 1, "2025-05-01 10:00:00+00:00"),
        ],
    )
    rows = [
        # id, machine, node, disco, endpoints, host_info, ipv4, ipv6, hostname, given,
        # user, method, tags, auth key, last_seen, expiry, approved routes, deleted
        (
            1,
            1,
            1,
            1,
            '["192.0.2.1:41641"]',
            '{"Hostname": "laptop", "OS": "linux"}',
            "100.64.0.7",
            "fd7a:115c:a1e0::7",
            "laptop",
            "laptop",
            1,
            "authkey",
            "[]",
            1,
            "2025-06-01 12:00:00.5+00:00",
            "0001-01-01 00:00:00+00:00",
            "[]",
            None,
        ),
        (
            2,
            2,
            2,
            2,
            "null",
            '{"Hostname": "router", "RoutableIPs": ["10.1.0.0/16"]}',
            "100.64.0.3",
            None,
            "router",
            "router",
            None,
            "authkey",
            '["tag:router"]',
            1,
            None,
            "2026-01-01 00:00:00+00:00",
            '["10.1.0.0/16"]',
            None,
        ),
        (
            3,
            3,
            3,
            None,
            "[]",
            "{}",
            "100.64.0.9",
            "fd7a:115c:a1e0::9",
            "ci",
            "ci-runner-7",
            1,
            "authkey",
            "[]",
            2,
            None,
            None,
            "[]",
            None,
        ),
        (
            4,
            4,
            4,
            None,
            "[]",
            "{}",
            "100.64.0.10",
            None,
            "bob-pc",
            "Bob PC!",
            2,
            "oidc",
            "[]",
            None,
            None,
            None,
            "[]",
            None,
        ),
        (
            5,
            5,
            5,
            None,
            "[]",
            "{}",
            "100.64.0.11",
            None,
            "deleted",
            "deleted",
            1,
            "cli",
            "[]",
            None,
            None,
            None,
            "[]",
            "2025-06-01 00:00:00+00:00",
        ),
        (
            6,
            6,
            6,
            None,
            "[]",
            "{}",
            "100.64.0.12",
            None,
            "broken",
            "broken",
            1,
            "cli",
            "[]",
            None,
            None,
            None,
            "[]",
            None,
        ),
    ]
    for r in rows:
        (
            nid,
            m,
            n,
            d,
            endpoints,
            hostinfo,
            v4,
            v6,
            hostname,
            given,
            user,
            method,
            tags,
            key,
            seen,
            expiry,
            routes,
            deleted,
        ) = r
        machine = hexkey("mkey", m) if nid != 6 else "mkey:not-hex"
        conn.execute(
            "INSERT INTO nodes(id, machine_key, node_key, disco_key, endpoints, host_info, "
            "ipv4, ipv6, hostname, given_name, user_id, register_method, tags, auth_key_id, "
            "last_seen, expiry, approved_routes, created_at, deleted_at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                nid,
                machine,
                hexkey("nodekey", n + 100),
                hexkey("discokey", d) if d else None,
                endpoints,
                hostinfo,
                v4,
                v6,
                hostname,
                given,
                user,
                method,
                tags,
                key,
                seen,
                expiry,
                routes,
                "2025-05-10 08:00:00+00:00",
                deleted,
            ),
        )
    conn.commit()
    conn.close()


def test_import_users_and_nodes(tmp_path: Path) -> None:
    build_headscale_db(tmp_path / "hs.sqlite")
    state = State(SQLiteStore(tmp_path / "ms.sqlite"))
    report = import_headscale(state, tmp_path / "hs.sqlite")
    assert (report.users, report.nodes) == (2, 4)
    assert len(report.skipped) == 1 and report.skipped[0].startswith("node 6 (broken)")
    users = {u.name: u for u in state.list_users()}
    assert set(users) == {"alice", "bob", TAGGED_DEVICES_USER}
    assert users["bob"].provider_id == "https://idp.example/1234"
    assert users["alice"].display_name == "Alice"
    nodes = {n.hostname: n for n in state.list_nodes()}
    laptop = nodes["laptop"]
    assert (str(laptop.ipv4), str(laptop.ipv6)) == ("100.64.0.7", "fd7a:115c:a1e0::7")
    assert laptop.machine_key.hex() == "01" * 32
    assert laptop.disco_key is not None and laptop.endpoints == ("192.0.2.1:41641",)
    assert laptop.expiry is None  # Go's zero time
    assert laptop.last_seen == datetime(2025, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert laptop.created_at == datetime(2025, 5, 10, 8, 0, tzinfo=UTC)
    assert not laptop.ephemeral and laptop.user_id == users["alice"].id
    router = nodes["router"]
    assert router.user_id == users[TAGGED_DEVICES_USER].id and router.tags == ("tag:router",)
    assert router.approved_routes == (ipaddress.ip_network("10.1.0.0/16"),)
    assert router.served_routes() == (ipaddress.ip_network("10.1.0.0/16"),)
    assert router.ipv6 is None and router.endpoints == ()
    assert router.expiry == datetime(2026, 1, 1, tzinfo=UTC)
    assert nodes["ci"].ephemeral and nodes["ci"].given_name == "ci-runner-7"
    assert nodes["bob-pc"].given_name == "bob-pc"  # "Bob PC!" is no label: sanitised
    assert nodes["bob-pc"].register_method is RegisterMethod.OIDC
    # The allocator knows the imported addresses: a new node gets a free one.
    fresh = state.register_node(
        MachinePublic(b"\x42" * 32), NodePublic(b"\x43" * 32), users["alice"].id
    )
    assert fresh.ipv4 not in {n.ipv4 for n in nodes.values()}
    state.close()
    # What was imported is in the database, not only in memory.
    reopened = State(SQLiteStore(tmp_path / "ms.sqlite"))
    assert {n.hostname for n in reopened.list_nodes()} == {*nodes, ""}  # "": the fresh one
    reopened.close()


def test_import_refuses_a_non_empty_state_and_non_headscale_files(tmp_path: Path) -> None:
    from meshscale.control.db.headscale import HeadscaleImportError

    build_headscale_db(tmp_path / "hs.sqlite")
    state = State(SQLiteStore(":memory:"))
    state.create_user("someone")
    with pytest.raises(HeadscaleImportError, match="not empty"):
        import_headscale(state, tmp_path / "hs.sqlite")
    empty = State(SQLiteStore(":memory:"))
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x(y)").connection.close()
    with pytest.raises(HeadscaleImportError, match="not a Headscale database"):
        import_headscale(empty, other)


@pytest.mark.slow
def test_import_command_copies_the_control_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_headscale_db(tmp_path / "hs.sqlite")
    noise = tmp_path / "noise_private.key"
    key = MachinePrivate(b"\x07" * 32)
    noise.write_text(key.text() + "\n")
    sd = tmp_path / "state"
    argv = [
        "--state-dir",
        str(sd),
        "import-headscale",
        "--db",
        str(tmp_path / "hs.sqlite"),
        "--noise-key",
        str(noise),
    ]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert out == "imported 2 users and 4 nodes, skipped 1; copied 1 key file(s)\n"
    assert (sd / "noise_private.key").read_text().strip() == key.text()
    assert (sd / "noise_private.key").stat().st_mode & 0o777 == 0o600
    assert main(argv) == 1  # the state is no longer empty
    _, err = capsys.readouterr()
    assert "not empty" in err and err.count("\n") == 1
    bad = tmp_path / "bad.key"
    bad.write_text("nonsense")
    assert main([*argv[:-1], str(bad)]) == 2
