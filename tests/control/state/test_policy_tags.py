"""Tags with the real PolicyEngine: a node's RequestTags are checked against tagOwners for
its user; an admin (``nodes tag``, tagged pre-auth keys) may give any tag the policy
defines; tagged nodes lose their user identity in the policy."""

from __future__ import annotations

import pytest

from meshscale.control.models import InvalidArgument
from meshscale.control.state import State
from meshscale.policy import PolicyEngine

from .test_state import FakeClock, mk, nk

POLICY = """{
  "groups": {"group:ops": ["ops@"]},
  "tagOwners": {"tag:db": ["group:ops"], "tag:web": ["tag:db"], "tag:ci": []},
  "acls": [{"action": "accept", "src": ["ops@"], "dst": ["ops@:*"]}],
}"""


@pytest.fixture
def state() -> State:
    s = State.open(":memory:", clock=FakeClock(), policy=PolicyEngine())
    s.set_policy(POLICY)
    return s


def test_request_tags_owned_by_the_user_are_taken(state: State) -> None:
    ops = state.create_user("ops")
    n = state.register_node(mk(1), nk(1), ops.id, {"Hostname": "a", "RequestTags": ["tag:db"]})
    assert n.tags == ("tag:db",)
    # A tagged node has no user identity: "ops@" no longer selects it.
    other = state.register_node(mk(2), nk(2), ops.id, {"Hostname": "b"})
    assert state.peers_of(other.id) == []


def test_request_tags_not_owned_are_refused_with_the_reason(state: State) -> None:
    dev = state.create_user("dev")
    with pytest.raises(InvalidArgument, match=r"requested tags \[tag:db\] are invalid or not"):
        state.register_node(mk(1), nk(1), dev.id, {"Hostname": "a", "RequestTags": ["tag:db"]})
    key = state.create_preauth_key(dev.id).secret
    with pytest.raises(InvalidArgument, match=r"requested tags \[tag:nope\]"):
        state.register_with_preauth_key(key, mk(2), nk(2), {"RequestTags": ["tag:nope"]})
    assert state.list_nodes() == []
    assert not state.validate_preauth_key(key).used


def test_tag_owned_by_tag_via_a_tagged_key(state: State) -> None:
    dev = state.create_user("dev")
    key = state.create_preauth_key(dev.id, tags=["tag:db"]).secret
    n = state.register_with_preauth_key(key, mk(1), nk(1), {"RequestTags": ["tag:web"]})
    assert n.tags == ("tag:db", "tag:web")


def test_admin_tags_must_be_defined(state: State) -> None:
    dev = state.create_user("dev")
    n = state.register_node(mk(1), nk(1), dev.id, {"Hostname": "a"})
    assert state.set_tags(n.id, ["tag:ci"]).tags == ("tag:ci",)  # defined, owned by no one
    with pytest.raises(InvalidArgument, match="does not define it in tagOwners"):
        state.set_tags(n.id, ["tag:undefined"])
    key = state.create_preauth_key(dev.id, tags=["tag:undefined"]).secret
    with pytest.raises(InvalidArgument, match="tag:undefined"):
        state.register_with_preauth_key(key, mk(2), nk(2))
