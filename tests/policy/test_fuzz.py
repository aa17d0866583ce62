"""Fuzz: nothing but PolicyError escapes the HuJSON parser or the policy validator.

Example counts come from the hypothesis profile (HYPOTHESIS_PROFILE=fuzz: 100,000 each)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from tests.policy.tailnet import ALICE, DEV, USERS, node

from meshscale.policy import PolicyEngine, PolicyError, parse_policy
from meshscale.policy.hujson import parse, to_json

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=20,
)
WORDS = ["acls", "grants", "src", "dst", "ip", "action", "accept", "*", "*:*", "tag:a", "group:g",
         "groups", "tagOwners", "hosts", "tests", "autogroup:self", "autogroup:member", "proto",
         "tcp", "a@", "10.0.0.0/8", "22", "via", "app", "autoApprovers", "routes", "exitNode",
         "ssh", "users", "nodeAttrs", "target", "attr", "deny", "0", "1-2", "icmp:*"]  # fmt: skip
POLICYISH = st.recursive(
    st.sampled_from(WORDS) | st.booleans() | st.integers(-1, 70000),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(WORDS), kids, max_size=5)
    ),
    max_leaves=30,
)


@given(st.text(alphabet='{}[],:"/*\\ \n\tabc01-.eE+u', max_size=60))
def test_hujson_only_raises_policy_error(text: str) -> None:
    try:
        parse(text)
    except PolicyError:
        pass


@given(JSONISH)
def test_hujson_agrees_with_json(value: object) -> None:
    text = json.dumps(value)
    assert json.loads(to_json(text)) == value


@given(POLICYISH)
def test_validator_only_raises_policy_error(value: object) -> None:
    try:
        parse_policy(json.dumps(value))
    except PolicyError:
        pass


ALIASES = ["*", "dev@", "alice@example.com", "group:g", "tag:a", "autogroup:member",
           "autogroup:tagged", "10.1.0.0/16", "100.64.0.1", "h",
           "autogroup:danger-all"]  # fmt: skip
DSTS = ["*:*", "tag:a:22", "group:g:80-90", "autogroup:self:*", "autogroup:internet:*",
        "10.1.2.0/24:443", "h:1,2", "autogroup:member:5432", "[fd7a:115c:a1e0::1]:22"]  # fmt: skip
RULE = st.fixed_dictionaries(
    {
        "src": st.lists(st.sampled_from(ALIASES), max_size=3),
        "dst": st.lists(st.sampled_from(DSTS), max_size=3),
        "proto": st.sampled_from(["", "tcp", "udp", "icmp", "47"]),
    }
)
NODES = [
    node(1, DEV),
    node(2, ALICE, tags=("tag:a",)),
    node(3, ALICE, routes=("10.1.0.0/16",), approved=("10.1.0.0/16",)),
    node(4, DEV, routes=("0.0.0.0/0",), approved=("0.0.0.0/0",)),
]


@given(st.lists(RULE, max_size=5))
def test_compiling_any_rules_only_raises_policy_error(rules: list[dict[str, object]]) -> None:
    acls = [dict(r, action="accept") for r in rules]
    policy = {"groups": {"group:g": ["dev@"]}, "tagOwners": {"tag:a": []},
              "hosts": {"h": "10.1.2.3"}, "acls": acls}  # fmt: skip
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(NODES)
    try:
        e.set_policy(json.dumps(policy))
    except PolicyError:
        return
    for a in NODES:
        for rule in e.filter_for(a):
            assert rule.SrcIPs and (rule.DstPorts or rule.CapGrant)
        for b in NODES:
            if a.id != b.id:
                assert e.can_see(a, b) == e.can_see(b, a)
