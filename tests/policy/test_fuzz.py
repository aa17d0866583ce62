"""Fuzz: nothing but PolicyError escapes the HuJSON parser or the policy validator."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.policy import PolicyError, parse_policy
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


@settings(max_examples=300)
@given(st.text(alphabet='{}[],:"/*\\ \n\tabc01-.eE+u', max_size=60))
def test_hujson_only_raises_policy_error(text: str) -> None:
    try:
        parse(text)
    except PolicyError:
        pass


@settings(max_examples=200)
@given(JSONISH)
def test_hujson_agrees_with_json(value: object) -> None:
    text = json.dumps(value)
    assert json.loads(to_json(text)) == value


@settings(max_examples=300)
@given(POLICYISH)
def test_validator_only_raises_policy_error(value: object) -> None:
    try:
        parse_policy(json.dumps(value))
    except PolicyError:
        pass
