"""State and its PolicyManager: what State feeds the manager, and where it asks it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import pytest

from meshscale.control.models import InvalidArgument, IPPrefix, NodeID, PolicyChanged
from meshscale.control.state import State
from meshscale.policy import (
    EVERYONE,
    NO_CHANGE,
    PolicyChange,
    PolicyError,
    PolicyNode,
    PolicyUser,
)
from meshscale.tailcfg import FilterRule, NetPortRange, PortRange

from .test_state import FakeClock, mk, nk

RULES = [FilterRule(SrcIPs=["100.64.0.1"], DstPorts=[NetPortRange("*", Ports=PortRange(22, 22))])]


class ScriptedPolicy:
    """A PolicyManager whose answers the test sets; it records what State feeds it."""

    def __init__(self) -> None:
        self.fed: list[str] = []
        self.hidden: set[tuple[int, int]] = set()  # (viewer, peer) pairs not shown
        self.denied_tags: set[str] = set()
        self.denied_routes: set[IPPrefix] = set()
        self.on_update = NO_CHANGE
        self.nodes: dict[int, PolicyNode] = {}

    def set_policy(self, text: str | None) -> PolicyChange:
        if text == "bad":
            raise PolicyError("line 1: not a policy")
        self.fed.append(f"policy {text}")
        return EVERYONE

    def set_users(self, users: Iterable[PolicyUser]) -> PolicyChange:
        self.fed.append(f"users {sorted(u.name for u in users)}")
        return NO_CHANGE

    def set_nodes(self, nodes: Iterable[PolicyNode]) -> PolicyChange:
        self.nodes = {n.id: n for n in nodes}
        self.fed.append(f"nodes {sorted(self.nodes)}")
        return NO_CHANGE

    def update_node(self, node: PolicyNode) -> PolicyChange:
        self.nodes[node.id] = node
        self.fed.append(f"update {node.id} {list(node.tags)}")
        return self.on_update

    def remove_node(self, node_id: int) -> PolicyChange:
        del self.nodes[node_id]
        self.fed.append(f"remove {node_id}")
        return NO_CHANGE

    def filter_for(self, node: PolicyNode) -> list[FilterRule]:
        return RULES

    def can_see(self, viewer: PolicyNode, peer: PolicyNode) -> bool:
        return (viewer.id, peer.id) not in self.hidden

    def may_tag(self, node: PolicyNode, tag: str) -> bool:
        return tag not in self.denied_tags

    def knows_tag(self, tag: str) -> bool:
        return tag not in self.denied_tags

    def may_approve_route(self, node: PolicyNode, route: IPPrefix) -> bool:
        return route not in self.denied_routes


@pytest.fixture
def policy() -> ScriptedPolicy:
    return ScriptedPolicy()


@pytest.fixture
def state(policy: ScriptedPolicy) -> State:
    return State.open(":memory:", clock=FakeClock(), policy=policy)


def test_state_feeds_the_manager_what_it_loads_and_writes(
    state: State, policy: ScriptedPolicy
) -> None:
    assert policy.fed == ["policy None", "users []", "nodes []"]
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id)
    state.set_tags(n.id, ["tag:a"])
    state.delete_node(n.id)
    assert policy.fed[3:] == ["users ['alice']", f"update {n.id} []", f"update {n.id} ['tag:a']",
                              f"remove {n.id}"]  # fmt: skip


def test_peers_and_packet_filter_are_the_managers_answers(
    state: State, policy: ScriptedPolicy
) -> None:
    u = state.create_user("alice")
    a, b, c = (state.register_node(mk(i), nk(i), u.id) for i in (1, 2, 3))
    policy.hidden.add((a.id, c.id))
    assert [p.id for p in state.peers_of(a.id)] == [b.id]
    assert [p.id for p in state.peers_of(c.id)] == [a.id, b.id]
    assert state.packet_filter(a.id) == RULES


def test_tags_the_manager_refuses_are_not_given(state: State, policy: ScriptedPolicy) -> None:
    u = state.create_user("alice")
    policy.denied_tags.add("tag:db")
    secret = state.create_preauth_key(u.id, tags=["tag:db"]).secret
    with pytest.raises(InvalidArgument, match="tag:db"):
        state.register_with_preauth_key(secret, mk(1), nk(1))
    assert state.list_nodes() == []
    assert not state.validate_preauth_key(secret).used  # the consume rolled back
    n = state.register_node(mk(2), nk(2), u.id, tags=["tag:web"])
    with pytest.raises(InvalidArgument, match="tag:db"):
        state.set_tags(n.id, ["tag:web", "tag:db"])
    assert state.get_node(n.id).tags == ("tag:web",)
    policy.denied_tags.add("tag:web")  # a tag the node already carries is not asked again
    assert state.set_tags(n.id, ["tag:web"]).tags == ("tag:web",)


def test_an_admin_approves_routes_autoapprovers_would_not(
    state: State, policy: ScriptedPolicy
) -> None:
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id)
    policy.denied_routes.add(ipaddress.ip_network("10.9.0.0/16"))  # (may_approve_route: auto)
    got = state.approve_routes(n.id, ["10.1.0.0/16", "10.9.0.0/16"]).approved_routes
    assert [str(r) for r in got] == ["10.1.0.0/16", "10.9.0.0/16"]


def test_answers_a_write_changes_for_others_are_published(
    state: State, policy: ScriptedPolicy
) -> None:
    u = state.create_user("alice")
    a = state.register_node(mk(1), nk(1), u.id)
    sub = state.subscribe()
    policy.on_update = PolicyChange(nodes=frozenset({7, 8}))
    state.set_tags(a.id, ["tag:a"])
    events = sub.drain()
    assert events[-1] == PolicyChanged(frozenset({NodeID(7), NodeID(8)}))


def test_a_policy_the_manager_refuses_changes_nothing(state: State, policy: ScriptedPolicy) -> None:
    state.set_policy('{"acls": []}')
    sub = state.subscribe()
    with pytest.raises(InvalidArgument, match="not a policy"):
        state.set_policy("bad")
    assert state.policy == '{"acls": []}'
    assert state.store.load().policy == '{"acls": []}'
    assert sub.drain() == []
    state.set_policy("{}")
    assert sub.drain() == [PolicyChanged()]
