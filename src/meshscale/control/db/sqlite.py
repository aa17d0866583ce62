"""SQLite store (stdlib sqlite3) and the migration runner.

Durability: the database runs in WAL mode. Every State write is one short transaction
committed before State returns. Two levels:

* durable writes (users, keys, registrations, admin edits) commit with
  ``synchronous=FULL``: anything acknowledged (a registration answered, a key shown)
  survives ``kill -9`` and also a power loss;
* soft state (endpoints, Hostinfo, disco key, online/last_seen: what every MapRequest
  carries and every client sends again on reconnect) commits with ``synchronous=NORMAL``:
  no fsync (about 5 ms saved per write on a plain disk, measured), still safe against a
  process crash because the WAL is in the OS page cache, and on power loss only that
  soft state can roll back. The next FULL commit's fsync makes it durable too.

Threads: calls are synchronous and short (one indexed statement, one fsync). State runs
them inline on the event loop instead of in a worker thread, which keeps the order of
writes equal to the order of State calls; a thread hop would cost more than the
statements. One connection is shared under State's lock (``check_same_thread=False``).

Migrations: ``migrations/NNNN_name.sql`` files, applied in order inside one transaction
each; ``schema_migrations`` records the applied versions. A database newer than this
code (an unknown version) is refused rather than guessed at.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

from meshscale.control.db import codec
from meshscale.control.db.repository import IntegrityError, Snapshot, StoreError
from meshscale.control.models import (
    APIKey,
    APIKeyID,
    Node,
    NodeID,
    PreAuthKey,
    PreAuthKeyID,
    User,
    UserID,
)

BUSY_TIMEOUT: Final = 5.0  # seconds a writer waits for another connection's lock
_MIGRATION_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

SCHEMA_MIGRATIONS_DDL: Final = """CREATE TABLE schema_migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  applied_at text NOT NULL
)"""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in order."""
    folder = resources.files("meshscale.control.db").joinpath("migrations")
    out: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(out) + 1)):
        raise StoreError(f"migrations are not numbered 1..n: {versions}")
    return out


def schema_sql() -> str:
    return resources.files("meshscale.control.db").joinpath("schema.sql").read_text("utf-8")


def connect(
    path: str | Path, wal: bool = True, wal_autocheckpoint: int = 1000
) -> sqlite3.Connection:
    """Open a connection with the pragmas every meshscale connection uses.

    ``wal=False`` (database.sqlite.write_ahead_log: false) uses a rollback journal, for
    file systems without shared memory; soft-state commits then still survive a process
    crash, and only soft state is at risk on power loss, as with WAL.
    """
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    if str(path) != ":memory:":
        conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint)}")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def migrate(conn: sqlite3.Connection, now: datetime | None = None) -> list[int]:
    """Apply pending migrations; return the versions applied."""
    conn.execute(SCHEMA_MIGRATIONS_DDL.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    applied = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
    known = migrations()
    newest = max((v for v, _, _ in known), default=0)
    if applied and max(applied) > newest:
        raise StoreError(
            f"database schema version {max(applied)} is newer than this meshscale "
            f"(knows up to {newest}); refusing to open it"
        )
    done: list[int] = []
    stamp = codec.ts_to_db(now or datetime.now(UTC))
    for version, name, sql in known:
        if version in applied:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in split_statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, stamp),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"migration {version:04d}_{name} failed: {exc}") from exc
        done.append(version)
    return done


