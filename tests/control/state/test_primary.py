"""HA primary routes: election per prefix, failover, no fail-back (docs/protocol/policy.md §5.6)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.models import NodeChanged, NodeID
from meshscale.control.state import State
from meshscale.control.state.primary import elect

from .test_state import make_state, mk, nk

LAN = ipaddress.ip_network("198.51.100.0/24")


def routers(state: State, n: int, routes: list[str]) -> list[NodeID]:
    u = state.create_user("alice")
    out = []
    for i in range(1, n + 1):
        node = state.register_node(mk(i), nk(i), u.id, {"Hostname": f"r{i}", "RoutableIPs": routes})
        state.approve_routes(node.id, routes)
        out.append(node.id)
    return out


def primaries(state: State) -> dict[str, list[str]]:
    return {n.given_name: [str(r) for r in n.primary_routes()] for n in state.list_nodes()}


def test_failover_and_no_failback() -> None:
    state = make_state()
    r1, r2 = routers(state, 2, ["198.51.100.0/24"])
    assert primaries(state) == {"r1": [], "r2": []}  # offline routers serve nothing
    state.set_online(r2, True)
    state.set_online(r1, True)
    assert primaries(state) == {"r1": [], "r2": ["198.51.100.0/24"]}  # the first one up
    sub = state.subscribe()
    state.set_route_standby(r2, True)  # r2's stream gone past the grace
    assert primaries(state) == {"r1": ["198.51.100.0/24"], "r2": []}
    got = {e.node_id for e in sub.drain() if isinstance(e, NodeChanged)
           and "primary" in e.fields}  # fmt: skip
    assert got == {r1, r2}  # both routers re-sent in full
    state.set_route_standby(r2, False)  # r2 back: no fail-back
    assert primaries(state)["r1"] == ["198.51.100.0/24"]
    state.set_online(r1, False)
    assert primaries(state) == {"r1": [], "r2": ["198.51.100.0/24"]}


def test_never_an_unapproved_or_withdrawn_route() -> None:
    state = make_state()
    r1, r2 = routers(state, 2, ["198.51.100.0/24"])
    state.approve_routes(r2, [])
    state.set_online(r2, True)
    assert primaries(state)["r2"] == []
    state.set_online(r1, True)
    assert primaries(state)["r1"] == ["198.51.100.0/24"]
    state.update_hostinfo(r1, {"Hostname": "r1", "RoutableIPs": []})  # withdrawn
    assert primaries(state) == {"r1": [], "r2": []}  # approved but inert; r2 unapproved


def test_all_offline_then_one_returns_becomes_primary() -> None:
    state = make_state()
    r1, r2 = routers(state, 2, ["198.51.100.0/24", "0.0.0.0/0", "::/0"])
    state.set_online(r1, True)
    state.set_online(r1, False)
    state.set_online(r2, True)
    assert primaries(state) == {"r1": [], "r2": ["198.51.100.0/24"]}
    node = state.get_node(r2)
    assert [str(r) for r in node.exit_routes()] == ["0.0.0.0/0", "::/0"]  # never primary


@given(st.lists(st.tuples(st.integers(1, 4), st.booleans()), max_size=30))
def test_election_is_stable_and_total(steps: list[tuple[int, bool]]) -> None:
    up: set[int] = set()
    cur: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, NodeID] = {}
    for nid, online in steps:
        (up.add if online else up.discard)(nid)
        prev = cur
        cur = elect(prev, {NodeID(i): [LAN] for i in up})
        assert (LAN in cur) == bool(up)
        if LAN in prev and prev[LAN] in up:
            assert cur[LAN] == prev[LAN]  # no flapping while the primary is available
        elif up:
            assert cur[LAN] == min(up)


AUTO = """{
  "tagOwners": {"tag:router": ["alice@"]},
  "autoApprovers": {"routes": {"198.51.0.0/16": ["tag:router"]}, "exitNode": ["alice@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"""


def test_auto_approvers_approve_with_no_admin_step_and_only_add() -> None:
    from meshscale.policy import PolicyEngine

    from .test_state import FakeClock

    state = State.open(":memory:", clock=FakeClock(), policy=PolicyEngine())
    state.set_policy(AUTO)
    alice = state.create_user("alice")
    hi = {"Hostname": "r", "RequestTags": ["tag:router"],
          "RoutableIPs": ["198.51.100.0/24", "10.0.0.0/8"]}  # fmt: skip
    r = state.register_node(mk(1), nk(1), alice.id, hi)
    assert [str(p) for p in r.approved_routes] == ["198.51.100.0/24"]  # 10/8: not covered
    # routes["0.0.0.0/0"] never approves an exit node; exitNode does (alice's untagged node)
    e = state.register_node(mk(2), nk(2), alice.id, {"Hostname": "e"})
    state.update_hostinfo(e.id, {"Hostname": "e", "RoutableIPs": ["0.0.0.0/0", "::/0"]})
    assert [str(p) for p in state.get_node(e.id).exit_routes()] == ["0.0.0.0/0", "::/0"]
    state.set_online(r.id, True)
    assert [str(p) for p in state.get_node(r.id).primary_routes()] == ["198.51.100.0/24"]
    # withdrawing the advertisement keeps the approval (inert), nothing is removed
    state.update_hostinfo(r.id, {**hi, "RoutableIPs": []})
    assert [str(p) for p in state.get_node(r.id).approved_routes] == ["198.51.100.0/24"]


def test_no_policy_approves_nothing_by_itself() -> None:
    state = make_state()
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id, {"Hostname": "r", "RoutableIPs": ["10.0.0.0/8"]})
    assert n.approved_routes == ()


def test_a_policy_change_auto_approves_advertised_routes_and_never_unapproves() -> None:
    from meshscale.policy import PolicyEngine

    from .test_state import FakeClock

    state = State.open(":memory:", clock=FakeClock(), policy=PolicyEngine())
    state.set_policy('{"tagOwners": {"tag:router": ["alice@"]}, "acls": []}')
    alice = state.create_user("alice")
    hi = {"Hostname": "r", "RequestTags": ["tag:router"],
          "RoutableIPs": ["198.51.100.0/24", "10.0.0.0/8"]}  # fmt: skip
    r = state.register_node(mk(1), nk(1), alice.id, hi)
    e = state.register_node(mk(2), nk(2), alice.id,
                            {"Hostname": "e", "RoutableIPs": ["0.0.0.0/0", "::/0"]})  # fmt: skip
    assert r.approved_routes == () and e.approved_routes == ()  # nothing auto-approves yet
    state.approve_routes(r.id, ["10.0.0.0/8"])  # an admin's approval
    state.set_online(r.id, True)
    state.set_policy(AUTO)  # now autoApprovers cover 198.51.100.0/24 and alice's exit node
    assert sorted(str(p) for p in state.get_node(r.id).approved_routes) == [
        "10.0.0.0/8", "198.51.100.0/24"]  # fmt: skip
    assert [str(p) for p in state.get_node(e.id).exit_routes()] == ["0.0.0.0/0", "::/0"]
    assert "198.51.100.0/24" in [str(p) for p in state.get_node(r.id).primary_routes()]
    state.set_policy('{"tagOwners": {"tag:router": ["alice@"]}, "acls": []}')  # back: no removal
    assert sorted(str(p) for p in state.get_node(r.id).approved_routes) == [
        "10.0.0.0/8", "198.51.100.0/24"]  # fmt: skip
    assert [str(p) for p in state.get_node(e.id).exit_routes()] == ["0.0.0.0/0", "::/0"]
