"""AllowAll: the policy of a server without one (docs/protocol/policy.md §2.1, Headscale's
``FilterAllowAll``).

Every node accepts every packet (``SrcIPs: ["*"]`` to every port of every address), every
node sees every other node, and no tag or route is refused. Its answers depend on no
input, so only a new policy text changes them (conservatively: for everyone).
"""

from __future__ import annotations

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
from meshscale.tailcfg import PORT_RANGE_ANY, FilterRule, NetPortRange


class AllowAll:
    """A :class:`~meshscale.policy.manager.PolicyManager` that allows everything."""

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
        del node
        # A fresh list each time: FilterRule is mutable and callers own what they get.
        return [FilterRule(SrcIPs=["*"], DstPorts=[NetPortRange(IP="*", Ports=PORT_RANGE_ANY)])]

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
        del guests  # every guest reaches every node shared to it (docs/protocol/policy.md §6)
        return NO_CHANGE

    def set_shared_in(self, addrs: Iterable[IPAddress]) -> PolicyChange:
        del addrs  # the allow-all filter is SrcIPs ["*"]: IsJailed alone keeps S out
        return NO_CHANGE

    def guest_reach(self, guest_id: int, node_id: int) -> bool:
        del guest_id, node_id
        return True