def split_statements(sql: str) -> list[str]:
    """Split a schema file into statements (our files have no ';' inside literals)."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class SQLiteStore:
    """:class:`~meshscale.control.db.repository.Store` on one SQLite file."""

    def __init__(self, path: str | Path, wal: bool = True, wal_autocheckpoint: int = 1000) -> None:
        self.path = path
        if str(path) != ":memory:" and not Path(path).exists():
            # Create it private: it holds key hashes and the tailnet's membership. SQLite
            # gives the -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self.conn = connect(path, wal, wal_autocheckpoint)
            migrate(self.conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        self._depth = 0
        self._lock = threading.RLock()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            soft = outer and not durable
            if soft:
                # WAL + NORMAL: the commit is not fsynced; the next FULL commit's fsync
                # covers it. Survives kill -9, not power loss (see the module docstring).
                self.conn.execute("PRAGMA synchronous = NORMAL")
            if outer:
                self.conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if outer:
                    self.conn.execute("COMMIT")
            finally:
                if soft:
                    self.conn.execute("PRAGMA synchronous = FULL")

    def _exec(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self.conn.execute(sql, params)
            except sqlite3.IntegrityError as exc:
                raise IntegrityError(str(exc)) from exc
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join(f":{c}" for c in row)
        cur = self._exec(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row)
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def _update(self, table: str, row_id: int, row: dict[str, Any]) -> None:
        sets = ", ".join(f"{c} = :{c}" for c in row)
        cur = self._exec(f"UPDATE {table} SET {sets} WHERE id = :id", {**row, "id": row_id})
        if cur.rowcount != 1:
            raise StoreError(f"{table} row {row_id} vanished")

    def _delete(self, table: str, row_id: int) -> None:
        self._exec(f"DELETE FROM {table} WHERE id = ?", (row_id,))

    def load(self) -> Snapshot:
        with self._lock:
            users = [codec.user_from_row(r) for r in self._exec("SELECT * FROM users")]
            nodes = [codec.node_from_row(r) for r in self._exec("SELECT * FROM nodes")]
            paks = [
                codec.preauth_key_from_row(r) for r in self._exec("SELECT * FROM pre_auth_keys")
            ]
            apis = [codec.api_key_from_row(r) for r in self._exec("SELECT * FROM api_keys")]
            row = self._exec("SELECT data FROM policies WHERE id = 1").fetchone()
        return Snapshot(users, nodes, paks, apis, None if row is None else str(row[0]))

    def insert_user(self, user: User) -> UserID:
        return UserID(self._insert("users", codec.user_to_row(user)))

    def update_user(self, user: User) -> None:
        self._update("users", user.id, codec.user_to_row(user))

    def delete_user(self, user_id: UserID) -> None:
        self._delete("users", user_id)

    def insert_node(self, node: Node) -> NodeID:
        return NodeID(self._insert("nodes", codec.node_to_row(node)))

    def update_node(self, node: Node) -> None:
        self._update("nodes", node.id, codec.node_to_row(node))

    def delete_node(self, node_id: NodeID) -> None:
        self._delete("nodes", node_id)

    def insert_preauth_key(self, key: PreAuthKey) -> PreAuthKeyID:
        return PreAuthKeyID(self._insert("pre_auth_keys", codec.preauth_key_to_row(key)))

    def update_preauth_key(self, key: PreAuthKey) -> None:
        self._update("pre_auth_keys", key.id, codec.preauth_key_to_row(key))

    def delete_preauth_key(self, key_id: PreAuthKeyID) -> None:
        self._delete("pre_auth_keys", key_id)

    def consume_preauth_key(self, key_id: PreAuthKeyID) -> bool:
        # The conditional UPDATE is the arbiter between racing registrations, also across
        # processes: SQLite serialises writers, and only one sees used = 0.
        cur = self._exec(
            "UPDATE pre_auth_keys SET used = 1 WHERE id = ? AND used = 0 AND reusable = 0",
            (key_id,),
        )
        return cur.rowcount == 1

    def insert_api_key(self, key: APIKey) -> APIKeyID:
        return APIKeyID(self._insert("api_keys", codec.api_key_to_row(key)))

    def update_api_key(self, key: APIKey) -> None:
        self._update("api_keys", key.id, codec.api_key_to_row(key))

    def delete_api_key(self, key_id: APIKeyID) -> None:
        self._delete("api_keys", key_id)

    def set_policy(self, data: str) -> None:
        self._exec(
            "INSERT INTO policies(id, data, updated_at) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (data, codec.ts_to_db(datetime.now(UTC))),
        )
