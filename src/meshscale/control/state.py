"""State: the one owner of the control server's state (Headscale's state.go idea).

Every write that crosses subsystems (protocol handlers, REST API, CLI, garbage
collection) goes through a :class:`State` method. State keeps the live snapshot in
memory, indexed by id, machine key, node key and given name, persists each write to the
store *before* returning (so an acknowledged registration survives ``kill -9``), and then
publishes change events to subscribers (the map batcher computes deltas from them).

Theory of operation::

    caller ──> State.method()            sync, fast: one short DB transaction
                 │ checks (may raise; nothing written yet)
                 │ with self._write():   lock + store transaction + event buffer
                 │   store.insert/update/delete ...
                 │   memory indexes updated
                 │ commit ──> events published to every ChangeSubscription
                 │ failure after a write ─> rollback, memory reloaded from the store
                 v
               frozen snapshot objects returned (User, Node, PreAuthKey, ...)

Durable writes (users, keys, registrations, admin edits) are flushed to disk before
returning; soft state (endpoints, Hostinfo, online) is committed without a flush
(``_write(durable=False)``), see :mod:`meshscale.control.db.sqlite`.

Methods are synchronous and thread-safe (one re-entrant lock). They are meant to be
called from the event loop thread; a subscription created inside a running loop is
woken thread-safely if a write happens on another thread. Time and randomness come from
the ``clock`` and ``rand`` callables so tests are deterministic.

The user methods (:mod:`meshscale.control.users`), the pre-auth key and API key methods
(:mod:`meshscale.control.keys`) and the pending registration methods
(:mod:`meshscale.control.registrations`) are written apart and mixed in; they use the
same lock, transaction and event plumbing.

Errors are :class:`~meshscale.control.models.StateError` subclasses whose message is safe
to show (``RegisterResponse.Error``, REST error bodies, CLI output).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

from meshscale.control.db.repository import IntegrityError, Store
from meshscale.control.ipalloc import AllocationStrategy, IPAllocator
from meshscale.control.keys import KeyMethods
from meshscale.control.models import (
    APIKey,
    APIKeyID,
    Change,
    ChangeSubscription,
    Conflict,
    DNSChanged,
    InvalidArgument,
    IPPrefix,
    Node,
    NodeAdded,
    NodeChanged,
    NodeID,
    NodeRemoved,
    NotFound,
    PendingRegistration,
    PolicyChanged,
    PreAuthKey,
    PreAuthKeyID,
    RegisterMethod,
    RegistrationID,
    User,
    UserID,
)
from meshscale.control.names import unique_given_name, validate_given_name, validate_tags
from meshscale.control.registrations import RegistrationMethods, check_hostinfo
from meshscale.control.users import UserMethods
from meshscale.key import DiscoPublic, MachinePublic, NodePublic

DEFAULT_PREFIX_V4: Final = ipaddress.IPv4Network("100.64.0.0/10")  # Tailscale's CGNAT range
DEFAULT_PREFIX_V6: Final = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")  # Tailscale's ULA
MAX_ROUTES: Final = 1024  # approved routes per node



def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StateOptions:
    """The parts of the configuration State needs (built from ControlConfig)."""

    prefix_v4: ipaddress.IPv4Network | None = DEFAULT_PREFIX_V4
    prefix_v6: ipaddress.IPv6Network | None = DEFAULT_PREFIX_V6
    allocation: AllocationStrategy = AllocationStrategy.SEQUENTIAL
    ephemeral_inactivity_timeout: timedelta = timedelta(minutes=30)
    registration_ttl: timedelta = timedelta(minutes=15)  # a pending interactive login
    node_expiry: timedelta | None = None  # None: node keys never expire (node.expiry: 0)


class _CountingStore:
    """A Store that counts the calls that may change the database (see State._write)."""

    MUTATORS: Final = frozenset({
        "insert_user", "update_user", "delete_user", "insert_node", "update_node",
        "delete_node", "insert_preauth_key", "update_preauth_key", "delete_preauth_key",
        "consume_preauth_key", "insert_api_key", "update_api_key", "delete_api_key",
        "set_policy",
    })

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.MUTATORS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            return attr(*args, **kwargs)

        return counted


@dataclass(frozen=True, slots=True)
class GCResult:
    removed_nodes: tuple[NodeID, ...]
    expired_registrations: int
    expired_nodes: tuple[NodeID, ...] = ()  # keys that expired since the previous gc


def parse_routes(routes: Iterable[str | IPPrefix]) -> tuple[IPPrefix, ...]:
    out: list[IPPrefix] = []
    for r in routes:
        try:
            out.append(r if not isinstance(r, str) else ipaddress.ip_network(r, strict=True))
        except ValueError as exc:
            raise InvalidArgument(f"invalid route {str(r)[:60]!r}: {exc}") from exc
    if len(out) > MAX_ROUTES:
        raise InvalidArgument(f"too many routes ({len(out)} > {MAX_ROUTES})")
    return tuple(sorted(set(out), key=lambda n: (n.version, n)))


class State(UserMethods, KeyMethods, RegistrationMethods):
    """The control server's users, nodes, keys and pending registrations.

    Parameters:
      store: where writes are persisted (``SQLiteStore``); loaded once at construction.
      options: address prefixes, allocation strategy and timeouts.
      clock: returns the current UTC-aware datetime.
      rand: ``rand(n)`` returns n random bytes (key secrets, registration ids).
      randbelow: ``randbelow(n)`` for random address allocation.
    """

    def __init__(
        self,
        store: Store,
        options: StateOptions | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[int], bytes] = os.urandom,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self._counter = _CountingStore(store)
        self.store: Store = cast(Store, self._counter)
        self.options = options or StateOptions()
        self.clock = clock
        self.rand = rand
        self.randbelow = randbelow
        self._lock = threading.RLock()
        self._subs: list[ChangeSubscription] = []
        self._events: list[Change] | None = None  # buffered inside _write()
        self._pending: dict[RegistrationID, PendingRegistration] = {}
        self._online: dict[NodeID, bool] = {}
        self.generation = 0  # bumped on every published change
        self._last_gc: datetime | None = None
        self._load()

    @classmethod
    def open(cls, path: str | Path, options: StateOptions | None = None, **kw: Any) -> State:
        """Open (creating and migrating if needed) an SQLite database at ``path``."""
        from meshscale.control.db.sqlite import SQLiteStore

        return cls(SQLiteStore(path), options, **kw)

    def close(self) -> None:
        with self._lock:
            for sub in list(self._subs):
                sub.close()
            for reg in self._pending.values():
                reg.fail("server shutting down")
            self._pending.clear()
            self.store.close()

    # ---- snapshot and write plumbing ---------------------------------------------------

    def _load(self) -> None:
        snap = self.store.load()
        self._users: dict[UserID, User] = {u.id: u for u in snap.users}
        self._nodes: dict[NodeID, Node] = {}
        self._by_machine: dict[MachinePublic, NodeID] = {}
        self._by_node_key: dict[NodePublic, NodeID] = {}
        self._by_name: dict[str, NodeID] = {}
        self._alloc = IPAllocator(
            self.options.prefix_v4, self.options.prefix_v6, self.options.allocation,
            randbelow=self.randbelow,
        )
        for node in snap.nodes:
            self._index(replace(node, online=self._online.get(node.id, False)))
            for addr in node.addresses():
                self._alloc.mark_used(addr)
        self._paks: dict[PreAuthKeyID, PreAuthKey] = {k.id: k for k in snap.preauth_keys}
        self._pak_by_prefix = {k.prefix: k.id for k in snap.preauth_keys}
        self._api_keys: dict[APIKeyID, APIKey] = {k.id: k for k in snap.api_keys}
        self._api_by_prefix = {k.prefix: k.id for k in snap.api_keys}
        self._policy = snap.policy

    def _index(self, node: Node) -> None:
        old = self._nodes.get(node.id)
        if old is not None:
            self._unindex(old)
        self._nodes[node.id] = node
        self._by_machine[node.machine_key] = node.id
        self._by_node_key[node.node_key] = node.id
        self._by_name[node.given_name] = node.id

    def _unindex(self, node: Node) -> None:
        self._nodes.pop(node.id, None)
        self._by_machine.pop(node.machine_key, None)
        self._by_node_key.pop(node.node_key, None)
        self._by_name.pop(node.given_name, None)

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[None]:
        """Lock, open a store transaction and buffer events; publish them on commit.

        On a failure after a store write the transaction rolls back and the memory
        snapshot is rebuilt from the store, so memory never holds a write the database
        does not. A failure before any write (a bad key, a name taken: what a client can
        cause at will) costs no reload; those paths check before they mutate memory.
        """
        with self._lock:
            if self._events is not None:  # nested: the outer block commits
                yield
                return
            self._events = []
            writes = self._counter.writes
            try:
                with self.store.transaction(durable):
                    yield
            except BaseException:
                self._events = None
                if self._counter.writes != writes:
                    allocs_before = self._alloc
                    try:
                        self._load()
                    except Exception:  # pragma: no cover - the store is gone; keep old view
                        self._alloc = allocs_before
                raise
            events, self._events = self._events, None
            if events:
                self.generation += 1
                for sub in list(self._subs):
                    sub.put_many(events)

    def _emit(self, event: Change) -> None:
        assert self._events is not None, "_emit outside _write"
        self._events.append(event)

    # ---- change bus --------------------------------------------------------------------

    def subscribe(self, max_queue: int = 4096) -> ChangeSubscription:
        """A new subscription to change events (see models.Change).

        ``max_queue`` bounds memory per subscriber; past it the queue is replaced by one
        ResyncRequired event (a stuck map session must not grow the server without limit).
        """
        with self._lock:
            sub = ChangeSubscription(max_queue, on_close=self._unsubscribe)
            self._subs.append(sub)
            return sub

    def _unsubscribe(self, sub: ChangeSubscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def notify_dns_changed(self) -> None:
        """Tell subscribers the DNS configuration changed (config reload)."""
        with self._write():
            self._emit(DNSChanged())

    # ---- nodes: lookups ----------------------------------------------------------------

    def get_node(self, node_id: NodeID) -> Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        return node

    def get_node_by_machine_key(self, machine_key: MachinePublic) -> Node | None:
        with self._lock:
            nid = self._by_machine.get(machine_key)
            return self._nodes.get(nid) if nid is not None else None

    def get_node_by_node_key(self, node_key: NodePublic) -> Node | None:
        with self._lock:
            nid = self._by_node_key.get(node_key)
            return self._nodes.get(nid) if nid is not None else None

    def get_node_by_given_name(self, name: str) -> Node | None:
        with self._lock:
            nid = self._by_name.get(name)
            return self._nodes.get(nid) if nid is not None else None

    def list_nodes(self, user_id: UserID | None = None) -> list[Node]:
        """All nodes (or one user's), sorted by id."""
        with self._lock:
            nodes = [n for n in self._nodes.values() if user_id is None or n.user_id == user_id]
            return sorted(nodes, key=lambda n: n.id)

    def peers_of(self, node_id: NodeID) -> list[Node]:
        """Every other node, sorted by id (policy filtering happens in the mapper)."""
        with self._lock:
            return sorted((n for n in self._nodes.values() if n.id != node_id), key=lambda n: n.id)

    @property
    def policy(self) -> str | None:
        return self._policy

    def set_policy(self, data: str) -> None:
        with self._write():
            self.store.set_policy(data)
            self._policy = data
            self._emit(PolicyChanged())

    # ---- nodes: registration -----------------------------------------------------------

    def register_node(
        self, machine_key: MachinePublic, node_key: NodePublic, user_id: UserID,
        hostinfo: dict[str, Any] | None = None, *,
        method: RegisterMethod = RegisterMethod.CLI, auth_key_id: PreAuthKeyID | None = None,
        ephemeral: bool = False, tags: Iterable[str] = (),
    ) -> Node:
        """Admit a device for ``user_id``; returns the node (new or re-registered).

        The machine key identifies the device (spec §3.7): a known machine keeps its id,
        addresses and given name, and gets the new node key, Hostinfo and a fresh expiry.
        A node key already bound to a *different* machine is refused (Conflict).
        """
        with self._write():
            return self._register_locked(
                machine_key, node_key, user_id, hostinfo or {}, method, auth_key_id,
                ephemeral, validate_tags(tags),
            )

    def _register_locked(
        self, machine_key: MachinePublic, node_key: NodePublic, user_id: UserID,
        hostinfo: dict[str, Any], method: RegisterMethod, auth_key_id: PreAuthKeyID | None,
        ephemeral: bool, tags: tuple[str, ...],
    ) -> Node:
        self.get_user(user_id)
        check_hostinfo(hostinfo)
        bound = self.get_node_by_node_key(node_key)
        if bound is not None and bound.machine_key != machine_key:
            raise Conflict("node key is bound to a different machine key")
        now = self.clock()
        expiry = now + self.options.node_expiry if self.options.node_expiry else None
        hostname = str(hostinfo.get("Hostname") or "")
        existing = self.get_node_by_machine_key(machine_key)
        if existing is not None:
            node = replace(
                existing, node_key=node_key, user_id=user_id, hostinfo=hostinfo,
                hostname=hostname or existing.hostname, expiry=expiry, register_method=method,
                auth_key_id=auth_key_id if auth_key_id is not None else existing.auth_key_id,
                ephemeral=ephemeral, tags=tags or existing.tags,
            )
            self.store.update_node(node)
            self._index(node)
            changed = _diff(existing, node)
            if changed:
                self._emit(NodeChanged(node.id, changed))
            return node
        given = unique_given_name(hostname or "node", lambda n: n in self._by_name)
        v4, v6 = self._alloc.allocate()  # last check before the write: it takes addresses
        node = Node(
            NodeID(0), machine_key, node_key, user_id, hostname, given, v4, v6, None,
            hostinfo, (), now, expiry, tags, (), method, auth_key_id, ephemeral, now,
        )
        try:
            node = replace(node, id=self.store.insert_node(node))
        except IntegrityError as exc:
            raise Conflict(f"cannot register node: {exc}") from exc
        self._index(node)
        self._emit(NodeAdded(node.id))
        return node

    def register_with_preauth_key(
        self, secret: str, machine_key: MachinePublic, node_key: NodePublic,
        hostinfo: dict[str, Any] | None = None, *, ephemeral: bool = False,
    ) -> Node:
        """The pre-auth key path of /machine/register (spec §3.3).

        A machine already registered with the same node key and not expired is returned
        unchanged, without consuming or re-validating the key (it must still be a key that
        exists): clients re-send their auth key on every restart, possibly a used or
        expired one. Unlike Headscale, the key's user need not own the node, because a
        machine is one node here: an admin's ``move_node`` must survive a client restart.
        A new machine, a rotated node key or an expired node needs a valid key, which is
        consumed atomically with the node write. Raises PreAuthKeyError (the text goes in
        RegisterResponse.Error) or Conflict.
        """
        with self._write():
            existing = self.get_node_by_machine_key(machine_key)
            if (
                existing is not None and existing.node_key == node_key
                and not existing.is_expired(self.clock())
            ):
                self._lookup_pak(secret)  # prove possession of a real key
                return existing
            key = self._consume_pak(secret)
            return self._register_locked(
                machine_key, node_key, key.user_id, hostinfo or {}, RegisterMethod.AUTH_KEY,
                key.id, key.ephemeral or ephemeral, key.tags,
            )

    # ---- nodes: updates from the client ------------------------------------------------

    def update_node(
        self, node_id: NodeID, *, hostinfo: dict[str, Any] | None = None,
        endpoints: Iterable[str] | None = None, disco_key: DiscoPublic | None = None,
    ) -> Node:
        """Apply what a MapRequest reports; publishes one NodeChanged naming what changed
        (nothing is written or published when nothing changed). Soft state: committed
        without a disk flush (see db/sqlite.py)."""
        with self._write(durable=False):
            old = self.get_node(node_id)
            new = old
            if hostinfo is not None:
                check_hostinfo(hostinfo)
                new = replace(new, hostinfo=hostinfo,
                              hostname=str(hostinfo.get("Hostname") or new.hostname))
            if endpoints is not None:
                new = replace(new, endpoints=tuple(endpoints))
            if disco_key is not None:
                new = replace(new, disco_key=disco_key)
            changed = _diff(old, new)
            if changed:
                self.store.update_node(new)
                self._index(new)
                self._emit(NodeChanged(node_id, changed))
            return new

    def update_endpoints(self, node_id: NodeID, endpoints: Iterable[str]) -> Node:
        return self.update_node(node_id, endpoints=endpoints)

    def update_hostinfo(
        self, node_id: NodeID, hostinfo: dict[str, Any], disco_key: DiscoPublic | None = None
    ) -> Node:
        return self.update_node(node_id, hostinfo=hostinfo, disco_key=disco_key)

    def set_online(self, node_id: NodeID, online: bool) -> Node:
        """Mark a node's map session up or down; last_seen is set (and persisted) on
        every transition (soft state, like update_node). Online state itself lives only in
        memory."""
        with self._write(durable=False):
            old = self.get_node(node_id)
            if old.online == online:
                return old
            node = replace(old, online=online, last_seen=self.clock())
            self.store.update_node(node)
            self._online[node_id] = online
            self._index(node)
            self._emit(NodeChanged(node_id, frozenset({"online", "last_seen"})))
            return node

    def touch(self, node_id: NodeID) -> None:
        """Record activity (last_seen = now) in memory only: no write and no event.

        Map sessions call this on keep-alives; the value is persisted at the next real
        write of the node (set_online(False) at the latest)."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is not None:
                self._nodes[node_id] = replace(node, last_seen=self.clock())

    def logout(self, node_id: NodeID) -> Node | None:
        """Client logout (spec §3.6): expire the node now; ephemeral nodes are deleted
        (returns None then)."""
        with self._write():
            node = self.get_node(node_id)
            if node.ephemeral:
                self.delete_node(node_id)
                return None
            return self.expire_node(node_id)

    # ---- nodes: admin ------------------------------------------------------------------

    def expire_node(self, node_id: NodeID, at: datetime | None = None) -> Node:
        """Set the node key's expiry (default: now). A past expiry logs the node out."""
        return self._edit(node_id, expiry=at if at is not None else self.clock())

    def set_expiry(self, node_id: NodeID, expiry: datetime | None) -> Node:
        """Set (or with None, remove) the node key's expiry."""
        return self._edit(node_id, expiry=expiry)

    def delete_node(self, node_id: NodeID) -> None:
        with self._write():
            node = self.get_node(node_id)
            self.store.delete_node(node_id)
            self._unindex(node)
            self._online.pop(node_id, None)
            for addr in node.addresses():
                self._alloc.release(addr)
            self._emit(NodeRemoved(node_id))

    def rename_node(self, node_id: NodeID, new_name: str) -> Node:
        """Set the MagicDNS name; it must be a valid label no other node uses."""
        validate_given_name(new_name)
        with self._write():
            other = self._by_name.get(new_name)
            if other is not None and other != node_id:
                raise Conflict(f"name {new_name!r} is used by node {other}")
            return self._edit(node_id, given_name=new_name)

    def set_tags(self, node_id: NodeID, tags: Iterable[str]) -> Node:
        return self._edit(node_id, tags=validate_tags(tags))

    def move_node(self, node_id: NodeID, user_id: UserID) -> Node:
        self.get_user(user_id)
        return self._edit(node_id, user_id=user_id)

    def approve_routes(self, node_id: NodeID, routes: Iterable[str | IPPrefix]) -> Node:
        """Replace the node's approved routes (an empty list withdraws approval)."""
        return self._edit(node_id, approved_routes=parse_routes(routes))

    def restore_node(
        self, node_id: NodeID, *, ipv4: ipaddress.IPv4Address | None,
        ipv6: ipaddress.IPv6Address | None, hostname: str | None = None,
        disco_key: DiscoPublic | None = None,
        endpoints: Iterable[str] = (), expiry: datetime | None = None,
        last_seen: datetime | None = None, created_at: datetime | None = None,
        approved_routes: Iterable[str | IPPrefix] = (),
    ) -> Node:
        """Set what an import carries verbatim, addresses included (db/headscale.py).

        Not for running servers: a node's addresses otherwise never change. Raises
        Conflict if another node holds one of the addresses.
        """
        routes = parse_routes(approved_routes)
        with self._write():
            old = self.get_node(node_id)
            for addr in (ipv4, ipv6):
                holder = next((n.id for n in self._nodes.values()
                               if addr is not None and addr in n.addresses()), None)
                if holder is not None and holder != node_id:
                    raise Conflict(f"address {addr} is held by node {holder}")
            new = replace(
                old, ipv4=ipv4, ipv6=ipv6, hostname=hostname or old.hostname,
                disco_key=disco_key, endpoints=tuple(endpoints),
                expiry=expiry, last_seen=last_seen or old.last_seen,
                created_at=created_at or old.created_at, approved_routes=routes,
            )
            self.store.update_node(new)
            for addr in old.addresses():
                self._alloc.release(addr)
            for addr in new.addresses():
                self._alloc.mark_used(addr)
            self._index(new)
            self._emit(NodeChanged(node_id, _diff(old, new)))
            return new

    def _edit(self, node_id: NodeID, **changes: Any) -> Node:
        with self._write():
            old = self.get_node(node_id)
            new = replace(old, **changes)
            changed = _diff(old, new)
            if changed:
                self.store.update_node(new)
                self._index(new)
                self._emit(NodeChanged(node_id, changed))
            return new

    # ---- maintenance -------------------------------------------------------------------

    def gc(self) -> GCResult:
        """Periodic upkeep; serve calls it every ``node_update_check_interval``.

        Deletes ephemeral nodes offline longer than the inactivity timeout, drops expired
        pending registrations, and publishes ``NodeChanged(fields={"expiry"})`` for every
        node whose key expired since the previous call: nothing is written when a key
        expires, yet peers must learn it (Headscale issues #2033, #3470).
        """
        with self._lock:
            now = self.clock()
            expired = self.expire_registrations()
            cutoff = now - self.options.ephemeral_inactivity_timeout
            stale = [
                n.id for n in self._nodes.values()
                if n.ephemeral and not n.online
                and (n.last_seen or n.created_at or cutoff) <= cutoff
            ]
            for nid in stale:
                self.delete_node(nid)
            since = self._last_gc if self._last_gc is not None else now
            crossed = sorted(
                n.id for n in self._nodes.values()
                if n.expiry is not None and since < n.expiry <= now
            )
            self._last_gc = now
            if crossed:
                with self._write(durable=False):
                    for nid in crossed:
                        self._emit(NodeChanged(nid, frozenset({"expiry"})))
            return GCResult(tuple(stale), expired, tuple(crossed))


_DIFF_FIELDS: Final = (
    "machine_key", "node_key", "disco_key", "ipv4", "ipv6", "hostname", "given_name",
    "user_id", "hostinfo", "endpoints", "last_seen", "expiry", "tags", "approved_routes",
    "register_method", "auth_key_id", "ephemeral", "online",
)


def _diff(old: Node, new: Node) -> frozenset[str]:
    return frozenset(f for f in _DIFF_FIELDS if getattr(old, f) != getattr(new, f))
