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
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

from meshscale.control.db import codec
from meshscale.control.db.repository import StoreError
from meshscale.control.db.sqlstore import SQLStore

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


def pending_migrations(applied: set[int]) -> list[tuple[int, str, str]]:
    """The bundled migrations not yet in ``applied``, in order.

    A database that has a version this code does not know is refused, not guessed at.
    """
    known = migrations()
    newest = max((v for v, _, _ in known), default=0)
    if applied and max(applied) > newest:
        raise StoreError(
            f"database schema version {max(applied)} is newer than this meshscale "
            f"(knows up to {newest}); refusing to open it"
        )
    return [m for m in known if m[0] not in applied]


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
    done: list[int] = []
    stamp = codec.ts_to_db(now or datetime.now(UTC))
    pending = pending_migrations(applied)
    if not pending:
        return done
    # SQLite's way to change a schema (https://sqlite.org/lang_altertable.html): foreign
    # keys off for the migration (it may add a REFERENCES column with a default), every
    # reference checked before the commit, then the setting restored. The pragma is a
    # no-op inside a transaction, so it is set around them.
    fk_on = bool(conn.execute("PRAGMA foreign_keys").fetchone()[0])
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for version, name, sql in pending:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in split_statements(sql):
                    conn.execute(statement)
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise sqlite3.IntegrityError(
                        f"{len(broken)} rows break a reference, e.g. {tuple(broken[0])}"
                    )
                conn.execute(
                    "INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, stamp),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"migration {version:04d}_{name} failed: {exc}") from exc
            done.append(version)
    finally:
        if fk_on:
            conn.execute("PRAGMA foreign_keys = ON")
    return done


def split_statements(sql: str) -> list[str]:
    """Split a schema file into statements (our files have no ';' inside literals)."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class SQLiteStore(SQLStore):
    """:class:`~meshscale.control.db.repository.Store` on one SQLite file."""

    _integrity_error = sqlite3.IntegrityError
    _db_error = sqlite3.Error

    def __init__(self, path: str | Path, wal: bool = True, wal_autocheckpoint: int = 1000) -> None:
        super().__init__()
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

    @staticmethod
    def _param(name: str) -> str:
        return f":{name}"

    def _begin(self, durable: bool) -> None:
        if not durable:
            # WAL + NORMAL: the commit is not fsynced; the next FULL commit's fsync
            # covers it. Survives kill -9, not power loss (see the module docstring).
            self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("BEGIN IMMEDIATE")

    def _end(self, statement: str, durable: bool) -> None:
        try:
            self.conn.execute(statement)
        finally:
            if not durable:
                self.conn.execute("PRAGMA synchronous = FULL")

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cur = self._exec(self._insert_sql(table, row), row)
        assert cur.lastrowid is not None
        return int(cur.lastrowid)
