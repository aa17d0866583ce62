"""Fixtures for tests of the control server's map building: numbered nodes of one user and
an in-memory stand-in for :class:`~meshscale.control.mapper.batcher.SnapshotSource`."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from meshscale.control.models import Node, NodeID, User, UserID
from meshscale.key import DiscoPublic, MachinePublic, NodePublic
from meshscale.policy import AllowAll
from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion, FilterRule

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DERP = DERPMap(Regions={900: DERPRegion(900, "x", "X", Nodes=[DERPNode("900a", 900, "d")])})


def numbered_node(i: int, **fields: Any) -> Node:
    """Node `i` of user 1: keys, name h<i> and 100.64.x.y derived from `i`; `fields` override."""
    node = Node(
        id=NodeID(i),
        machine_key=MachinePublic(i.to_bytes(2, "big") * 16),
        node_key=NodePublic((i + 1000).to_bytes(2, "big") * 16),
        user_id=UserID(1),
        hostname=f"h{i}",
        given_name=f"h{i}",
        ipv4=ipaddress.IPv4Address(0x64400000 + i),
        disco_key=DiscoPublic((i + 2000).to_bytes(2, "big") * 16),
        created_at=NOW,
    )
    return replace(node, **fields) if fields else node


class DictSource:
    """A MapSource over a dict of nodes (one user, allow-all policy), counting the expensive
    call (``peers_of``) in ``peers_calls``."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[int, Node] = {int(n.id): n for n in nodes}
        self.peers_calls = 0

    def node(self, node_id: int) -> Node | None:
        return self.nodes.get(node_id)

    def peers_of(self, node_id: int) -> list[Node]:
        self.peers_calls += 1
        return sorted((n for i, n in self.nodes.items() if i != node_id), key=lambda n: n.id)

    def users(self) -> dict[UserID, User]:
        return {UserID(1): User(UserID(1), "alice")}

    def packet_filter(self, node_id: int) -> Sequence[FilterRule]:
        return AllowAll().filter_for(self.nodes[node_id])

    def viewers_of(self, node_id: int) -> set[int] | None:
        del node_id
        return None  # allow-all: everyone sees everyone

    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def self_caps(self, node_id: int) -> dict[str, None]:
        del node_id
        return {}

    def has_shares(self) -> bool:
        return False

    def share_view(self, viewer_id: int, peer_id: int) -> None:
        del viewer_id, peer_id  # one tailnet: nothing is shared
        return None
