"""Subnet routes stay in every viewer's view past 256 nodes (docs/protocol/policy.md §5.3).

Session 6 saw routes_view empty for every viewer at ~258 nodes. That symptom is reproduced
exactly (fine at 256, empty from 257) by a harness whose machine keys come from a byte-sized
counter (``bytes([i % 256]) * 32``): node 257 re-uses the router's machine key, which
*re-registers the router* (same machine = same node) with a Hostinfo advertising nothing, so
its route is withdrawn. The product is fine past 256 with distinct keys: the first and third
tests pin that (State, then full maps through the batcher; node counts are checked so a
colliding key generator cannot pass silently); the second pins the re-registration rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession, SnapshotSource
from meshscale.control.models import NodeID
from meshscale.control.state import State
from meshscale.key import NodePublic
from meshscale.policy import PolicyEngine
from meshscale.testing.mapsource import DERP

from .test_state import FakeClock, mk, nk

ROUTE = "10.0.0.0/24"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)
ACL = """{"acls": [
  {"action": "accept", "src": ["alice@"], "dst": ["alice@:*", "10.0.0.0/24:*"]}
]}"""


def tailnet(n: int, policy: str | None) -> tuple[State, NodeID, list[NodeID]]:
    rng = random.Random(1)
    st = State.open(":memory:", clock=FakeClock(), rand=rng.randbytes,
                    randbelow=rng.randrange, policy=PolicyEngine())  # fmt: skip
    u = st.create_user("alice")
    if policy is not None:
        st.set_policy(policy)
    router = st.register_node(mk(1), nk(1), u.id, {"Hostname": "r", "RoutableIPs": [ROUTE]})
    st.approve_routes(router.id, [ROUTE])
    others = [st.register_node(mk(i), nk(i), u.id, {"Hostname": f"n{i}"}).id
              for i in range(2, n + 1)]  # fmt: skip
    assert len(st.list_nodes()) == n, "colliding keys: nodes re-registered, not added"
    return st, router.id, others


@pytest.mark.parametrize("policy", [None, ACL], ids=["allow-all", "acl"])
@pytest.mark.parametrize("n", [256, 258, 300])
def test_every_viewer_sees_the_subnet_route(n: int, policy: str | None) -> None:
    st, router, others = tailnet(n, policy)
    empty = [v for v in others if ROUTE not in {str(p) for p in st.routes_view(v, router) or ()}]
    assert empty == [], f"{len(empty)} of {len(others)} viewers miss {ROUTE}"


def test_a_reused_machine_key_re_registers_the_router_and_withdraws_its_route() -> None:
    """What the wrapping key generator did at node 257: the advertisement goes (Hostinfo
    without RoutableIPs), the admin's approval stays (inert), no node is added."""
    st, router, others = tailnet(3, None)
    assert ROUTE in {str(p) for p in st.routes_view(others[0], router) or ()}
    again = st.register_node(mk(1), NodePublic(b"\x09" * 32), st.get_node(router).user_id,
                             {"Hostname": "n257"})  # fmt: skip
    assert again.id == router and len(st.list_nodes()) == 3
    assert st.routes_view(others[0], router) == frozenset()
    assert [str(p) for p in st.get_node(router).approved_routes] == [ROUTE]


@pytest.mark.parametrize("policy", [None, ACL], ids=["allow-all", "acl"])
def test_full_maps_past_256_nodes_carry_the_route(policy: str | None) -> None:
    """End to end through the batcher: viewers on either side of 256 get the route in the
    router's AllowedIPs and PrimaryRoutes of their full map."""
    st, router, others = tailnet(300, policy)
    st.set_online(router, True)  # primary election needs it online
    b = Batcher(SnapshotSource(st), lambda: CFG)
    sessions = [MapSession(v) for v in (others[0], others[254], others[255], others[-1])]
    for s in sessions:
        b.add(s)
    for s in sessions:
        msg = b.build(s, T0)
        assert msg is not None
        (r,) = [p for p in msg["Peers"] if p["ID"] == router]
        assert ROUTE in r["AllowedIPs"] and r["PrimaryRoutes"] == [ROUTE], s.node_id
