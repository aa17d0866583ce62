"""Persistence for the control server: schema, migrations, stores."""

from __future__ import annotations

from pathlib import Path

from meshscale.control.db.repository import IntegrityError, Snapshot, Store, StoreError
from meshscale.control.db.sqlite import SQLiteStore, migrate, migrations, schema_sql


def open_store(
    kind: str,
    *,
    path: str | Path | None = None,
    dsn: str | None = None,
    wal: bool = True,
    wal_autocheckpoint: int = 1000,
) -> Store:
    """``sqlite`` (a file ``path``) or ``postgres`` (a libpq ``dsn``)."""
    if kind == "sqlite":
        if path is None:
            raise StoreError("sqlite needs a database path")
        return SQLiteStore(path, wal, wal_autocheckpoint)
    if kind == "postgres":
        from meshscale.control.db.postgres import PostgresStore

        return PostgresStore(dsn or "")
    raise StoreError(f"unknown database type {kind!r}")


__all__ = [
    "IntegrityError",
    "SQLiteStore",
    "Snapshot",
    "Store",
    "StoreError",
    "migrate",
    "migrations",
    "open_store",
    "schema_sql",
]
