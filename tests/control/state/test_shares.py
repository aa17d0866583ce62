"""State: node sharing across tailnets (issue #16 part 2, docs/protocol/policy.md §6).

Two real tailnets: alice in ``default``, carol and carol2 in ``carols``. Each has its own
policy engine and policy (alice@ ↔ alice@; carol@ ↔ carol@ and tag:ci); the sharer's
lets guests reach alice's devices on 8080 through autogroup:shared.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscale.control.models import (
    Conflict,
    InvalidArgument,
    NodeID,
    NotFound,
    PolicyChanged,
    ShareView,
    UserID,
)
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine

POLICY = """{
  "acls": [
    {"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]},
    {"action": "accept", "src": ["autogroup:shared"], "dst": ["alice@:8080"]}
  ]
}"""
CAROLS_POLICY = """{
  "tagOwners": {"tag:ci": ["carol@"]},
  "acls": [{"action": "accept", "src": ["carol@"], "dst": ["carol@:*", "tag:ci:*"]}]
}"""


class World:
    def __init__(self, path: str = ":memory:") -> None:
        rng = random.Random(1)
        self.st = State.open(path, rand=rng.randbytes, randbelow=rng.randrange,
                             policy=PolicyEngine())  # fmt: skip
        st = self.st
        carols = st.create_tailnet("carols").id
        self.alice = st.create_user("alice")
        self.carol = st.create_user("carol", tailnet=carols)
        self.carol2 = st.create_user("carol2", tailnet=carols)
        st.set_policy(POLICY)
        st.set_policy(CAROLS_POLICY, tailnet=carols)
        self.n = 0
        self.s = self.node(self.alice.id, "s")  # the node to share
        self.a2 = self.node(self.alice.id, "a2")  # alice's other device: never shared
        self.r1 = self.node(self.carol.id, "r1")
        self.r2 = self.node(self.carol.id, "r2")
        self.ci = self.node(self.carol.id, "ci", tags=("tag:ci",))  # tagged: no user
        self.sub = st.subscribe()

    def node(self, user: UserID, name: str, tags: tuple[str, ...] = ()) -> NodeID:
        self.n += 1
        n = self.st.register_node(MachinePublic(bytes([self.n]) * 32),
                                  NodePublic(bytes([self.n, 7]) * 16), user,
                                  {"Hostname": name}, tags=tags)  # fmt: skip
        return n.id

    def peers(self, nid: NodeID) -> set[NodeID]:
        return {p.id for p in self.st.peers_of(nid)}

    def policy_nodes(self) -> set[int]:
        out: set[int] = set()
        for ev in self.sub.drain():
            if isinstance(ev, PolicyChanged):
                assert ev.nodes is not None, "a share must not fan out to everyone"
                out |= set(ev.nodes)
        return out


def test_share_makes_the_shared_node_and_the_recipients_devices_peers() -> None:
    w = World()
    st = w.st
    assert w.s not in w.peers(w.r1) and w.r1 not in w.peers(w.s)
    share = st.share_node(w.s, w.carol.id)
    assert (share.node_id, share.user_id) == (w.s, w.carol.id)
    assert {w.s, w.r1, w.r2} <= w.policy_nodes()
    assert w.peers(w.r1) == {w.r2, w.ci, w.s}  # its own tailnet, plus the shared node only
    assert w.peers(w.s) == {w.a2, w.r1, w.r2}  # not the tagged ci: it has no user identity
    assert w.a2 not in w.peers(w.r1) and w.r1 not in w.peers(w.a2)
    assert st.viewers_of(w.s) == {w.a2, w.r1, w.r2}
    assert st.can_see(w.r1, w.s) and st.can_see(w.s, w.r1) and not st.can_see(w.ci, w.s)
    # how each side sees the other
    assert st.share_view(w.r1, w.s) == ShareView("", sharer=int(w.alice.id))
    assert st.share_view(w.s, w.r1) == ShareView("", sharee=True)
    assert st.share_view(w.r1, w.r2) is None and st.share_view(w.r1, w.a2) is None
    assert st.routes_view(w.r1, w.s) == frozenset()
    # the sharer's policy admits the recipient's devices on 8080; nothing admits S at R
    r1 = st.get_node(w.r1)
    (rule,) = [r for r in st.packet_filter(w.s) if str(r1.ipv4) in r.SrcIPs]
    assert {d.Ports.First for d in rule.DstPorts} == {8080}
    s = st.get_node(w.s)
    assert not any(str(s.ipv4) in r.SrcIPs for r in st.packet_filter(w.r1))
    assert [(x.node_id, x.user_id) for x in st.list_shares()] == [(w.s, w.carol.id)]
    assert st.list_shares(user_id=w.carol2.id) == []


def test_unshare_removes_both_sides_and_tells_them() -> None:
    w = World()
    w.st.share_node(w.s, w.carol.id)
    w.policy_nodes()
    w.st.unshare_node(w.s, w.carol.id)
    assert {w.s, w.r1, w.r2} <= w.policy_nodes()
    assert w.s not in w.peers(w.r1) and w.r1 not in w.peers(w.s)
    assert w.st.share_view(w.r1, w.s) is None
    assert w.st.list_shares() == []
    assert not any(str(w.st.get_node(w.r1).ipv4) in r.SrcIPs for r in w.st.packet_filter(w.s))


def test_bad_shares_are_refused_with_clear_errors() -> None:
    w = World()
    st = w.st
    with pytest.raises(InvalidArgument, match="own tailnet"):
        st.share_node(w.s, w.alice.id)
    with pytest.raises(NotFound):
        st.share_node(NodeID(999), w.carol.id)
    with pytest.raises(NotFound):
        st.share_node(w.s, UserID(999))
    st.share_node(w.s, w.carol.id)
    with pytest.raises(Conflict, match="already shared"):
        st.share_node(w.s, w.carol.id)
    with pytest.raises(NotFound, match="not shared"):
        st.unshare_node(w.s, w.carol2.id)
    assert len(st.list_shares()) == 1


def test_new_devices_deletes_and_users_follow_the_share() -> None:
    w = World()
    st = w.st
    st.share_node(w.s, w.carol.id)
    st.share_node(w.s, w.carol2.id)
    r3 = w.node(w.carol.id, "r3")  # a new device of the recipient sees it at once
    assert w.s in w.peers(r3) and r3 in w.peers(w.s)
    c2 = w.node(w.carol2.id, "c2")
    assert w.s in w.peers(c2)
    assert c2 not in w.peers(w.r1)  # carol2's device is not carol's (no policy says so)
    st.delete_node(c2)
    st.delete_user(w.carol2.id)  # its share goes with it
    assert [x.user_id for x in st.list_shares()] == [w.carol.id]
    st.delete_node(w.s)  # and a deleted node's shares go too
    assert st.list_shares() == []
    assert w.peers(w.r1) == {w.r2, w.ci, r3}


OPS = st.lists(st.tuples(st.booleans(), st.sampled_from(["s", "a2"]),
                         st.sampled_from(["carol", "carol2"])), max_size=8)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_peer_sets_follow_the_share_table(ops: list[tuple[bool, str, str]]) -> None:
    """Property: after any sequence of shares and unshares, a recipient's device sees a node
    of the other tailnet iff that node is shared with its user, and visibility is
    symmetric (the sharer's policy admits every guest on alice@:8080)."""
    w = World()
    c2 = w.node(w.carol2.id, "c2")
    nodes = {"s": w.s, "a2": w.a2}
    users = {"carol": w.carol.id, "carol2": w.carol2.id}
    devices = {w.carol.id: [w.r1, w.r2], w.carol2.id: [c2]}
    model: set[tuple[NodeID, UserID]] = set()
    for share, n, u in ops:
        key = (nodes[n], users[u])
        if share and key not in model:
            w.st.share_node(*key)
            model.add(key)
        elif not share and key in model:
            w.st.unshare_node(*key)
            model.discard(key)
    for uid, devs in devices.items():
        for r in devs:
            for sid in nodes.values():
                want = (sid, uid) in model
                assert (sid in w.peers(r)) == want
                assert (r in w.peers(sid)) == want
                assert (w.st.share_view(r, sid) is not None) == want


def test_a_share_survives_a_restart(tmp_path: Path) -> None:
    """Shares are persisted (migration 0007): after a restart on the same database the
    share is listed and the shared node is still in the recipient's map."""
    path = str(tmp_path / "db.sqlite")
    w = World(path)
    w.st.share_node(w.s, w.carol.id)
    s, r1, carol = w.s, w.r1, w.carol.id
    w.st.close()
    st = State.open(path, policy=PolicyEngine())
    try:
        assert [(x.node_id, x.user_id) for x in st.list_shares()] == [(s, carol)]
        assert s in {p.id for p in st.peers_of(r1)}
        assert r1 in {p.id for p in st.peers_of(s)}
        assert st.share_view(r1, s) == ShareView("", sharer=int(w.alice.id))
        st.unshare_node(s, carol)
    finally:
        st.close()
    st = State.open(path, policy=PolicyEngine())
    try:
        assert st.list_shares() == []
        assert s not in {p.id for p in st.peers_of(r1)}
    finally:
        st.close()
