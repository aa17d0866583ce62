"""StateCore: the lock, the write block, the change bus and the in-memory tables.

State's parts (:mod:`.users`, :mod:`.keys`, :mod:`.nodes`, :mod:`.registrations`) share
one core. Theory of operation of a write::

    part.method()                      sync, fast: one short DB transaction
      │ checks (may raise; nothing written yet)
      │ with core.write():             lock + store transaction + event buffer
      │   core.store.insert/update/delete ...
      │   core tables updated (put_node / drop_node keep the indexes and the policy)
      │ commit ──> events published to every ChangeSubscription
      │ failure after a store write ─> rollback, tables reloaded from the store
      v
    frozen snapshot objects returned (User, Node, PreAuthKey, ...)

The tables are plain dicts owned by the core; parts read and replace entries only inside
``write()`` (or under ``lock`` for memory-only bookkeeping). Node writes go through
:meth:`StateCore.put_node` and :meth:`StateCore.drop_node`, which keep the indexes by
machine key, node key and given name, and feed the policy manager; the nodes whose policy
answers a write altered are published as one ``PolicyChanged(nodes)`` at commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

from meshscale.control.db.repository import PolicyVersion, Store
from meshscale.control.ipalloc import IPAllocator
from meshscale.control.models import (
    DEFAULT_TAILNET,
    DEFAULT_TAILNET_NAME,
    APIKey,
    APIKeyID,
    Change,
    ChangeSubscription,
    IPPrefix,
    Node,
    NodeChanged,
    NodeID,
    NotFound,
    PolicyChanged,
    PreAuthKey,
    PreAuthKeyID,
    Share,
    Tailnet,
    TailnetID,
    User,
    UserID,
)
from meshscale.control.state.options import StateOptions
from meshscale.control.state.primary import elect, per_node
from meshscale.control.state.store import CountingStore
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import NO_CHANGE, AllowAll, PolicyChange, PolicyEngine, PolicyManager


def same_kind(policy: PolicyManager) -> Callable[[], PolicyManager]:
    """A factory of managers like ``policy`` (one per tailnet; PolicyEngine keeps its
    ``idp_groups`` setting)."""
    if isinstance(policy, PolicyEngine):
        idp = policy.idp_groups
        return lambda: PolicyEngine(idp_groups=idp)
    if isinstance(policy, AllowAll):
        return AllowAll
    kind = type(policy)
    return lambda: kind()


class StateCore:
    """What every part of State shares (see the module docstring).

    Parameters:
      store: where writes are persisted; loaded once here.
      options: address prefixes, allocation strategy and timeouts.
      clock: returns the current UTC-aware datetime.
      rand: ``rand(n)`` returns n random bytes.
      randbelow: ``randbelow(n)`` for random address allocation.
      policy: the default tailnet's policy manager; fed every node, user and policy
        write of that tailnet.
      policy_factory: makes the manager of every other tailnet (default: same_kind).
    """

    def __init__(
        self,
        store: Store,
        options: StateOptions,
        *,
        clock: Callable[[], datetime],
        rand: Callable[[int], bytes],
        randbelow: Callable[[int], int],
        policy: PolicyManager,
        policy_factory: Callable[[], PolicyManager] | None = None,
    ) -> None:
        self.store = CountingStore(store)
        self.policy_factory = policy_factory or same_kind(policy)
        self.policies: dict[TailnetID, PolicyManager] = {DEFAULT_TAILNET: policy}
        self.options = options
        self.clock = clock
        self.rand = rand
        self.randbelow = randbelow
        self.lock = threading.RLock()
        self.generation = 0  # bumped on every published change
        self.users_gen = 0  # bumped whenever the user table may have changed
        self._subs: list[ChangeSubscription] = []
        self._events: list[Change] | None = None  # buffered inside write()
        self._policy_change: PolicyChange = NO_CHANGE  # gathered inside write()
        self.online: dict[NodeID, bool] = {}  # memory only; survives a reload
        self.primaries: dict[IPPrefix, NodeID] = {}  # HA election (primary.py), memory only
        self._routes_dirty = False
        self._guests_dirty = False  # node sharing: feed the managers at commit (shares.py)
        self.guests_fed = False  # the managers hold guests (shares.py guest_feed)
        self._guest_feed: Callable[[StateCore], PolicyChange] | None = None
        self.load()

    # ---- tables ------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)build every table from the store, and the policy manager's view."""
        snap = self.store.load()
        self.tailnets: dict[TailnetID, Tailnet] = {t.id: t for t in snap.tailnets}
        if DEFAULT_TAILNET not in self.tailnets:  # a store that predates tailnets (a fake)
            self.tailnets[DEFAULT_TAILNET] = Tailnet(DEFAULT_TAILNET, DEFAULT_TAILNET_NAME)
        self.tailnets_changed()
        self.users: dict[UserID, User] = {u.id: u for u in snap.users}
        self.users_gen += 1
        self.nodes: dict[NodeID, Node] = {}
        self.by_machine: dict[MachinePublic, NodeID] = {}
        self.by_node_key: dict[NodePublic, NodeID] = {}
        self.by_name: dict[tuple[TailnetID, str], NodeID] = {}
        self.alloc = IPAllocator(
            self.options.prefix_v4,
            self.options.prefix_v6,
            self.options.allocation,
            randbelow=self.randbelow,
        )
        for node in snap.nodes:
            self._index(replace(node, online=self.online.get(node.id, False)))
            for addr in node.addresses():
                self.alloc.mark_used(addr)
        self.paks: dict[PreAuthKeyID, PreAuthKey] = {k.id: k for k in snap.preauth_keys}
        self.pak_by_prefix: dict[str, PreAuthKeyID] = {k.prefix: k.id for k in snap.preauth_keys}
        self.api_keys: dict[APIKeyID, APIKey] = {k.id: k for k in snap.api_keys}
        self.api_by_prefix: dict[str, APIKeyID] = {k.prefix: k.id for k in snap.api_keys}
        self._routes_dirty = True
        self._reelect([])
        self.shares: dict[NodeID, dict[UserID, Share]] = {}
        for sh in snap.shares:
            if sh.node_id in self.nodes and sh.user_id in self.users:
                self.shares.setdefault(sh.node_id, {})[sh.user_id] = sh
        # One policy per tailnet: text, newest version, and the manager that evaluates it
        # over that tailnet's users and nodes only.
        self.policy_texts: dict[TailnetID, tuple[str | None, PolicyVersion | None]] = {
            t: snap.policies.get(t, (None, None)) for t in self.tailnets
        }
        if snap.policy is not None and not snap.policies:  # a store without per-tailnet rows
            self.policy_texts[DEFAULT_TAILNET] = (snap.policy, snap.policy_version)
        for t in [t for t in self.policies if t not in self.tailnets]:
            del self.policies[t]
        for t in self.tailnets:
            manager = self.policies.get(t)
            if manager is None:
                manager = self.policies[t] = self.policy_factory()
            manager.set_policy(self.policy_texts[t][0])
            manager.set_users(u for u in self.users.values() if u.tailnet_id == t)
            manager.set_nodes(n for n in self.nodes.values() if n.tailnet_id == t)
        self._guests_dirty = False
        self._feed_guests()

    @property
    def policy_text(self) -> str | None:
        """The default tailnet's policy text."""
        return self.policy_texts[DEFAULT_TAILNET][0]

    @property
    def policy_version(self) -> PolicyVersion | None:
        return self.policy_texts[DEFAULT_TAILNET][1]

    def get_tailnet(self, tailnet_id: TailnetID) -> Tailnet:
        tailnet = self.tailnets.get(tailnet_id)
        if tailnet is None:
            raise NotFound(f"tailnet {tailnet_id} not found")
        return tailnet

    def add_tailnet(self, tailnet: Tailnet) -> None:
        """A new tailnet's tables and (empty) policy manager; inside ``write()``."""
        self.tailnets[tailnet.id] = tailnet
        self.policy_texts[tailnet.id] = (None, None)
        self.tailnets_changed()
        manager = self.policies[tailnet.id] = self.policy_factory()
        manager.set_policy(None)
        manager.set_users(())
        manager.set_nodes(())

    def remove_tailnet(self, tailnet_id: TailnetID) -> None:
        """Forget an (empty) tailnet; inside ``write()``."""
        self.tailnets.pop(tailnet_id, None)
        self.tailnets_changed()
        self.policy_texts.pop(tailnet_id, None)
        self.policies.pop(tailnet_id, None)
        for key_id in [k.id for k in self.api_keys.values() if k.tailnet_id == tailnet_id]:
            self.api_by_prefix.pop(self.api_keys.pop(key_id).prefix, None)  # ON DELETE CASCADE

    def get_user(self, user_id: UserID) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    def get_node(self, node_id: NodeID) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        return node

    def node_by_machine_key(self, machine_key: MachinePublic) -> Node | None:
        with self.lock:
            nid = self.by_machine.get(machine_key)
            return self.nodes.get(nid) if nid is not None else None

    def node_by_node_key(self, node_key: NodePublic) -> Node | None:
        with self.lock:
            nid = self.by_node_key.get(node_key)
            return self.nodes.get(nid) if nid is not None else None

    def node_by_name(self, name: str, tailnet: TailnetID = DEFAULT_TAILNET) -> Node | None:
        """The node of ``tailnet`` whose MagicDNS name is ``name``."""
        with self.lock:
            nid = self.by_name.get((tailnet, name))
            return self.nodes.get(nid) if nid is not None else None

    def put_node(self, node: Node) -> None:
        """Store ``node`` (new or a new version) in the tables; inside ``write()``."""
        old = self.nodes.get(node.id)
        if (
            node.primary
            or node.hostinfo.get("RoutableIPs")
            or (old is not None and (old.primary or old.hostinfo.get("RoutableIPs")))
        ):
            self._routes_dirty = True
            node = replace(node, primary=old.primary if old is not None else ())
        self._index(node)
        if old is not None and old.tailnet_id != node.tailnet_id:
            self._policy_change |= self.policy_of(old.tailnet_id).remove_node(node.id)
        self._policy_change |= self.policy_of(node.tailnet_id).update_node(node)
        if self.shares and (self._in_share(node) or (old is not None and self._in_share(old))):
            self._guests_dirty = True

    def put_router_state(self, node: Node) -> None:
        """Store a change of memory-only router state (``route_standby``) and re-elect at
        commit; no policy input changes."""
        self._routes_dirty = True
        self._index(node)

    def drop_node(self, node: Node) -> None:
        """Remove ``node`` from the tables; inside ``write()``."""
        if node.primary or node.hostinfo.get("RoutableIPs"):
            self._routes_dirty = True
        self._unindex(node)
        self.online.pop(node.id, None)
        self._policy_change |= self.policy_of(node.tailnet_id).remove_node(node.id)
        if self.shares and self._in_share(node):  # its share rows go by ON DELETE CASCADE
            self.shares.pop(node.id, None)
            self._guests_dirty = True

    def users_changed(self, tailnet: TailnetID | None = None) -> None:
        """Tell the policy managers (of ``tailnet``, else every one) the user table
        changed; inside ``write()``."""
        self.users_gen += 1
        for t in self.tailnets if tailnet is None else (tailnet,):
            users = (u for u in self.users.values() if u.tailnet_id == t)
            self._policy_change |= self.policy_of(t).set_users(users)
        for nid, by_user in list(self.shares.items()):  # a deleted user's shares went too
            gone = [u for u in by_user if u not in self.users]
            for u in gone:
                del by_user[u]
                self._guests_dirty = True
            if not by_user:
                del self.shares[nid]

    # ---- node sharing (shares.py) ------------------------------------------------------

    def _in_share(self, node: Node) -> bool:
        return node.id in self.shares or any(node.user_id in u for u in self.shares.values())

    def shares_changed(self, nodes: set[NodeID]) -> None:
        """A share was added or removed; ``nodes`` (the shared node and the recipient's
        devices) get new maps at commit, and the managers are fed; inside ``write()``."""
        self._policy_change |= PolicyChange(nodes=frozenset(int(n) for n in nodes))
        self._guests_dirty = True

    def set_guest_feed(self, feed: Callable[[StateCore], PolicyChange]) -> None:
        """Install the share part's feed of the managers (shares.py ``guest_feed``) and
        run it once for what the store loaded."""
        self._guest_feed = feed
        with self.lock:
            self._feed_guests()

    def _feed_guests(self) -> PolicyChange:
        return self._guest_feed(self) if self._guest_feed is not None else NO_CHANGE

    def tailnet_of(self, node: Node) -> TailnetID:
        """The tailnet a node belongs to (its user's; State keeps the two equal)."""
        return node.tailnet_id

    def tailnet_of_user(self, user_id: UserID) -> TailnetID:
        user = self.users.get(user_id)
        return DEFAULT_TAILNET if user is None else user.tailnet_id

    def tailnet_ids(self) -> list[TailnetID]:
        return sorted(self.tailnets)

    @property
    def policy(self) -> PolicyManager:
        """The default tailnet's policy manager."""
        return self.policies[DEFAULT_TAILNET]

    def policy_of(self, tailnet: int) -> PolicyManager:
        """The policy manager that evaluates ``tailnet``'s policy (a tailnet deleted under
        a reader: an empty AllowAll, which knows no node)."""
        return self.policies.get(TailnetID(tailnet)) or AllowAll()

    def tailnet_base_domain(self, node_id: NodeID) -> str | None:
        """The MagicDNS base domain of the node's tailnet if it has its own (None: the
        server's dns.base_domain, or the node is gone)."""
        if not self.any_base_domain:  # every map asks: the usual answer costs no lock
            return None
        with self.lock:
            node = self.nodes.get(node_id)
            tailnet = None if node is None else self.tailnets.get(node.tailnet_id)
            return None if tailnet is None else tailnet.base_domain

    @property
    def any_base_domain(self) -> bool:
        """Some tailnet has a MagicDNS base domain of its own."""
        return self._any_base_domain

    def tailnets_changed(self) -> None:
        """Recount what the maps read of the tailnets; after any tailnet write."""
        self._any_base_domain = any(t.base_domain for t in self.tailnets.values())

    def fqdn_in_own_tailnet(self, node: Node) -> str:
        """A node's MagicDNS name under its own tailnet's base domain; "" when that
        tailnet has none (the viewer's, that is the server's dns.base_domain)."""
        tailnet = self.tailnets.get(node.tailnet_id)
        if tailnet is None or not tailnet.base_domain:
            return ""
        return f"{node.given_name}.{tailnet.base_domain}."

    def policy_changed(self, change: PolicyChange) -> None:
        """Publish ``change`` (the manager's answer to a new input) at commit."""
        self._policy_change |= change

    def _index(self, node: Node) -> None:
        old = self.nodes.get(node.id)
        if old is not None:
            self._unindex(old)
        self.nodes[node.id] = node
        self.by_machine[node.machine_key] = node.id
        self.by_node_key[node.node_key] = node.id
        self.by_name[(node.tailnet_id, node.given_name)] = node.id

    def _unindex(self, node: Node) -> None:
        self.nodes.pop(node.id, None)
        self.by_machine.pop(node.machine_key, None)
        self.by_node_key.pop(node.node_key, None)
        self.by_name.pop((node.tailnet_id, node.given_name), None)

    # ---- the write block ---------------------------------------------------------------

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[None]:
        """Lock, open a store transaction and buffer events; publish them on commit.

        On a failure after a store write the transaction rolls back and the tables are
        rebuilt from the store, so memory never holds a write the database does not. A
        failure before any write costs no reload; parts check before they mutate memory.
        ``durable=False`` is for soft state (see :mod:`meshscale.control.db.sqlite`).
        """
        with self.lock:
            if self._events is not None:  # nested: the outer block commits
                yield
                return
            self._events = []
            self._policy_change = NO_CHANGE
            writes = self.store.writes
            try:
                with self.store.transaction(durable):
                    yield
            except BaseException:
                self._events = None
                if self.store.writes != writes:
                    allocs_before = self.alloc
                    try:
                        self.load()
                    except Exception:  # pragma: no cover - the store is gone; keep old view
                        self.alloc = allocs_before
                raise
            events, self._events = self._events, None
            if self._routes_dirty:
                self._reelect(events)
            if self._guests_dirty:
                self._guests_dirty = False
                self._policy_change |= self._feed_guests()
            change, self._policy_change = self._policy_change, NO_CHANGE
            if change:
                nodes = None if change.everyone else frozenset(NodeID(n) for n in change.nodes)
                events.append(PolicyChanged(nodes))
            if events:
                self.generation += 1
                for sub in list(self._subs):
                    sub.put_many(events)

    def _reelect(self, events: list[Change]) -> None:
        """Re-run the HA election (primary.py); each node whose primaries moved gets a new
        snapshot and one ``NodeChanged(fields={"primary"})`` (a full node for its peers)."""
        self._routes_dirty = False
        now = self.clock()
        candidates = {
            n.id: n.served_routes()
            for n in self.nodes.values()
            if n.online and not n.route_standby and not n.is_expired(now)
            and n.hostinfo.get("RoutableIPs")
        }  # fmt: skip
        self.primaries = elect(self.primaries, candidates)
        want = per_node(self.primaries)
        for nid in set(want) | {n.id for n in self.nodes.values() if n.primary}:
            node = self.nodes.get(nid)
            if node is None or node.primary == want.get(nid, ()):
                continue
            self._index(replace(node, primary=want.get(nid, ())))
            events.append(NodeChanged(nid, frozenset({"primary"})))

    def emit(self, event: Change) -> None:
        assert self._events is not None, "emit outside write()"
        self._events.append(event)

    # ---- change bus --------------------------------------------------------------------

    def subscribe(self, max_queue: int) -> ChangeSubscription:
        with self.lock:
            sub = ChangeSubscription(max_queue, on_close=self._unsubscribe)
            self._subs.append(sub)
            return sub

    def _unsubscribe(self, sub: ChangeSubscription) -> None:
        with self.lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def close(self) -> None:
        with self.lock:
            for sub in list(self._subs):
                sub.close()
            self.store.close()
