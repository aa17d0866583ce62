"""The audit log: every admin change, who made it, when and from where (append-only).

``record`` is the API's audit hook (:class:`meshscale.control.api.server.Change`); entries go
to the store's ``audit_log`` table (migration 0005), or to a bounded list in memory when the
store has none (test stores). Each record is its own write, after the change it records
committed: a crash between the two loses the record, never the change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

from meshscale.control.db.audit import AuditEntry, AuditStore
from meshscale.control.state.core import StateCore

MEMORY_ENTRIES = 10000


class AuditLog:
    def __init__(self, core: StateCore) -> None:
        self.core = core
        inner = getattr(core.store, "inner", core.store)
        self.store: AuditStore | None = inner if isinstance(inner, AuditStore) else None
        self._memory: deque[AuditEntry] = deque(maxlen=MEMORY_ENTRIES)

    def record(self, actor: str, action: str, target: str, detail: dict[str, Any],
               source: str) -> AuditEntry:  # fmt: skip
        entry = AuditEntry(0, self.core.clock(), actor, action, target, detail, source)
        with self.core.lock:
            if self.store is not None:
                with self.core.store.transaction():
                    new_id = self.store.insert_audit(entry)
            else:
                new_id = (self._memory[-1].id if self._memory else 0) + 1
            entry = replace(entry, id=new_id)
            if self.store is None:
                self._memory.append(entry)
        return entry

    def list(self, limit: int = 100, before: int | None = None, actor: str = "",
             action: str = "") -> list[AuditEntry]:  # fmt: skip
        """Newest first, ``limit`` entries older than id ``before``."""
        with self.core.lock:
            if self.store is not None:
                return self.store.list_audit(limit, before, actor, action)
            out = [
                e for e in reversed(self._memory)
                if (before is None or e.id < before) and (not actor or e.actor == actor)
                and (not action or e.action == action)
            ]  # fmt: skip
            return out[:limit]
