"""Issue #9 item 4, with the real PolicyEngine: a node that logs in again with a tagged
pre-auth key keeps (or takes the new key's) tags and stays a tagged node in the policy;
``autogroup:admin`` in tagOwners is accepted as Tailscale accepts it (Headscale refuses it):
it defines the tag for admins and lets no node request it."""

from __future__ import annotations

import pytest

from meshscale.control.models import InvalidArgument, NodeID
from meshscale.control.state import State
from meshscale.policy import PolicyEngine

from .test_state import FakeClock, mk, nk

POLICY = """{
  "groups": {"group:dev": ["dev@"]},
  "tagOwners": {"tag:db": ["autogroup:admin"], "tag:web": ["group:dev", "autogroup:admin"]},
  "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}],
}"""


@pytest.fixture
def state() -> State:
    s = State.open(":memory:", clock=FakeClock(), policy=PolicyEngine())
    s.set_policy(POLICY)
    return s


def _reaches_db(state: State, src: NodeID, db: NodeID) -> bool:
    ips = {ip for r in state.packet_filter(db) for ip in r.SrcIPs}
    return str(state.get_node(src).ipv4) in ips


def test_autogroup_admin_owner_is_accepted_with_a_warning(state: State) -> None:
    engine = state.core.policy
    assert isinstance(engine, PolicyEngine)
    warnings = engine.warnings
    assert any("tag:db: autogroup:admin" in w and "cannot request" in w for w in warnings)
    assert any("autogroup:admin" in w for w in state.check_policy(POLICY))  # and check says so


def test_autogroup_admin_tag_is_given_by_a_key_not_requested(state: State) -> None:
    dev = state.create_user("dev")
    with pytest.raises(InvalidArgument, match=r"requested tags \[tag:db\]"):
        state.register_node(mk(1), nk(1), dev.id, {"Hostname": "a", "RequestTags": ["tag:db"]})
    # tag:web also names group:dev, so dev may request it; autogroup:admin adds no one.
    web = state.register_node(mk(2), nk(2), dev.id, {"Hostname": "w", "RequestTags": ["tag:web"]})
    assert web.tags == ("tag:web",)
    key = state.create_preauth_key(dev.id, tags=["tag:db"]).secret  # an admin's key
    db = state.register_with_preauth_key(key, mk(3), nk(3), {"Hostname": "db"})
    assert db.tags == ("tag:db",)
    assert state.set_tags(web.id, ["tag:db"]).tags == ("tag:db",)  # nodes tag: an admin


def test_relogin_with_a_tagged_key_keeps_the_tags(state: State) -> None:
    dev = state.create_user("dev")
    laptop = state.register_node(mk(1), nk(1), dev.id, {"Hostname": "laptop"})
    key = state.create_preauth_key(dev.id, reusable=True, tags=["tag:db"]).secret
    db = state.register_with_preauth_key(key, mk(2), nk(2), {"Hostname": "db"})
    assert db.tags == ("tag:db",) and _reaches_db(state, laptop.id, db.id)
    # A restart re-sends the key with the same node key: nothing changes.
    again = state.register_with_preauth_key(key, mk(2), nk(2), {"Hostname": "db"})
    assert (again.id, again.tags) == (db.id, ("tag:db",))
    # A re-login with a new node key (logout, or --force-reauth): the same node, still
    # tagged, still reached through the tag rule, and not owned by dev in the policy.
    relog = state.register_with_preauth_key(key, mk(2), nk(3), {"Hostname": "db"})
    assert (relog.id, relog.tags, relog.node_key) == (db.id, ("tag:db",), nk(3))
    assert _reaches_db(state, laptop.id, db.id)
    assert relog.id in {p.id for p in state.peers_of(laptop.id)}


def test_relogin_after_expiry_with_a_new_tagged_key_takes_its_tags(state: State) -> None:
    dev = state.create_user("dev")
    laptop = state.register_node(mk(1), nk(1), dev.id, {"Hostname": "laptop"})
    first = state.create_preauth_key(dev.id, tags=["tag:web"]).secret
    node = state.register_with_preauth_key(first, mk(2), nk(2), {"Hostname": "srv"})
    assert node.tags == ("tag:web",) and not _reaches_db(state, laptop.id, node.id)
    state.expire_node(node.id)
    second = state.create_preauth_key(dev.id, tags=["tag:db"]).secret
    relog = state.register_with_preauth_key(second, mk(2), nk(2), {"Hostname": "srv"})
    assert (relog.id, relog.tags) == (node.id, ("tag:db",))
    assert _reaches_db(state, laptop.id, node.id)  # the policy sees the new tag at once


def test_users_by_id_is_shared_until_a_user_changes(state: State) -> None:
    a = state.create_user("a")
    first = state.users_by_id()
    assert state.users_by_id() is first and list(first) == [a.id]  # no rebuild per map
    b = state.create_user("b")
    assert list(state.users_by_id()) == [a.id, b.id]
    state.rename_user(a.id, "a2")
    assert state.users_by_id()[a.id].name == "a2"
    state.delete_user(b.id)
    assert list(state.users_by_id()) == [a.id]
