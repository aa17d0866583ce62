"""Interactive registrations (docs/protocol/control.md §3.4): State's part for pending logins.

A client without an auth key gets ``AuthURL = <server_url>/register/<id>`` and then
long-polls with ``Followup``; the protocol layer awaits ``PendingRegistration.wait()``.
An admin completes it (``meshscale-control nodes register --user U --key <id>``) or it
expires after ``StateOptions.registration_ttl``. Pending registrations live in memory
only: a server restart drops them and the client simply starts a new one.
"""

from __future__ import annotations

from typing import Any, Final

from meshscale.control.models import (
    Node,
    NotFound,
    PendingRegistration,
    RegisterMethod,
    RegistrationID,
    UserID,
)
from meshscale.control.state.core import StateCore
from meshscale.control.state.nodes import Nodes, check_hostinfo
from meshscale.key import MachinePublic, NodePublic

# Interactive logins waiting at once. Anyone who can reach the server can start one (a
# fresh machine key each time), so the table is bounded: at most 1024 x 64 KiB of memory.
# A full table evicts its oldest entry rather than refusing (a flood must not lock real
# users out), and one source (IPv4 address or IPv6 /64) holds at most
# MAX_PENDING_PER_SOURCE, its own oldest evicted first (issue #12 finding 3).
MAX_PENDING_REGISTRATIONS: Final = 1024
MAX_PENDING_PER_SOURCE: Final = 32


class Registrations:
    """State's pending-registration methods, over the shared core (and the nodes, which a
    completed registration admits)."""

    def __init__(self, core: StateCore, nodes: Nodes) -> None:
        self.core = core
        self.nodes = nodes
        # Insertion order is age order: the first entry is the oldest.
        self._pending: dict[RegistrationID, PendingRegistration] = {}
        self._source: dict[RegistrationID, str] = {}
        self.max_pending = MAX_PENDING_REGISTRATIONS
        self.max_per_source = MAX_PENDING_PER_SOURCE
        self.evicted = 0  # entries dropped to make room (a counter for tests and metrics)

    def _drop(self, reg_id: RegistrationID, reason: str) -> None:
        reg = self._pending.pop(reg_id, None)
        self._source.pop(reg_id, None)
        if reg is not None:
            reg.fail(reason)

    def _make_room(self, source: str) -> None:
        mine = [rid for rid, src in self._source.items() if src == source]
        while len(mine) >= self.max_per_source:
            self._drop(mine.pop(0), "registration evicted: too many from this address")
            self.evicted += 1
        while len(self._pending) >= self.max_pending:
            self._drop(next(iter(self._pending)), "registration evicted: too many pending")
            self.evicted += 1

    def begin_registration(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        hostinfo: dict[str, Any] | None = None,
        *,
        ephemeral: bool = False,
        source: str = "",
    ) -> PendingRegistration:
        """Start an interactive registration (docs/protocol/control.md §3.4); in memory only.

        The protocol layer answers ``AuthURL = <server_url>/register/<reg.id>`` and awaits
        ``reg.wait()`` on the followup. An older pending registration of the same machine
        is failed ("superseded"). ``source`` is where the request came from (its quota).
        """
        core = self.core
        hi = hostinfo or {}
        check_hostinfo(hi)
        with core.lock:
            self.expire_registrations()
            for old in [r for r in self._pending.values() if r.machine_key == machine_key]:
                self._drop(old.id, "registration superseded")
            self._make_room(source)
            reg_id = RegistrationID(core.rand(18).hex())
            reg = PendingRegistration(
                reg_id,
                machine_key,
                node_key,
                hi,
                core.clock() + core.options.registration_ttl,
                ephemeral,
            )
            self._pending[reg_id] = reg
            self._source[reg_id] = source
            return reg

    def get_registration(self, reg_id: str) -> PendingRegistration | None:
        with self.core.lock:
            reg = self._pending.get(RegistrationID(reg_id))
            if reg is not None and reg.expires_at <= self.core.clock():
                self._drop(reg.id, "registration expired")
                return None
            return reg

    def list_registrations(self) -> list[PendingRegistration]:
        with self.core.lock:
            self.expire_registrations()
            return list(self._pending.values())

    def complete_registration(
        self, reg_id: str, user_id: UserID, method: RegisterMethod = RegisterMethod.CLI
    ) -> Node:
        """Admit a pending registration for ``user_id`` (``nodes register --key``, OIDC)."""
        with self.core.write():
            reg = self.get_registration(reg_id)
            if reg is None:
                raise NotFound(f"registration {reg_id[:40]!r} not found or expired")
            node = self.nodes.register_locked(
                reg.machine_key,
                reg.node_key,
                user_id,
                reg.hostinfo,
                method,
                None,
                reg.ephemeral,
                (),
            )
            self._pending.pop(reg.id, None)
            self._source.pop(reg.id, None)
        reg.resolve(node)  # after commit: the waiter may answer the client right away
        return node

    def cancel_registration(self, reg_id: str, reason: str = "registration rejected") -> None:
        with self.core.lock:
            reg = self._pending.get(RegistrationID(reg_id))
            if reg is None:
                raise NotFound(f"registration {reg_id[:40]!r} not found")
            self._drop(reg.id, reason)

    def expire_registrations(self) -> int:
        with self.core.lock:
            now = self.core.clock()
            gone = [r for r in self._pending.values() if r.expires_at <= now]
            for reg in gone:
                self._drop(reg.id, "registration expired")
            return len(gone)

    def close(self) -> None:
        """Fail every pending registration (the server is shutting down)."""
        with self.core.lock:
            for reg in self._pending.values():
                reg.fail("server shutting down")
            self._pending.clear()
            self._source.clear()
