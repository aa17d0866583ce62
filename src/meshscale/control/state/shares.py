"""Shares: State's part for node sharing (issue #16 part 2, docs/protocol/policy.md §6).

A share puts one node S of one tailnet in the netmaps of a user's devices in another
tailnet, without merging the two. The rules, and where each is enforced::

    who sees whom      R (a device of the recipient user, untagged) and S are peers iff
                       the share exists and the SHARER's policy lets R reach S: R is a
                       guest of S's tailnet, selected there by ``*``, autogroup:shared or
                       its address (PolicyEngine.guest_reach; the issue's text says the
                       recipient's policy, docs/protocol/policy.md §6 item 2 says the
                       sharer's: the spec is followed)
    one way            S is sent to R with ``IsJailed`` (R's client drops flows S opens,
                       TS-2024-005), and the recipient tailnet's ``*`` no longer covers
                       S's addresses (set_shared_in); S's own filter admits R only
                       through the sharer's rules
    what travels       S's own addresses (no subnet routes, no exit role, ts#10642),
                       ``Sharer``, and both users' profiles; S sees R with
                       ``Hostinfo.ShareeNode`` (the mapper's ShareView)

Every write that can move these answers (a share or unshare, a node of a shared node's
or a recipient's, a delete) marks the guests dirty; the core feeds the policy managers at
commit and publishes one PolicyChanged for every node whose answers moved, so a removed
peer reaches its clients within one batcher tick.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshscale.control.ipalloc import IPAddress
from meshscale.control.models import (
    Conflict,
    InvalidArgument,
    Node,
    NodeID,
    NotFound,
    Share,
    ShareView,
    UserID,
)
from meshscale.control.state.core import StateCore
from meshscale.policy import NO_CHANGE, PolicyChange


class Shares:
    """State's share methods, over the shared core."""

    def __init__(self, core: StateCore) -> None:
        self.core = core

    # ---- admin -------------------------------------------------------------------------

    def share_node(self, node_id: NodeID, user_id: UserID) -> Share:
        """Share node ``node_id`` with user ``user_id`` of another tailnet."""
        core = self.core
        with core.write():
            node = core.get_node(node_id)
            core.get_user(user_id)
            if core.tailnet_of_user(user_id) == core.tailnet_of(node):
                raise InvalidArgument(
                    f"user {user_id} is in the node's own tailnet: sharing is for other "
                    "tailnets (use the policy to grant access inside one)"
                )
            if user_id in core.shares.get(node_id, {}):
                raise Conflict(f"node {node_id} is already shared with user {user_id}")
            share = Share(node_id, user_id, core.clock())
            core.store.insert_share(share)
            core.shares.setdefault(node_id, {})[user_id] = share
            core.shares_changed({node_id, *self._devices(user_id)})
            return share

    def unshare_node(self, node_id: NodeID, user_id: UserID) -> None:
        """Stop sharing ``node_id`` with ``user_id`` (NotFound if it was not shared)."""
        core = self.core
        with core.write():
            core.get_node(node_id)
            core.get_user(user_id)
            if user_id not in core.shares.get(node_id, {}):
                raise NotFound(f"node {node_id} is not shared with user {user_id}")
            core.store.delete_share(node_id, user_id)
            del core.shares[node_id][user_id]
            if not core.shares[node_id]:
                del core.shares[node_id]
            core.shares_changed({node_id, *self._devices(user_id)})

    def list_shares(
        self, node_id: NodeID | None = None, user_id: UserID | None = None
    ) -> list[Share]:
        """Every share (or those of one node, or to one user), by node then user."""
        with self.core.lock:
            return sorted(
                (s for by_user in self.core.shares.values() for s in by_user.values()
                 if (node_id is None or s.node_id == node_id)
                 and (user_id is None or s.user_id == user_id)),
                key=lambda s: (s.node_id, s.user_id),
            )  # fmt: skip

    # ---- answers (under the core lock) -------------------------------------------------

    def _devices(self, user_id: UserID) -> list[NodeID]:
        """The user's devices a share reaches: untagged (a tagged node has no user
        identity, docs/protocol/policy.md §2.4)."""
        return [n.id for n in self.core.nodes.values() if n.user_id == user_id and not n.tags]

    def shared_peers(self, node: Node) -> list[Node]:
        """The peers of ``node`` from other tailnets: shared nodes it may reach, and,
        for a shared node, the recipients' devices that may reach it."""
        core = self.core
        if not core.shares:
            return []
        out: dict[NodeID, Node] = {}
        for s in self._shared_to(node):
            out[s.id] = s
        for uid in core.shares.get(node.id, {}):
            for r in self._devices(uid):
                peer = core.nodes[r]
                if core.tailnet_of(peer) != core.tailnet_of(node) and self.reaches(peer, node):
                    out[peer.id] = peer
        return [out[i] for i in sorted(out)]

    def _shared_to(self, r: Node) -> Iterable[Node]:
        core = self.core
        if r.tags:
            return
        for sid, by_user in core.shares.items():
            s = core.nodes.get(sid)
            if s is not None and r.user_id in by_user and self.reaches(r, s):
                yield s

    def reaches(self, r: Node, s: Node) -> bool:
        """Guest ``r`` may reach shared node ``s`` (share and the sharer's policy)."""
        core = self.core
        return (
            not r.tags
            and r.user_id in core.shares.get(s.id, {})
            and core.tailnet_of(r) != core.tailnet_of(s)
            and core.policy_of(core.tailnet_of(s)).guest_reach(r.id, s.id)
        )

    def shared_domains(self, viewer_id: NodeID) -> tuple[str, ...]:
        """The MagicDNS base domains of the tailnets whose nodes ``viewer_id`` has as
        shared-in peers, other than its own: its DNS config must route them to quad-100
        too, or the OS never asks for those names."""
        core = self.core
        with core.lock:
            v = core.nodes.get(viewer_id)
            if not core.shares or v is None:
                return ()
            out = set()
            for p in self.shared_peers(v):
                t = core.tailnets.get(p.tailnet_id)
                if t is not None and t.base_domain and p.tailnet_id != v.tailnet_id:
                    out.add(t.base_domain)
            return tuple(sorted(out))

    def has_shares(self) -> bool:
        """Whether any node is shared at all (when not, no viewer needs share_view)."""
        return bool(self.core.shares)

    def share_view(self, viewer_id: NodeID, peer_id: NodeID) -> ShareView | None:
        """How ``viewer_id`` sees ``peer_id`` if they are of different tailnets (the
        mapper's per-viewer node JSON), else None."""
        core = self.core
        with core.lock:
            if not core.shares:
                return None
            v, p = core.nodes.get(viewer_id), core.nodes.get(peer_id)
            if v is None or p is None or core.tailnet_of(v) == core.tailnet_of(p):
                return None
            name = core.fqdn_in_own_tailnet(p)
            own = core.tailnets.get(p.tailnet_id)
            zone = "" if name or own is None else own.name  # host.zone.<server's domain>
            if self.reaches(v, p):  # p is shared in to v
                return ShareView(name, sharer=int(p.user_id), zone=zone)
            if self.reaches(p, v):  # v is shared, p a recipient's device
                return ShareView(name, sharee=True, zone=zone)
            return None


