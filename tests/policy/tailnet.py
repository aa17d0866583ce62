"""A small tailnet of real control-server Node/User records for policy tests."""

from __future__ import annotations

import ipaddress

from meshscale.control.models import Node, NodeID, User, UserID
from meshscale.key import MachinePublic, NodePublic

ALICE = User(UserID(1), "alice", email="alice@example.com")
BOB = User(UserID(2), "bob", email="bob@example.com")
DEV = User(UserID(3), "dev")
OTHER = User(UserID(4), "other")
USERS = [ALICE, BOB, DEV, OTHER]


def node(
    i: int,
    user: User,
    *,
    tags: tuple[str, ...] = (),
    routes: tuple[str, ...] = (),
    approved: tuple[str, ...] = (),
    v6: int | None = None,
) -> Node:
    nets = tuple(ipaddress.ip_network(r) for r in routes)
    return Node(
        NodeID(i), MachinePublic(bytes([i]) * 32), NodePublic(bytes([i, 1]) * 16), user.id,
        f"n{i}", f"n{i}", ipv4=ipaddress.IPv4Address(f"100.64.0.{i}"),
        ipv6=ipaddress.IPv6Address(f"fd7a:115c:a1e0::{v6 if v6 is not None else i:x}"),
        hostinfo={"RoutableIPs": [str(r) for r in nets]}, tags=tags,
        approved_routes=tuple(ipaddress.ip_network(r) for r in approved),
    )  # fmt: skip
