"""State: the one owner of the control server's state (Headscale's state.go idea).

Every write that crosses subsystems (protocol handlers, REST API, CLI, garbage
collection) goes through a State method. State keeps the live snapshot in memory, indexed
by id, machine key, node key and given name, persists each write to the store *before*
returning (so an acknowledged registration survives ``kill -9``), and then publishes
change events to subscribers (the map batcher computes deltas from them).

State is a composition: one :class:`~.core.StateCore` (lock, write block, change bus,
tables, policy manager) shared by five parts, each written once::

    Keys            pre-auth keys and API keys                (keys.py)
    Users           users; deleting one deletes its keys      (users.py)
    Nodes           registration, client updates, admin edits (nodes.py)
    Registrations   pending interactive logins                (registrations.py)
    Shares          node sharing across tailnets              (shares.py)
    Tailnets        several tailnets on one server            (tailnets.py)

State's API is those parts' methods, bound as State attributes (see ``__init__``), plus
what crosses parts: the policy text, DNS notices, garbage collection and closing.

Methods are synchronous and thread-safe (one re-entrant lock). They are meant to be
called from the event loop thread; a subscription created inside a running loop is
woken thread-safely if a write happens on another thread. Time and randomness come from
the ``clock`` and ``rand`` callables so tests are deterministic.

Durable writes (users, keys, registrations, admin edits) are flushed to disk before
returning; soft state (endpoints, Hostinfo, online) is committed without a flush, see
:mod:`meshscale.control.db.sqlite`.

Errors are :class:`~meshscale.control.models.StateError` subclasses whose message is safe
to show (``RegisterResponse.Error``, REST error bodies, CLI output).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from meshscale.control.db.repository import PolicyVersion, Store
from meshscale.control.models import (
    DEFAULT_TAILNET,
    ChangeSubscription,
    DNSChanged,
    InvalidArgument,
    NodeChanged,
    NodeID,
    NotFound,
    TailnetID,
)
from meshscale.control.state.audit import AuditLog
from meshscale.control.state.core import StateCore
from meshscale.control.state.keys import Keys
from meshscale.control.state.nodes import Nodes
from meshscale.control.state.options import StateOptions, utcnow
from meshscale.control.state.registrations import Registrations
from meshscale.control.state.shares import Shares, guest_feed
from meshscale.control.state.tailnets import Tailnets
from meshscale.control.state.users import Users
from meshscale.policy import AllowAll, PolicyError, PolicyManager, check_policy


@dataclass(frozen=True, slots=True)
class GCResult:
    removed_nodes: tuple[NodeID, ...]
    expired_registrations: int
    expired_nodes: tuple[NodeID, ...] = ()  # keys that expired since the previous gc


class State:
    """The control server's users, nodes, keys and pending registrations.

    Parameters:
      store: where writes are persisted (``SQLiteStore``); loaded once at construction.
      options: address prefixes, allocation strategy and timeouts.
      clock: returns the current UTC-aware datetime.
      rand: ``rand(n)`` returns n random bytes (key secrets, registration ids).
      randbelow: ``randbelow(n)`` for random address allocation.
      policy: the default tailnet's policy manager (default
        :class:`~meshscale.policy.AllowAll`); every other tailnet gets its own from
        ``policy_factory`` (default: one like ``policy``).
    """

    def __init__(
        self,
        store: Store,
        options: StateOptions | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[int], bytes] = os.urandom,
        randbelow: Callable[[int], int] = secrets.randbelow,
        policy: PolicyManager | None = None,
        policy_factory: Callable[[], PolicyManager] | None = None,
    ) -> None:
        self.core = core = StateCore(
            store,
            options or StateOptions(),
            clock=clock,
            rand=rand,
            randbelow=randbelow,
            policy=policy or AllowAll(),
            policy_factory=policy_factory,
        )
        self.store = core.store
        self.options = core.options
        self.clock = clock
        self.rand = rand
        self.randbelow = randbelow
        self._last_gc: datetime | None = None
        self.keys = keys = Keys(core)
        self.users = users = Users(core, keys)
        self.shares = shares = Shares(core)
        core.set_guest_feed(guest_feed)
        self.nodes = nodes = Nodes(core, keys, shares)
        self.registrations = regs = Registrations(core, nodes)
        self.tailnets = tailnets = Tailnets(core)
        self.create_tailnet = tailnets.create_tailnet
        self.list_tailnets = tailnets.list_tailnets
        self.get_tailnet = core.get_tailnet
        self.get_tailnet_by_name = tailnets.get_tailnet_by_name
        self.rename_tailnet = tailnets.rename_tailnet
        self.delete_tailnet = tailnets.delete_tailnet
        self.tailnet_of_user = core.tailnet_of_user
        self.set_tailnet_base_domain = tailnets.set_base_domain
        self.tailnet_base_domain = core.tailnet_base_domain
        # The API. Each method lives in the part that owns its tables.
        self.create_user = users.create_user
        self.sign_in_user = users.sign_in_user
        self.get_user = core.get_user
        self.get_user_by_name = users.get_user_by_name
        self.list_users = users.list_users
        self.users_by_id = users.users_by_id
        self.rename_user = users.rename_user
        self.delete_user = users.delete_user

        self.create_preauth_key = keys.create_preauth_key
        self.list_preauth_keys = keys.list_preauth_keys
        self.get_preauth_key = keys.get_preauth_key
        self.expire_preauth_key = keys.expire_preauth_key
        self.delete_preauth_key = keys.delete_preauth_key
        self.validate_preauth_key = keys.validate_preauth_key
        self.use_preauth_key = keys.use_preauth_key  # atomic consume
        self.create_api_key = keys.create_api_key
        self.list_api_keys = keys.list_api_keys
        self.get_api_key = keys.get_api_key
        self.expire_api_key = keys.expire_api_key
        self.delete_api_key = keys.delete_api_key
        self.verify_api_key = keys.verify_api_key  # constant time

        self.register_with_preauth_key = nodes.register_with_preauth_key
        self.register_node = nodes.register_node
        self.begin_registration = regs.begin_registration
        self.get_registration = regs.get_registration
        self.list_registrations = regs.list_registrations
        self.complete_registration = regs.complete_registration
        self.cancel_registration = regs.cancel_registration
        self.expire_registrations = regs.expire_registrations

        self.get_node = core.get_node
        self.get_node_by_machine_key = core.node_by_machine_key
        self.get_node_by_node_key = core.node_by_node_key
        self.get_node_by_given_name = core.node_by_name
        self.list_nodes = nodes.list_nodes
        self.peers_of = nodes.peers_of
        self.packet_filter = nodes.packet_filter
        self.can_see = nodes.can_see
        self.viewers_of = nodes.viewers_of
        self.self_caps = nodes.self_caps
        self.routes_view = nodes.routes_view

        self.update_node = nodes.update_node
        self.update_endpoints = nodes.update_endpoints
        self.update_hostinfo = nodes.update_hostinfo
        self.set_online = nodes.set_online
        self.set_route_standby = nodes.set_route_standby
        self.touch = nodes.touch
        self.logout = nodes.logout

        self.expire_node = nodes.expire_node
        self.set_expiry = nodes.set_expiry
        self.delete_node = nodes.delete_node
        self.rename_node = nodes.rename_node
        self.set_tags = nodes.set_tags
        self.move_node = nodes.move_node
        self.approve_routes = nodes.approve_routes
        self.restore_node = nodes.restore_node
        self.share_node = shares.share_node
        self.unshare_node = shares.unshare_node
        self.list_shares = shares.list_shares
        self.share_view = shares.share_view
        self.shared_domains = shares.shared_domains
        self.has_shares = shares.has_shares
        self.backfill_ips = nodes.backfill_ips
        self.audit = AuditLog(core)  # admin changes: who, what, when, from where

    @classmethod
    def open(
        cls,
        path: str | Path,
        options: StateOptions | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[int], bytes] = os.urandom,
        randbelow: Callable[[int], int] = secrets.randbelow,
        policy: PolicyManager | None = None,
    ) -> State:
        """Open (creating and migrating if needed) an SQLite database at ``path``."""
        from meshscale.control.db.sqlite import SQLiteStore

        return cls(SQLiteStore(path), options, clock=clock, rand=rand, randbelow=randbelow,
                   policy=policy)  # fmt: skip

    @property
    def generation(self) -> int:
        """Bumped on every published change."""
        return self.core.generation

    def close(self) -> None:
        with self.core.lock:
            self.registrations.close()
            self.core.close()

    def subscribe(self, max_queue: int = 4096) -> ChangeSubscription:
        """A new subscription to change events (see models.Change).

        ``max_queue`` bounds memory per subscriber; past it the queue is replaced by one
        ResyncRequired event (a stuck map session must not grow the server without limit).
        """
        return self.core.subscribe(max_queue)

    # ---- policy and DNS ----------------------------------------------------------------

    @property
    def policy(self) -> str | None:
        """The policy text (None: none was ever set)."""
        return self.core.policy_text

    @property
    def policy_version(self) -> PolicyVersion | None:
        """The version in force (None: no policy, or one stored before history existed)."""
        return self.core.policy_version

    def policy_of(self, tailnet: TailnetID = DEFAULT_TAILNET) -> str | None:
        """A tailnet's policy text (None: none was ever set)."""
        with self.core.lock:
            self.core.get_tailnet(tailnet)
            return self.core.policy_texts[tailnet][0]

    def policy_version_of(self, tailnet: TailnetID = DEFAULT_TAILNET) -> PolicyVersion | None:
        with self.core.lock:
            self.core.get_tailnet(tailnet)
            return self.core.policy_texts[tailnet][1]

    def set_policy(
        self, data: str, source: str = "api", tailnet: TailnetID = DEFAULT_TAILNET
    ) -> PolicyVersion:
        """Store a new policy text for ``tailnet`` as a new version; its policy manager
        checks it first (InvalidArgument if it cannot be used or a ``tests`` entry fails,
        and nothing changes: the policy in force stays). Publishes PolicyChanged for the
        nodes whose answers moved."""
        core = self.core
        with core.write():
            core.get_tailnet(tailnet)
            try:
                change = core.policy_of(tailnet).set_policy(data)
            except PolicyError as exc:
                raise InvalidArgument(f"policy: {exc}") from exc
            # (A store failure rolls back, and write() reloads the manager from the store.)
            version = core.store.set_policy(data, source, tailnet)
            core.policy_texts[tailnet] = (data, version)
            core.policy_changed(change)
            self.nodes.auto_approve_all(tailnet)  # a new policy may approve advertised routes
            return version

    def policy_history(
        self, limit: int = 100, tailnet: TailnetID = DEFAULT_TAILNET
    ) -> list[PolicyVersion]:
        """The newest ``limit`` accepted policy versions of ``tailnet``, newest first."""
        with self.core.lock:
            self.core.get_tailnet(tailnet)
            return self.core.store.policy_history(limit, tailnet)

    def rollback_policy(self, version: int, tailnet: TailnetID = DEFAULT_TAILNET) -> PolicyVersion:
        """Put version ``version``'s text back in force, as a new version (history is
        append-only). The text is checked again against today's tailnet."""
        with self.core.lock:
            self.core.get_tailnet(tailnet)
            old = self.core.store.policy_version(version, tailnet)
            if old is None:
                raise NotFound(f"policy version {version} not found")
            return self.set_policy(old.data, f"rollback to {version}", tailnet)

    def check_policy(self, data: str, tailnet: TailnetID = DEFAULT_TAILNET) -> list[str]:
        """Validate ``data`` against the tailnet's users and nodes and run its ``tests``,
        without applying it. Returns the warnings; raises InvalidArgument."""
        with self.core.lock:
            self.core.get_tailnet(tailnet)
            users = [u for u in self.core.users.values() if u.tailnet_id == tailnet]
            nodes = [n for n in self.core.nodes.values() if n.tailnet_id == tailnet]
        try:
            # With OIDC on, the engine reads undefined group:NAMEs as IdP groups.
            idp = bool(getattr(self.core.policy, "idp_groups", False))
            policy = check_policy(data, users, nodes, idp_groups=idp)
        except PolicyError as exc:
            raise InvalidArgument(f"policy: {exc}") from exc
        return list(policy.warnings)

    def notify_dns_changed(self) -> None:
        """Tell subscribers the DNS configuration changed (config reload)."""
        with self.core.write():
            self.core.emit(DNSChanged())

    # ---- identity revocation -----------------------------------------------------------

    def revoke_identity(self, issuer: str, subject: str) -> tuple[NodeID, ...]:
        """Expire, now, every still-valid untagged node of the OIDC user (issuer, subject).

        For an identity the provider still vouches for but the allow-list no longer admits
        (issue #12): its nodes go NeedsLogin and drop out of peers' maps through the same
        expiry path as ``nodes expire``. Tagged nodes belong to their tags, not the user,
        and are left alone (as in Tailscale). Returns the nodes expired by this call; an
        unknown identity, or one whose nodes are already expired, gives ``()``.
        """
        core = self.core
        with core.write():
            now = core.clock()
            owners = {
                u.id
                for u in core.users.values()
                if issuer and subject and u.oidc_issuer == issuer and u.oidc_subject == subject
            }
            ids = tuple(
                sorted(
                    n.id
                    for n in core.nodes.values()
                    if n.user_id in owners and not n.tags and not n.is_expired(now)
                )
            )
            for nid in ids:
                self.nodes.expire_node(nid, at=now)
            return ids

    # ---- maintenance -------------------------------------------------------------------

    def gc(self) -> GCResult:
        """Periodic upkeep; serve calls it every ``node_update_check_interval``.

        Deletes ephemeral nodes offline longer than the inactivity timeout, drops expired
        pending registrations, and publishes ``NodeChanged(fields={"expiry"})`` for every
        node whose key expired since the previous call: nothing is written when a key
        expires, yet peers must learn it (Headscale issues #2033, #3470).
        """
        core = self.core
        with core.lock:
            now = core.clock()
            expired = self.registrations.expire_registrations()
            cutoff = now - core.options.ephemeral_inactivity_timeout
            stale = [
                n.id
                for n in core.nodes.values()
                if n.ephemeral
                and not n.online
                and (n.last_seen or n.created_at or cutoff) <= cutoff
            ]
            for nid in stale:
                self.nodes.delete_node(nid)
            since = self._last_gc if self._last_gc is not None else now
            crossed = sorted(
                n.id
                for n in core.nodes.values()
                if n.expiry is not None and since < n.expiry <= now
            )
            self._last_gc = now
            if crossed:
                with core.write(durable=False):
                    for nid in crossed:
                        core.emit(NodeChanged(nid, frozenset({"expiry"})))
            return GCResult(tuple(stale), expired, tuple(crossed))
