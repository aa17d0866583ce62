"""Persistence for the control server: schema, migrations, stores."""

from meshscale.control.db.repository import IntegrityError, Snapshot, Store, StoreError
from meshscale.control.db.sqlite import SQLiteStore, migrate, migrations, schema_sql

__all__ = [
    "IntegrityError",
    "SQLiteStore",
    "Snapshot",
    "Store",
    "StoreError",
    "migrate",
    "migrations",
    "schema_sql",
]
