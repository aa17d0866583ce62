"""AllowAll: the policy of a server without one (docs/protocol/policy.md §2.1, Headscale's
``FilterAllowAll``).

Every node accepts every packet (``SrcIPs: ["*"]`` to every port of every address), every
node sees every other node, and no tag or route is refused. Its answers depend on no
input, so only a new policy text changes them (conservatively: for everyone).

Node sharing (docs/protocol/policy.md §6) is the exception. "Everything" never includes:

* a node shared *into* this tailnet as a source (one way, TS-2024-005): ``*`` becomes every
  address but theirs (§6 item 1, "do both" beside ``IsJailed``);
* a guest (a recipient's device) reaching beyond the shared node's own addresses: a shared
  subnet router or exit node does not route for guests (ts#10642), so its guests get a rule
  of their own, to its addresses only, and are cut out of its ``*``.

Nodes that have neither keep the plain ``["*"]`` filter.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshscale.policy.manager import (
    EVERYONE,
    NO_CHANGE,
    IPAddress,
    IPPrefix,
    PolicyChange,
    PolicyNode,
    PolicyUser,
)
from meshscale.policy.sharing import EVERY_ADDRESS, cut_ranges
from meshscale.tailcfg import PORT_RANGE_ANY, FilterRule, NetPortRange


class AllowAll:
    """A :class:`~meshscale.policy.manager.PolicyManager` that allows everything (but the
    sharing exceptions of the module docstring)."""

    def __init__(self) -> None:
        self._shared_in: frozenset[IPAddress] = frozenset()
        # shared node id -> its guests' addresses (sorted strings)
        self._guests: dict[int, tuple[str, ...]] = {}

    def set_policy(self, text: str | None) -> PolicyChange:
        del text  # allow-all reads no policy; a new text still means new maps for all
        return EVERYONE

    def set_users(self, users: Iterable[PolicyUser]) -> PolicyChange:
        del users
        return NO_CHANGE

    def set_nodes(self, nodes: Iterable[PolicyNode]) -> PolicyChange:
        del nodes
        return NO_CHANGE

    def update_node(self, node: PolicyNode) -> PolicyChange:
        del node
        return NO_CHANGE

    def remove_node(self, node_id: int) -> PolicyChange:
        del node_id
        return NO_CHANGE

    def filter_for(self, node: PolicyNode) -> list[FilterRule]:
        # A fresh list each time: FilterRule is mutable and callers own what they get.
        guests = self._guests.get(node.id, ())
        if not self._shared_in and not guests:
            return [_rule(["*"], ["*"])]
        holes = {*self._shared_in, *(ipaddress.ip_address(g) for g in guests)}
        rules = [_rule(list(cut_ranges(EVERY_ADDRESS, holes)), ["*"])]
        own = [str(a) for a in node.addresses()]
        if guests and own:
            rules.append(_rule(list(guests), own))
        return rules

    def can_see(self, viewer: PolicyNode, peer: PolicyNode) -> bool:
        del viewer, peer
        return True

    def may_tag(self, node: PolicyNode, tag: str) -> bool:
        del node, tag
        return True

    def knows_tag(self, tag: str) -> bool:
        del tag
        return True

    def may_approve_route(self, node: PolicyNode, route: IPPrefix) -> bool:
        del node, route
        return True

    def set_guests(self, guests: Iterable[tuple[PolicyNode, Iterable[int]]]) -> PolicyChange:
        """Every guest reaches every node shared to it (docs/protocol/policy.md §6), at that
        node's own addresses only; the shared nodes whose guests moved get new filters."""
        by_node: dict[int, set[IPAddress]] = {}
        for g, shared in guests:
            for sid in shared:
                by_node.setdefault(sid, set()).update(g.addresses())
        new = {sid: tuple(str(a) for a in sorted(a, key=_addr_key)) for sid, a in by_node.items()}
        moved = {i for i in {*new, *self._guests} if new.get(i) != self._guests.get(i)}
        self._guests = new
        return PolicyChange(nodes=frozenset(moved)) if moved else NO_CHANGE

    def set_shared_in(self, addrs: Iterable[IPAddress]) -> PolicyChange:
        """Nodes shared into this tailnet are cut out of every node's ``*`` source. No change
        is reported: the only nodes that have a shared-in node as a peer are its recipient's
        devices, which State gives new maps for the share itself (state/shares.py)."""
        self._shared_in = frozenset(addrs)
        return NO_CHANGE

    def guest_reach(self, guest_id: int, node_id: int) -> bool:
        del guest_id, node_id
        return True


def _rule(src: list[str], dst: list[str]) -> FilterRule:
    return FilterRule(SrcIPs=src, DstPorts=[NetPortRange(IP=d, Ports=PORT_RANGE_ANY) for d in dst])


def _addr_key(a: IPAddress) -> tuple[int, int]:
    return a.version, int(a)
