"""Property: a policy swap derived from the Compiled in force (policy/incremental.py) ==
a from-scratch compile, and its PolicyChange names every node whose filter, peer set or
reachable routes moved (docs/protocol/policy.md §7 item 16).

Random small tailnets and policies (ACLs and grants over groups, tags, users, hosts,
addresses, autogroups, via, app caps); random edits: a group member added or removed, a
rule replaced, inserted, removed or two swapped, a node retagged, a user removed or put
back. After each edit the engine is compared with a fresh one fed the same inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.policy.tailnet import USERS, node

from meshscale.control.models import Node, User
from meshscale.policy import PolicyEngine, PolicyError
from meshscale.tailcfg import to_json

TAGS = ["tag:a", "tag:b", "tag:c"]
MEMBERS = ["alice@example.com", "bob@", "dev@", "other@"]
SRC = ["*", "group:g0", "group:g1", "group:g2", *TAGS, "alice@example.com", "dev@",
       "autogroup:member", "autogroup:tagged", "lan", "h3", "100.64.0.5"]  # fmt: skip
SELF_SRC = ["group:g0", "group:g1", "dev@", "autogroup:member", "alice@example.com"]
DST = ["tag:a", "tag:b", "group:g0", "group:g1", "bob@", "autogroup:member",
       "autogroup:tagged", "*", "lan", "h3"]  # fmt: skip
PORTS = ["22", "80,443", "*", "1000-2000"]

NODE = st.builds(
    lambda i, u, tags, route: node(i, USERS[u], tags=tags, routes=route, approved=route),
    st.integers(1, 8),
    st.integers(0, 3),
    st.sampled_from([(), ("tag:a",), ("tag:b",), ("tag:a", "tag:c")]),
    st.sampled_from([(), ("10.1.2.0/24",), ("0.0.0.0/0", "::/0")]),
)


def _acl(src: list[str], dst: list[tuple[str, str]], proto: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"action": "accept", "src": src, "dst": [f"{a}:{p}" for a, p in dst]}
    if proto:
        out["proto"] = proto
    return out


ACL = st.builds(
    _acl,
    st.lists(st.sampled_from(SRC), min_size=1, max_size=3, unique=True),
    st.lists(st.tuples(st.sampled_from(DST), st.sampled_from(PORTS)), min_size=1, max_size=2),
    st.sampled_from([None, None, "udp"]),
)
SELF_ACL = st.builds(
    _acl,
    st.lists(st.sampled_from(SELF_SRC), min_size=1, max_size=2, unique=True),
    st.lists(
        st.tuples(st.sampled_from(["autogroup:self", "autogroup:self", "tag:b"]),
                  st.sampled_from(PORTS)), min_size=1, max_size=2),
    st.none(),
)  # fmt: skip
GRANT = st.one_of(
    st.builds(lambda s, d, ip: {"src": s, "dst": d, "ip": ip},
              st.lists(st.sampled_from(SRC), min_size=1, max_size=2, unique=True),
              st.lists(st.sampled_from(DST), min_size=1, max_size=2, unique=True),
              st.sampled_from([["*"], ["tcp:22"], ["tcp:80", "udp:53"]])),
    st.builds(lambda s, via: {"src": s, "dst": ["lan", "autogroup:internet"], "ip": ["*"],
                              "via": via},
              st.lists(st.sampled_from(SRC), min_size=1, max_size=2, unique=True),
              st.sampled_from([["tag:a"], ["tag:b", "tag:c"]])),
    st.builds(lambda s, d: {"src": s, "dst": d, "app": {"example.com/cap/x": [{"n": 1}]}},
              st.lists(st.sampled_from(SRC), min_size=1, max_size=2, unique=True),
              st.lists(st.sampled_from(DST[:5]), min_size=1, max_size=2, unique=True)),
)  # fmt: skip
RULE = st.one_of(st.tuples(st.just("acls"), st.one_of(ACL, SELF_ACL)),
                 st.tuples(st.just("grants"), GRANT))  # fmt: skip
GROUPS = st.fixed_dictionaries(
    {f"group:g{g}": st.lists(st.sampled_from(MEMBERS), max_size=3, unique=True) for g in range(3)}
)
EDIT = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.sampled_from(MEMBERS)),
    st.tuples(st.just("remove"), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("replace"), st.integers(0, 9), RULE),
    st.tuples(st.just("insert"), st.integers(0, 9), RULE),
    st.tuples(st.just("delete"), st.integers(0, 9)),
    st.tuples(st.just("swap"), st.integers(0, 9), st.integers(0, 9)),
    st.tuples(st.just("retag"), st.integers(1, 8),
              st.sampled_from([(), ("tag:a",), ("tag:b",), ("tag:c", "tag:b")])),
    st.tuples(st.just("users"), st.integers(0, 3)),
)  # fmt: skip


@dataclasses.dataclass
class World:
    groups: dict[str, list[str]]
    acls: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    nodes: dict[int, Node]
    users: list[User]

    def text(self) -> str:
        return json.dumps({
            "groups": self.groups,
            "tagOwners": {"tag:a": ["group:g0"], "tag:b": ["alice@example.com"],
                          "tag:c": ["tag:a"]},
            "hosts": {"lan": "10.1.0.0/16", "h3": "100.64.0.3/32"},
            "acls": self.acls,
            "grants": self.grants,
        })  # fmt: skip

    def rules(self) -> list[tuple[str, dict[str, Any]]]:
        return [("acls", r) for r in self.acls] + [("grants", r) for r in self.grants]

    def set_rules(self, rules: list[tuple[str, dict[str, Any]]]) -> None:
        self.acls = [r for k, r in rules if k == "acls"]
        self.grants = [r for k, r in rules if k == "grants"]


Snap = tuple[dict[int, object], dict[int, set[int]], dict[tuple[int, int], object]]


def snapshot(e: PolicyEngine, nodes: dict[int, Node]) -> Snap:
    filters = {i: [to_json(r) for r in e.filter_for(n)] for i, n in nodes.items()}
    peers = {i: e.peer_ids(n) for i, n in nodes.items()}
    for a, n in nodes.items():  # the at-once peer set agrees with can_see
        assert peers[a] == {b for b, m in nodes.items() if b != a and e.can_see(n, m)}, a
    routes = {(a, b): e.reachable_routes(nodes[a], nodes[b])
              for a in nodes for b in nodes if a != b and nodes[b].approved_routes}  # fmt: skip
    return filters, peers, routes


def fresh(w: World) -> PolicyEngine:
    e = PolicyEngine()
    e.set_users(w.users)
    e.set_nodes(w.nodes.values())
    e.set_policy(w.text())
    return e


def apply(w: World, edit: tuple[Any, ...]) -> str:
    """Apply ``edit`` to ``w``; return which engine input it feeds."""
    op = edit[0]
    rules = w.rules()
    if op == "add":
        g = w.groups[f"group:g{edit[1]}"]
        if edit[2] not in g:
            g.append(edit[2])
    elif op == "remove":
        g = w.groups[f"group:g{edit[1]}"]
        if g:
            g.pop(edit[2] % len(g))
    elif op == "replace" and rules:
        rules[edit[1] % len(rules)] = edit[2]
    elif op == "insert":
        rules.insert(edit[1] % (len(rules) + 1), edit[2])
    elif op == "delete" and rules:
        rules.pop(edit[1] % len(rules))
    elif op == "swap" and rules:
        i, j = edit[1] % len(rules), edit[2] % len(rules)
        rules[i], rules[j] = rules[j], rules[i]
    elif op == "retag":
        if edit[1] in w.nodes:
            w.nodes[edit[1]] = dataclasses.replace(w.nodes[edit[1]], tags=edit[2])
        return "node"
    elif op == "users":
        gone = USERS[edit[1]]
        w.users = [u for u in USERS if u != gone] if gone in w.users else list(USERS)
        return "users"
    w.set_rules(rules)
    return "policy"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(NODE, min_size=1, max_size=8),
    GROUPS,
    st.lists(RULE, min_size=1, max_size=6),
    st.lists(EDIT, min_size=1, max_size=8),
)
def test_swap_equals_from_scratch(
    start: list[Node],
    groups: dict[str, list[str]],
    rules: list[tuple[str, dict[str, Any]]],
    edits: list[tuple[Any, ...]],
) -> None:
    w = World(groups, [], [], {n.id: n for n in start}, list(USERS))
    w.set_rules(rules)
    try:
        e = fresh(w)
    except PolicyError:
        return  # an invalid start (e.g. a grant that no rule shape allows): nothing to derive
    for edit in edits:
        before = snapshot(e, w.nodes)
        saved = copy.deepcopy((w.groups, w.acls, w.grants))
        what = apply(w, edit)
        target = edit[1]
        if what == "policy":
            try:
                ref = fresh(w)
            except PolicyError:
                with pytest.raises(PolicyError):
                    e.set_policy(w.text())
                assert snapshot(e, w.nodes) == before  # the old policy stays in force
                w.groups, w.acls, w.grants = saved
                continue
            change = e.set_policy(w.text())
        elif what == "users":
            change = e.set_users(w.users)
            ref = fresh(w)
        else:
            if target not in w.nodes:
                continue
            change = e.update_node(w.nodes[target])
            ref = fresh(w)
        after = snapshot(e, w.nodes)
        assert after == snapshot(ref, w.nodes), edit
        for i in w.nodes:
            f_moved = before[0][i] != after[0][i]
            p_moved = before[1][i] != after[1][i]
            r_moved = any(before[2][k] != after[2][k] for k in after[2] if i in k)
            if what == "node":  # the retagged node itself, and who sees it, are implied
                if i == target:
                    continue
                p_moved = bool((before[1][i] ^ after[1][i]) - {target})
                r_moved = any(before[2][k] != after[2][k] for k in after[2]
                              if i in k and target not in k)  # fmt: skip
            if f_moved or p_moved or r_moved:
                assert change.everyone or i in change.nodes, (edit, i, f_moved, p_moved)


def _policy(g0: list[str], extra: list[dict[str, Any]] = ()) -> str:  # type: ignore[assignment]
    return json.dumps({
        "groups": {"group:g0": g0, "group:g1": ["bob@"]},
        "tagOwners": {"tag:a": ["group:g0"], "tag:b": ["group:g0"]},
        "acls": [
            {"action": "accept", "src": ["*", "group:g0"], "dst": ["tag:a:22"]},
            {"action": "accept", "src": ["group:g1"], "dst": ["tag:b:80"]},
            *extra,
        ],
    })  # fmt: skip


TAILNET = [node(1, USERS[0]), node(2, USERS[1], tags=("tag:a",)), node(3, USERS[2]),
           node(4, USERS[1]), node(5, USERS[3], tags=("tag:b",))]  # fmt: skip


def test_group_member_names_only_that_groups_rules() -> None:
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(TAILNET)
    e.set_policy(_policy([]))
    before = [to_json(r) for r in e.filter_for(TAILNET[1])]  # cached, then must move
    # dev joins group:g0: rule 1 lists dev's node 3 by address (beside `*`), so the
    # destination tag:a (node 2) gets new SrcIPs; group:g1's rule is untouched.
    change = e.set_policy(_policy(["dev@"]))
    assert change.nodes == {2} and not change.everyone
    after = [to_json(r) for r in e.filter_for(TAILNET[1])]
    assert after != before and "100.64.0.3" in after[0]["SrcIPs"]


def test_rule_insert_names_only_its_members() -> None:
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(TAILNET)
    e.set_policy(_policy([]))
    first = {"action": "accept", "src": ["dev@"], "dst": ["alice@example.com:443"]}
    change = e.set_policy(_policy([], [first]))  # a new last rule: dev's 3 → alice's 1
    assert change.nodes == {1, 3}
    moved = json.loads(_policy([]))
    moved["acls"].insert(0, first)  # the same rule moved first: still only its members
    assert e.set_policy(json.dumps(moved)).nodes == {1, 3}
    assert e.set_policy(_policy([])).nodes == {1, 3}  # and removed
