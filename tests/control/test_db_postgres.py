"""The PostgreSQL store against a real, throwaway PostgreSQL server.

The server is started from the installed binaries (initdb, pg_ctl) in a temporary
directory, listening only on a unix socket, and stopped at the end. Without PostgreSQL
binaries or psycopg these tests are skipped, and say so.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from meshscale.control.db import IntegrityError, StoreError, migrations, schema_sql
from meshscale.control.db.sqlite import split_statements
from meshscale.control.models import (
    Node,
    NodeID,
    PreAuthKey,
    PreAuthKeyError,
    PreAuthKeyID,
    User,
    UserID,
)
from meshscale.control.state import State, StateOptions
from meshscale.key import MachinePublic, NodePublic

pytestmark = pytest.mark.slow
psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture(scope="module")
def postgres() -> Iterator[Callable[[], str]]:
    """A factory of DSNs, each naming a fresh database on one temporary server."""
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="msc-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [
            *as_user,
            initdb,
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    opts = f"-c listen_addresses='' -c unix_socket_directories={root} -p {port} -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    admin = f"host={root} port={port} user=postgres dbname=postgres"
    counter = itertools.count()

    def fresh() -> str:
        name = f"t{next(counter)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"host={root} port={port} user=postgres dbname={name}"

    try:
        yield fresh
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def structure(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "is_identity FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
        idx = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' ORDER BY indexname"
        ).fetchall()
        cons = conn.execute(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
        ).fetchall()
    return {"columns": cols, "indexes": idx, "constraints": cons}


def test_migrations_end_at_schema_sql(postgres: Callable[[], str]) -> None:
    from meshscale.control.db.postgres import PostgresStore, to_postgres

    migrated = postgres()
    PostgresStore(migrated).close()
    direct = postgres()
    with psycopg.connect(direct, autocommit=True) as conn:
        for statement in split_statements(to_postgres(schema_sql())):
            conn.execute(statement)
    a, b = structure(migrated), structure(direct)
    assert a["columns"] == b["columns"]
    assert a["indexes"] == b["indexes"]
    assert a["constraints"] == b["constraints"]
    assert len(a["indexes"]) >= 10
    with psycopg.connect(migrated) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [v for v, _, _ in migrations()]


def test_round_trip_and_unique_indexes(postgres: Callable[[], str]) -> None:
    from meshscale.control.db.postgres import PostgresStore

    store = PostgresStore(postgres())
    uid = store.insert_user(User(UserID(0), "alice", "Alice", "a@x.org", None, T0))
    kid = store.insert_preauth_key(
        PreAuthKey(
            PreAuthKeyID(0), uid, "0123456789ab", b"\x00\xffh" * 8, tags=("tag:a",), created_at=T0
        )
    )
    node = Node(
        NodeID(0),
        MachinePublic(b"\x01" * 32),
        NodePublic(b"\x02" * 32),
        uid,
        "h",
        "h",
        ipaddress.IPv4Address("100.64.0.1"),
        ipaddress.IPv6Address("fd7a:115c:a1e0::1"),
        hostinfo={"Hostname": "h", "RoutableIPs": ["10.0.0.0/8"]},
        endpoints=("192.0.2.1:1",),
        auth_key_id=kid,
        created_at=T0,
        last_seen=T0,
    )
    nid = store.insert_node(node)
    store.set_policy("{}")
    store.set_policy('{"acls": []}')
    snap = store.load()
    assert snap.users[0].email == "a@x.org"
    assert snap.preauth_keys[0].hash == b"\x00\xffh" * 8
    assert snap.nodes[0] == Node(
        **{**{f: getattr(node, f) for f in node.__dataclass_fields__}, "id": nid}
    )
    assert snap.policy == '{"acls": []}'
    with pytest.raises(IntegrityError):
        store.insert_node(
            Node(
                NodeID(0),
                MachinePublic(b"\x03" * 32),
                NodePublic(b"\x04" * 32),
                uid,
                "h",
                "other",
                ipaddress.IPv4Address("100.64.0.1"),
            )
        )
    with pytest.raises(IntegrityError):
        store.insert_user(User(UserID(0), "alice", created_at=T0))

    def clash() -> None:
        with store.transaction():
            store.insert_user(User(UserID(0), "bob", created_at=T0))
            store.insert_user(User(UserID(0), "bob", created_at=T0))

    with pytest.raises(IntegrityError):
        clash()
    assert [u.name for u in store.load().users] == ["alice"]  # rolled back together
    store.close()


def test_newer_database_is_refused(postgres: Callable[[], str]) -> None:
    from meshscale.control.db.postgres import PostgresStore

    dsn = postgres()
    PostgresStore(dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    with pytest.raises(StoreError, match="newer than this meshscale"):
        PostgresStore(dsn)


def test_two_servers_race_on_one_single_use_key(postgres: Callable[[], str]) -> None:
    from meshscale.control.db.postgres import PostgresStore

    dsn = postgres()
    setup = State(PostgresStore(dsn))
    uid = setup.create_user("alice").id
    secrets = [setup.create_preauth_key(uid).secret for _ in range(5)]
    setup.close()
    # Disjoint address pools: the two States do not share memory (see the SQLite test).
    a = State(
        PostgresStore(dsn), StateOptions(prefix_v4=IPv4Network("100.64.0.0/24"), prefix_v6=None)
    )
    b = State(
        PostgresStore(dsn), StateOptions(prefix_v4=IPv4Network("100.64.1.0/24"), prefix_v6=None)
    )
    for round_, secret in enumerate(secrets):
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def racer(
            state: State,
            n: int,
            secret: str = secret,
            barrier: threading.Barrier = barrier,
            results: list[bool] = results,
        ) -> None:
            barrier.wait()
            try:
                state.register_with_preauth_key(
                    secret,
                    MachinePublic(bytes([n]) * 32),
                    NodePublic(bytes([n]) * 32),
                    {"Hostname": f"n{n}"},
                )
                results.append(True)
            except PreAuthKeyError:
                results.append(False)

        threads = [
            threading.Thread(target=racer, args=(s, 2 * round_ + i + 1))
            for i, s in enumerate((a, b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results) == [False, True], round_
    a.close()
    b.close()


def test_state_on_postgres_survives_reopen(postgres: Callable[[], str]) -> None:
    from meshscale.control.db.postgres import PostgresStore

    dsn = postgres()
    s1 = State(PostgresStore(dsn))
    u = s1.create_user("alice")
    key = s1.create_preauth_key(u.id, reusable=True)
    n = s1.register_with_preauth_key(
        key.secret, MachinePublic(b"m" * 32), NodePublic(b"n" * 32), {"Hostname": "pg-node"}
    )
    s1.rename_node(n.id, "renamed")
    s1.close()
    s2 = State(PostgresStore(dsn))
    got = s2.get_node(n.id)
    assert (got.given_name, got.ipv4, got.user_id) == ("renamed", n.ipv4, u.id)
    s2.validate_preauth_key(key.secret)
    s2.close()


def test_serve_with_postgres(postgres: Callable[[], str], tmp_path: Path) -> None:
    import asyncio

    from meshscale.control.cli import AdminClient
    from meshscale.control.config import config_from_mapping
    from meshscale.control.server import Server

    dsn = dict(p.split("=", 1) for p in postgres().split())
    cfg = config_from_mapping(
        {
            "listen_addr": "127.0.0.1:0",
            "unix_socket": "ctl.sock",
            "derp": {"server": {"enabled": False}},
            "database": {
                "type": "postgres",
                "postgres": {
                    "host": dsn["host"],
                    "port": int(dsn["port"]),
                    "name": dsn["dbname"],
                    "user": "postgres",
                },
            },
        },
        tmp_path,
    )

    async def main() -> Any:
        server = Server(cfg)
        await server.start()
        try:
            client = AdminClient(unix_socket=str(cfg.unix_socket))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, client.request, "POST", "/api/v1/user", {"name": "alice"}
            )
            return await loop.run_in_executor(None, client.request, "GET", "/api/v1/user")
        finally:
            await server.close()

    assert [u["name"] for u in asyncio.run(main())["users"]] == ["alice"]
    assert not (tmp_path / "db.sqlite").exists()


def test_pre_tailnet_database_opens_as_tailnet_default(postgres: Callable[[], str]) -> None:
    """Migration 0006 on PostgreSQL: the rows of a pre-0006 database end in ``default``."""
    from tests.control.test_db_tailnets import PRE_0006_ROWS, STAMP, check_migrated

    from meshscale.control.db.postgres import PostgresStore, to_postgres

    dsn = postgres()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at text NOT NULL)"
        )
        for version, name, sql in migrations()[:5]:
            for statement in split_statements(to_postgres(sql)):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, %s)", (version, name, STAMP)
            )
        for statement in PRE_0006_ROWS:
            conn.execute(statement.replace("'h'", "'\\x00'::bytea"))
    store = PostgresStore(dsn)
    check_migrated(store.load())
    from meshscale.control.models import Tailnet, TailnetID

    assert store.insert_tailnet(Tailnet(TailnetID(0), "acme", None, T0)) == 2
    store.close()