def guest_feed(core: StateCore) -> PolicyChange:
    """Feed every tailnet's policy manager its guests and shared-in addresses (from the
    share table); returns what moved. Called by the core at commit when marked dirty;
    a server that never shared anything never calls the managers' sharing methods."""
    if not core.shares and not core.guests_fed:
        return NO_CHANGE
    core.guests_fed = bool(core.shares)
    guests: dict[int, list[tuple[Node, list[int]]]] = {}
    shared_in: dict[int, set[IPAddress]] = {}
    recipients: dict[UserID, list[Node]] = {}
    for sid, by_user in core.shares.items():
        s = core.nodes.get(sid)
        if s is None:
            continue
        for uid in by_user:
            recipients.setdefault(uid, []).append(s)
    for r in core.nodes.values():
        if r.tags or r.user_id not in recipients:
            continue
        mine: dict[int, list[int]] = {}
        for s in recipients[r.user_id]:
            ts, tr = core.tailnet_of(s), core.tailnet_of(r)
            if ts != tr:
                mine.setdefault(ts, []).append(int(s.id))
                shared_in.setdefault(tr, set()).update(s.addresses())
        for t, ids in mine.items():
            guests.setdefault(t, []).append((r, ids))
    change = NO_CHANGE
    for t in core.tailnet_ids():
        policy = core.policy_of(t)
        change |= policy.set_guests(guests.get(t, []))
        change |= policy.set_shared_in(shared_in.get(t, set()))
    return change
