"""Nodes: State's part for them (registration, client updates, admin edits, lookups).

The machine key identifies a device (docs/protocol/control.md §3.7): one node per machine key, and a
node keeps its id, addresses and given name through re-registration, node-key rotation and
logout. Addresses are freed only when the node is deleted.

The policy manager is asked here, before a write, whether a node may carry a tag or have
a route approved, and which peers a node sees and which packet filter it gets.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final, TypedDict, Unpack

from meshscale.control.db.repository import IntegrityError
from meshscale.control.ipalloc import IPAddress
from meshscale.control.models import (
    Conflict,
    InvalidArgument,
    IPPrefix,
    Node,
    NodeAdded,
    NodeChanged,
    NodeID,
    NodeRemoved,
    PreAuthKeyID,
    RegisterMethod,
    TailnetID,
    UserID,
)
from meshscale.control.names import unique_given_name, validate_given_name, validate_tags
from meshscale.control.state.core import StateCore
from meshscale.control.state.keys import Keys
from meshscale.control.state.shares import Shares
from meshscale.key import DiscoPublic, MachinePublic, NodePublic
from meshscale.policy import AllowAll
from meshscale.tailcfg import FilterRule

MAX_ROUTES: Final = 1024  # approved routes per node
MAX_HOSTINFO_BYTES: Final = 64 * 1024  # a stored Hostinfo; larger ones are rejected

# The Node fields NodeChanged.fields may name.
_DIFF_FIELDS: Final = (
    "machine_key",
    "node_key",
    "disco_key",
    "ipv4",
    "ipv6",
    "hostname",
    "given_name",
    "user_id",
    "hostinfo",
    "endpoints",
    "last_seen",
    "expiry",
    "tags",
    "approved_routes",
    "register_method",
    "auth_key_id",
    "ephemeral",
    "online",
)


class _AdminEdit(TypedDict, total=False):
    """The Node fields an admin edit (``Nodes._edit``) may set."""

    expiry: datetime | None
    given_name: str
    tags: tuple[str, ...]
    user_id: UserID
    approved_routes: tuple[IPPrefix, ...]


def diff(old: Node, new: Node) -> frozenset[str]:
    return frozenset(f for f in _DIFF_FIELDS if getattr(old, f) != getattr(new, f))


def check_hostinfo(hostinfo: dict[str, Any]) -> None:
    try:
        size = len(json.dumps(hostinfo))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"hostinfo is not JSON: {exc}") from exc
    if size > MAX_HOSTINFO_BYTES:
        raise InvalidArgument(f"hostinfo too large ({size} > {MAX_HOSTINFO_BYTES} bytes)")


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


class Nodes:
    """State's node methods, over the shared core (and the keys, for auth-key logins)."""

    def __init__(self, core: StateCore, keys: Keys, shares: Shares) -> None:
        self.core = core
        self.keys = keys
        self.shares = shares  # peers from other tailnets (node sharing)

    # ---- lookups and policy answers ----------------------------------------------------

    def list_nodes(
        self, user_id: UserID | None = None, tailnet: TailnetID | None = None
    ) -> list[Node]:
        """All nodes (or one user's, or one tailnet's), sorted by id."""
        with self.core.lock:
            nodes = [n for n in self.core.nodes.values()
                     if (user_id is None or n.user_id == user_id)
                     and (tailnet is None or n.tailnet_id == tailnet)]  # fmt: skip
            return sorted(nodes, key=lambda n: n.id)

    def peers_of(self, node_id: NodeID) -> list[Node]:
        """The nodes the policy lets ``node_id`` see, sorted by id: of its own tailnet
        (its tailnet's policy decides), plus those a share brings (shares.py)."""
        core = self.core
        with core.lock:
            me = core.get_node(node_id)
            ids = self._peer_ids(me)
            if ids is not None:
                return [core.nodes[NodeID(i)] for i in sorted(ids) if NodeID(i) in core.nodes]
            policy = core.policy_of(me.tailnet_id)
            peers = [n for n in core.nodes.values()
                     if n.id != node_id and n.tailnet_id == me.tailnet_id
                     and policy.can_see(me, n)]  # fmt: skip
            if core.shares:
                peers = list({n.id: n for n in (*peers, *self.shares.shared_peers(me))}.values())
            return sorted(peers, key=lambda n: n.id)

    def _peer_ids(self, node: Node) -> set[int] | None:
        """The policy's peer set of ``node`` at once, if the manager offers it
        (PolicyEngine does: set unions instead of a can_see per node)."""
        at_once = getattr(self.core.policy_of(node.tailnet_id), "peer_ids", None)
        if at_once is None:
            return None
        ids = set(at_once(node))
        if self.core.shares or self.core.guests_fed:
            # The manager knows only its tailnet's nodes, and the guests it was fed
            # (shares.py): the filter keeps a guest from passing as a plain peer; the
            # shares say below which of them are.
            nodes, mine = self.core.nodes, node.tailnet_id
            ids = {i for i in ids
                   if (p := nodes.get(NodeID(i))) is not None and p.tailnet_id == mine}  # fmt: skip
        if self.core.shares:  # plus the peers a share brings (shares.py)
            ids.update(int(n.id) for n in self.shares.shared_peers(node))
        return ids

    def viewers_of(self, node_id: NodeID) -> set[int] | None:
        """The nodes that may see ``node_id`` (visibility is symmetric): its peer set;
        None when the manager cannot say at once (the caller then treats all as viewers)
        or the node is gone (an empty set)."""
        core = self.core
        with core.lock:
            node = core.nodes.get(node_id)
            if node is None:
                return set()
            ids = self._peer_ids(node)
            if ids is None:
                policy = core.policy_of(node.tailnet_id)
                if isinstance(policy, AllowAll) and len(core.tailnets) == 1:
                    return None
                viewers: set[int] = {n.id for n in core.nodes.values()
                           if n.id != node_id and n.tailnet_id == node.tailnet_id
                           and policy.can_see(n, node)}  # fmt: skip
                if core.shares:
                    viewers.update(int(n.id) for n in self.shares.shared_peers(node))
                return viewers
            return ids

    def self_caps(self, node_id: NodeID) -> dict[str, None]:
        """The policy's nodeAttrs for ``node_id`` (keys of its self CapMap), if the manager
        has them (PolicyEngine.cap_map_for)."""
        core = self.core
        with core.lock:
            node = core.nodes.get(node_id)
            if node is None:
                return {}
            caps = getattr(core.policy_of(node.tailnet_id), "cap_map_for", None)
            return {} if caps is None else dict(caps(node))

    def routes_view(self, viewer_id: NodeID, peer_id: NodeID) -> frozenset[Any] | None:
        """Which of ``peer_id``'s routes ``viewer_id`` may have in its AllowedIPs
        (docs/protocol/policy.md §5.3): those the policy lets it reach, plus those it
        advertises itself (co-router visibility). None: all (no policy, or a node is gone)."""
        core = self.core
        with core.lock:
            me, peer = core.nodes.get(viewer_id), core.nodes.get(peer_id)
            if me is None or peer is None:
                return None
            if core.tailnet_of(me) != core.tailnet_of(peer):
                return frozenset()  # a shared node's routes are never shared (§6 item 5)
            reach = getattr(core.policy_of(me.tailnet_id), "reachable_routes", None)
            if reach is None:
                return None
            return frozenset((*reach(me, peer), *me.announced_routes()))

    def can_see(self, viewer_id: NodeID, peer_id: NodeID) -> bool:
        """Whether the policy lets ``viewer_id`` see ``peer_id`` (True if either is gone:
        the caller's removal logic handles that)."""
        core = self.core
        with core.lock:
            me, peer = core.nodes.get(viewer_id), core.nodes.get(peer_id)
            if me is None or peer is None:
                return True
            if core.tailnet_of(me) != core.tailnet_of(peer):
                return self.shares.reaches(me, peer) or self.shares.reaches(peer, me)
            return core.policy_of(me.tailnet_id).can_see(me, peer)

    def packet_filter(self, node_id: NodeID) -> Sequence[FilterRule]:
        """The inbound packet filter of ``node_id``, from its tailnet's policy."""
        with self.core.lock:
            node = self.core.get_node(node_id)
            return self.core.policy_of(node.tailnet_id).filter_for(node)

    def _check_tags(self, node: Node, before: Iterable[str] = ()) -> None:
        """Ask the policy about every tag an admin (``nodes tag``, a tagged pre-auth key)
        would newly give ``node``: the policy must define it."""
        for tag in sorted(set(node.tags) - set(before)):
            if not self.core.policy_of(node.tailnet_id).knows_tag(tag):
                raise InvalidArgument(
                    f"tag {tag!r} is not permitted for this node: the policy does not define "
                    "it in tagOwners"
                )

    def _requested_tags(self, node: Node, hostinfo: dict[str, Any]) -> Node:
        """``node`` with the tags its Hostinfo.RequestTags (``up --advertise-tags``) asks
        for, each checked against tagOwners for the node as it is (its user if untagged,
        its tags otherwise). Refused as a whole, with the SaaS wording, if one is not
        owned."""
        raw = hostinfo.get("RequestTags") or []
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise InvalidArgument("Hostinfo.RequestTags: want a list of strings")
        want = [t for t in dict.fromkeys(raw) if t not in node.tags]
        if not want:
            return node
        try:
            validate_tags(want)
        except InvalidArgument:
            bad = want
        else:
            policy = self.core.policy_of(node.tailnet_id)
            bad = [t for t in want if not policy.may_tag(node, t)]
        if bad:
            raise InvalidArgument(
                f"requested tags [{' '.join(bad)}] are invalid or not permitted (tagOwners "
                "does not name this node's user or tags)"
            )
        return replace(node, tags=validate_tags((*node.tags, *want)))

    def _auto_approved(self, node: Node) -> Node:
        """``node`` with the advertised routes the policy's autoApprovers approve added
        (docs/protocol/policy.md §5.2): only ever adds; approving one exit route approves
        both (``served_routes``). Without a policy (AllowAll) nothing is approved here:
        every route then waits for an admin, as in Headscale."""
        policy = self.core.policy_of(node.tailnet_id)
        if isinstance(policy, AllowAll):
            return node
        have = set(node.approved_routes)
        add = [r for r in node.announced_routes()
               if r not in have and policy.may_approve_route(node, r)]  # fmt: skip
        if not add:
            return node
        try:
            return replace(node, approved_routes=parse_routes([*node.approved_routes, *add]))
        except InvalidArgument:  # more than MAX_ROUTES: leave them to an admin
            return node

    def auto_approve_all(self, tailnet: TailnetID | None = None) -> None:
        """Run autoApprovers over every node's (of ``tailnet``'s) advertised routes (after
        a policy change, docs/protocol/policy.md §5.2): adds approvals only, never
        removes; inside a write."""
        for old in list(self.core.nodes.values()):
            if (tailnet is None or old.tailnet_id == tailnet) and old.announced_routes():
                self._commit(old, self._auto_approved(old))

    # ---- registration ------------------------------------------------------------------

    def register_node(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        user_id: UserID,
        hostinfo: dict[str, Any] | None = None,
        *,
        method: RegisterMethod = RegisterMethod.CLI,
        auth_key_id: PreAuthKeyID | None = None,
        ephemeral: bool = False,
        tags: Iterable[str] = (),
    ) -> Node:
        """Admit a device for ``user_id``; returns the node (new or re-registered).

        The machine key identifies the device (docs/protocol/control.md §3.7): a known machine keeps
        its id, addresses and given name, and gets the new node key, Hostinfo and a fresh expiry.
        A node key already bound to a *different* machine is refused (Conflict).
        """
        with self.core.write():
            return self.register_locked(
                machine_key,
                node_key,
                user_id,
                hostinfo or {},
                method,
                auth_key_id,
                ephemeral,
                validate_tags(tags),
            )

    def register_locked(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        user_id: UserID,
        hostinfo: dict[str, Any],
        method: RegisterMethod,
        auth_key_id: PreAuthKeyID | None,
        ephemeral: bool,
        tags: tuple[str, ...],
    ) -> Node:
        """``register_node`` inside a write the caller holds."""
        core = self.core
        user = core.get_user(user_id)
        check_hostinfo(hostinfo)
        bound = core.node_by_node_key(node_key)
        if bound is not None and bound.machine_key != machine_key:
            raise Conflict("node key is bound to a different machine key")
        now = core.clock()
        expiry = now + core.options.node_expiry if core.options.node_expiry else None
        hostname = str(hostinfo.get("Hostname") or "")
        existing = core.node_by_machine_key(machine_key)
        if existing is not None and existing.tailnet_id != user.tailnet_id:
            raise Conflict(
                f"this machine is node {existing.id} of tailnet "
                f"{core.get_tailnet(existing.tailnet_id).name!r}; an admin must delete it "
                "there before it can join another tailnet"
            )
        if existing is not None:
            node = replace(
                existing,
                node_key=node_key,
                user_id=user_id,
                hostinfo=hostinfo,
                hostname=hostname or existing.hostname,
                expiry=expiry,
                register_method=method,
                auth_key_id=auth_key_id if auth_key_id is not None else existing.auth_key_id,
                ephemeral=ephemeral,
                tags=tags or existing.tags,
            )
            self._check_tags(node, existing.tags)
            node = self._auto_approved(self._requested_tags(node, hostinfo))
            core.store.update_node(node)
            core.put_node(node)
            changed = diff(existing, node)
            if changed:
                core.emit(NodeChanged(node.id, changed))
            return node
        tailnet = user.tailnet_id
        given = unique_given_name(hostname or "node", lambda n: (tailnet, n) in core.by_name)
        node = Node(
            NodeID(0),
            machine_key,
            node_key,
            user_id,
            hostname,
            given,
            None,
            None,
            None,
            hostinfo,
            (),
            now,
            expiry,
            tags,
            (),
            method,
            auth_key_id,
            ephemeral,
            now,
        )
        node = replace(node, tailnet_id=tailnet)
        self._check_tags(node)
        node = self._requested_tags(node, hostinfo)
        v4, v6 = core.alloc.allocate()  # last check before the write: it takes addresses
        node = self._auto_approved(replace(node, ipv4=v4, ipv6=v6))
        try:
            node = replace(node, id=core.store.insert_node(node))
        except IntegrityError as exc:
            raise Conflict(f"cannot register node: {exc}") from exc
        core.put_node(node)
        core.emit(NodeAdded(node.id))
        return node

    def register_with_preauth_key(
        self,
        secret: str,
        machine_key: MachinePublic,
        node_key: NodePublic,
        hostinfo: dict[str, Any] | None = None,
        *,
        ephemeral: bool = False,
    ) -> Node:
        """The pre-auth key path of /machine/register (docs/protocol/control.md §3.3).

        A machine already registered with the same node key and not expired is returned
        unchanged, without consuming or re-validating the key (it must still be a key that
        exists): clients re-send their auth key on every restart, possibly a used or
        expired one. Unlike Headscale, the key's user need not own the node, because a
        machine is one node here: an admin's ``move_node`` must survive a client restart.
        A new machine, a rotated node key or an expired node needs a valid key, which is
        consumed atomically with the node write. Raises PreAuthKeyError (the text goes in
        RegisterResponse.Error) or Conflict.
        """
        core = self.core
        with core.write():
            existing = core.node_by_machine_key(machine_key)
            if (
                existing is not None
                and existing.node_key == node_key
                and not existing.is_expired(core.clock())
            ):
                self.keys.lookup_preauth_key(secret)  # prove possession of a real key
                return existing
            key = self.keys.consume_preauth_key(secret)
            return self.register_locked(
                machine_key,
                node_key,
                key.user_id,
                hostinfo or {},
                RegisterMethod.AUTH_KEY,
                key.id,
                key.ephemeral or ephemeral,
                key.tags,
            )

    # ---- updates from the client -------------------------------------------------------

    def update_node(
        self,
        node_id: NodeID,
        *,
        hostinfo: dict[str, Any] | None = None,
        endpoints: Iterable[str] | None = None,
        disco_key: DiscoPublic | None = None,
    ) -> Node:
        """Apply what a MapRequest reports; publishes one NodeChanged naming what changed
        (nothing is written or published when nothing changed). Soft state: committed
        without a disk flush (see db/sqlite.py)."""
        core = self.core
        with core.write(durable=False):
            old = core.get_node(node_id)
            new = old
            if hostinfo is not None:
                check_hostinfo(hostinfo)
                new = replace(
                    new, hostinfo=hostinfo, hostname=str(hostinfo.get("Hostname") or new.hostname)
                )
                if new.announced_routes():
                    new = self._auto_approved(new)
            if endpoints is not None:
                new = replace(new, endpoints=tuple(endpoints))
            if disco_key is not None:
                new = replace(new, disco_key=disco_key)
            return self._commit(old, new)

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
        core = self.core
        with core.write(durable=False):
            old = core.get_node(node_id)
            if old.online == online:
                return old
            node = replace(old, online=online, last_seen=core.clock())
            core.store.update_node(node)
            core.online[node_id] = online
            core.put_node(node)
            core.emit(NodeChanged(node_id, frozenset({"online", "last_seen"})))
            return node

    def set_route_standby(self, node_id: NodeID, standby: bool) -> None:
        """A router's map stream has been gone past the route grace (True) or is back
        (False): it stops or starts being an HA candidate (state/primary.py). Memory only."""
        core = self.core
        with core.write(durable=False):
            old = core.nodes.get(node_id)
            if old is None or old.route_standby == standby:
                return
            core.put_router_state(replace(old, route_standby=standby))

    def touch(self, node_id: NodeID) -> None:
        """Record activity (last_seen = now) in memory only: no write and no event.

        Map sessions call this on keep-alives; the value is persisted at the next real
        write of the node (set_online(False) at the latest)."""
        core = self.core
        with core.lock:
            node = core.nodes.get(node_id)
            if node is not None:  # not put_node: no policy reads last_seen
                core.nodes[node_id] = replace(node, last_seen=core.clock())

    def logout(self, node_id: NodeID) -> Node | None:
        """Client logout (docs/protocol/control.md §3.6): expire the node now; ephemeral nodes are
        deleted (returns None then)."""
        with self.core.write():
            node = self.core.get_node(node_id)
            if node.ephemeral:
                self.delete_node(node_id)
                return None
            return self.expire_node(node_id)

    # ---- admin -------------------------------------------------------------------------

    def expire_node(self, node_id: NodeID, at: datetime | None = None) -> Node:
        """Set the node key's expiry (default: now). A past expiry logs the node out."""
        return self._edit(node_id, expiry=at if at is not None else self.core.clock())

    def set_expiry(self, node_id: NodeID, expiry: datetime | None) -> Node:
        """Set (or with None, remove) the node key's expiry."""
        return self._edit(node_id, expiry=expiry)

    def delete_node(self, node_id: NodeID) -> None:
        core = self.core
        with core.write():
            node = core.get_node(node_id)
            core.store.delete_node(node_id)
            core.drop_node(node)
            for addr in node.addresses():
                core.alloc.release(addr)
            core.emit(NodeRemoved(node_id, node.tailnet_id))

    def rename_node(self, node_id: NodeID, new_name: str) -> Node:
        """Set the MagicDNS name; it must be a valid label no other node uses."""
        validate_given_name(new_name)
        with self.core.write():
            node = self.core.get_node(node_id)
            other = self.core.by_name.get((node.tailnet_id, new_name))
            if other is not None and other != node_id:
                raise Conflict(f"name {new_name!r} is used by node {other}")
            return self._edit(node_id, given_name=new_name)

    def set_tags(self, node_id: NodeID, tags: Iterable[str]) -> Node:
        tag_tuple = validate_tags(tags)
        with self.core.write():
            old = self.core.get_node(node_id)
            self._check_tags(replace(old, tags=tag_tuple), old.tags)
            return self._edit(node_id, tags=tag_tuple)

    def move_node(self, node_id: NodeID, user_id: UserID) -> Node:
        """Give the node to another user of its tailnet (a tailnet's nodes stay in it:
        its name, policy and shares are the tailnet's)."""
        with self.core.write():
            user = self.core.get_user(user_id)
            node = self.core.get_node(node_id)
            if user.tailnet_id != node.tailnet_id:
                raise InvalidArgument(
                    f"user {user_id} is in another tailnet: a node moves only between users "
                    "of its own tailnet"
                )
            return self._edit(node_id, user_id=user_id)

    def approve_routes(self, node_id: NodeID, routes: Iterable[str | IPPrefix]) -> Node:
        """Replace the node's approved routes (an empty list withdraws approval). An
        admin's approval is not checked against autoApprovers (the policy's
        ``may_approve_route`` is for approving without an admin)."""
        parsed = parse_routes(routes)
        with self.core.write():
            self.core.get_node(node_id)
            return self._edit(node_id, approved_routes=parsed)

    def restore_node(
        self,
        node_id: NodeID,
        *,
        ipv4: ipaddress.IPv4Address | None,
        ipv6: ipaddress.IPv6Address | None,
        hostname: str | None = None,
        disco_key: DiscoPublic | None = None,
        endpoints: Iterable[str] = (),
        expiry: datetime | None = None,
        last_seen: datetime | None = None,
        created_at: datetime | None = None,
        approved_routes: Iterable[str | IPPrefix] = (),
    ) -> Node:
        """Set what an import carries verbatim, addresses included (db/headscale.py).

        Not for running servers: a node's addresses otherwise never change. Raises
        Conflict if another node holds one of the addresses.
        """
        routes = parse_routes(approved_routes)
        core = self.core
        with core.write():
            old = core.get_node(node_id)
            for addr in (ipv4, ipv6):
                holder = next(
                    (
                        n.id
                        for n in core.nodes.values()
                        if addr is not None and addr in n.addresses()
                    ),
                    None,
                )
                if holder is not None and holder != node_id:
                    raise Conflict(f"address {addr} is held by node {holder}")
            new = replace(
                old,
                ipv4=ipv4,
                ipv6=ipv6,
                hostname=hostname or old.hostname,
                disco_key=disco_key,
                endpoints=tuple(endpoints),
                expiry=expiry,
                last_seen=last_seen or old.last_seen,
                created_at=created_at or old.created_at,
                approved_routes=routes,
            )
            core.store.update_node(new)
            for addr in old.addresses():
                core.alloc.release(addr)
            for addr in new.addresses():
                core.alloc.mark_used(addr)
            core.put_node(new)
            core.emit(NodeChanged(node_id, diff(old, new)))
            return new

    def backfill_ips(self) -> list[str]:
        """Headscale's ``nodes backfillips``: give every node an address from each configured
        prefix it lacks one from (say, after ``prefixes.v6`` was added), and drop addresses
        of a family no longer configured. Returns one line per change."""
        core = self.core
        changes: list[str] = []
        with core.write():
            for old in sorted(core.nodes.values(), key=lambda n: n.id):
                who = f"node {old.id} ({old.given_name})"
                p4, p6 = core.alloc.pool4, core.alloc.pool6
                a4 = _backfilled(p4.allocate if p4 else None, old.ipv4, who, "IPv4", changes)
                a6 = _backfilled(p6.allocate if p6 else None, old.ipv6, who, "IPv6", changes)
                assert not isinstance(a4, ipaddress.IPv6Address)
                assert not isinstance(a6, ipaddress.IPv4Address)
                if (a4, a6) == (old.ipv4, old.ipv6):
                    continue
                new = replace(old, ipv4=a4, ipv6=a6)
                core.store.update_node(new)
                core.put_node(new)
                core.emit(NodeChanged(new.id, diff(old, new)))
        return changes

    def _edit(self, node_id: NodeID, **changes: Unpack[_AdminEdit]) -> Node:
        with self.core.write():
            old = self.core.get_node(node_id)
            return self._commit(old, replace(old, **changes))

    def _commit(self, old: Node, new: Node) -> Node:
        """Write ``new`` if it differs from ``old``, with one NodeChanged; inside a write."""
        changed = diff(old, new)
        if changed:
            self.core.store.update_node(new)
            self.core.put_node(new)
            self.core.emit(NodeChanged(new.id, changed))
        return new


def _backfilled(
    allocate: Callable[[], IPAddress] | None,
    have: IPAddress | None,
    who: str,
    family: str,
    changes: list[str],
) -> IPAddress | None:
    """One family of ``backfill_ips``: allocate when the prefix is configured and the node
    has none, drop when it is no longer configured; note the change in ``changes``."""
    if allocate is not None and have is None:
        have = allocate()
        changes.append(f"{who}: assigned {family} {have}")
    elif allocate is None and have is not None:
        changes.append(f"{who}: removed {family} {have}")
        have = None
    return have
