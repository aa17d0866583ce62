"""Property: incremental updates == a full recompute, and PolicyChange names every node
whose filter moved (docs/protocol/policy.md §7 item 16)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.policy.tailnet import USERS, node

from meshscale.control.models import Node
from meshscale.policy import PolicyEngine
from meshscale.tailcfg import to_json

POLICY = """{
  "groups": {"group:dev": ["dev@", "alice@example.com"]},
  "tagOwners": {"tag:db": ["dev@"], "tag:r": ["dev@"]},
  "hosts": {"lan": "10.1.0.0/16"},
  "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:r"]}},
  "acls": [
    {"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["*"], "dst": ["lan:80"]},
    {"action": "accept", "src": ["tag:db"], "proto": "udp", "dst": ["bob@:53"]},
    {"action": "accept", "src": ["lan"], "dst": ["autogroup:tagged:22"]},
  ],
  "grants": [{"src": ["other@"], "dst": ["autogroup:internet"], "ip": ["*"]}],
}"""

NODE = st.builds(
    lambda i, u, tags, route, v4: dataclasses.replace(
        node(i, USERS[u], tags=tags, routes=route, approved=route), ipv4=None
    ) if v4 else node(i, USERS[u], tags=tags, routes=route, approved=route),
    st.integers(1, 8),
    st.integers(0, 3),
    st.sampled_from([(), ("tag:db",), ("tag:r",), ("tag:db", "tag:r")]),
    st.sampled_from([(), ("10.1.2.0/24",), ("10.0.0.0/8",), ("0.0.0.0/0", "::/0")]),
    st.booleans(),
)  # fmt: skip
EVENT = st.one_of(NODE, st.integers(1, 8))  # a write, or a removal by id


def snapshot(
    e: PolicyEngine, nodes: dict[int, Node]
) -> tuple[dict[int, object], set[tuple[int, int]]]:
    filters = {i: [to_json(r) for r in e.filter_for(n)] for i, n in nodes.items()}
    seen = {(a, b) for a in nodes for b in nodes if a != b and e.can_see(nodes[a], nodes[b])}
    for a, n in nodes.items():  # the at-once peer set (full maps) agrees with can_see
        assert e.peer_ids(n) == {b for x, b in seen if x == a}, a
    return filters, seen


@settings(max_examples=150, deadline=None)
@given(st.lists(NODE, max_size=6), st.lists(EVENT, max_size=12))
def test_incremental_equals_full_recompute(start: list[Node], events: list[Node | int]) -> None:
    nodes = {n.id: n for n in start}
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(nodes.values())
    e.set_policy(POLICY)
    for ev in events:
        before_f, before_s = snapshot(e, nodes)
        if isinstance(ev, int):
            changed_id = ev
            change = e.remove_node(ev)
            nodes.pop(ev, None)
        else:
            changed_id = ev.id
            change = e.update_node(ev)
            nodes[ev.id] = ev
        fresh = PolicyEngine()
        fresh.set_users(USERS)
        fresh.set_nodes(nodes.values())
        fresh.set_policy(POLICY)
        after_f, after_s = snapshot(e, nodes)
        assert (after_f, after_s) == snapshot(fresh, nodes)
        for i in nodes.keys() & before_f.keys():
            if i != changed_id and before_f[i] != after_f[i]:
                assert i in change.nodes, (i, change)
        others = {p for p in before_s ^ after_s if changed_id not in p}
        assert not others, others
    # A policy swap after those writes names every node whose filter or peers moved.
    before_f, before_s = snapshot(e, nodes)
    change = e.set_policy(POLICY.replace('"dev@", "alice@example.com"', '"bob@"'))
    after_f, after_s = snapshot(e, nodes)
    for i in nodes:
        moved = before_f[i] != after_f[i] or any(i in p for p in before_s ^ after_s)
        assert not moved or change.everyone or i in change.nodes, (i, change)
