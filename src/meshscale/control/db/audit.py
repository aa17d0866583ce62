"""The audit log table (migration 0005): append and page backwards, newest first.

:class:`AuditRows` is mixed into :class:`~meshscale.control.db.sqlstore.SQLStore`, so the
SQLite and PostgreSQL stores share it. Rows are never updated or deleted by the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    source: str


@runtime_checkable
class AuditStore(Protocol):
    def insert_audit(self, entry: AuditEntry) -> int: ...

    def list_audit(
        self, limit: int = 100, before: int | None = None, actor: str = "", action: str = ""
    ) -> list[AuditEntry]: ...


class AuditRows:
    """SQL for the audit log over a SQLStore's ``_exec``, ``_insert`` and ``_param``."""

    def _exec(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        raise NotImplementedError

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        raise NotImplementedError

    @staticmethod
    def _param(name: str) -> str:
        raise NotImplementedError

    def insert_audit(self, entry: AuditEntry) -> int:
        row = {
            "at": entry.at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": entry.actor[:200], "action": entry.action[:100],
            "target": entry.target[:500], "source": entry.source[:100],
            "detail": json.dumps(entry.detail, sort_keys=True, default=str)[:65536],
        }  # fmt: skip
        return self._insert("audit_log", row)

    def list_audit(
        self, limit: int = 100, before: int | None = None, actor: str = "", action: str = ""
    ) -> list[AuditEntry]:
        """Newest first: up to ``limit`` entries with id < ``before``, filtered by exact
        ``actor`` and ``action`` when given."""
        p = self._param
        where: list[str] = []
        args: dict[str, Any] = {}
        if before is not None:
            where.append(f"id < {p('before')}")
            args["before"] = before
        if actor:
            where.append(f"actor = {p('actor')}")
            args["actor"] = actor
        if action:
            where.append(f"action = {p('action')}")
            args["action"] = action
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        limit = max(1, min(limit, MAX_PAGE))
        rows = self._exec(f"SELECT * FROM audit_log {clause}ORDER BY id DESC LIMIT {limit}", args)
        return [
            AuditEntry(int(r["id"]), datetime.fromisoformat(str(r["at"])), str(r["actor"]),
                       str(r["action"]), str(r["target"]), _detail(str(r["detail"])),
                       str(r["source"]))
            for r in rows
        ]  # fmt: skip


def _detail(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}
