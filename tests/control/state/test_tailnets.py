"""State: several tailnets on one server (issue #16 part 1)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from meshscale.control.models import (
    DEFAULT_TAILNET,
    Conflict,
    InvalidArgument,
    NodeID,
    NotFound,
    TailnetID,
    UserID,
)
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine

ALICE_ONLY = '{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}'


class World:
    def __init__(self, path: str = ":memory:", policy: bool = False) -> None:
        rng = random.Random(2)
        self.st = State.open(path, rand=rng.randbytes, randbelow=rng.randrange,
                             policy=PolicyEngine() if policy else None)  # fmt: skip
        self.n = 0

    def node(self, user: UserID, name: str) -> NodeID:
        self.n += 1
        return self.st.register_node(MachinePublic(bytes([self.n]) * 32),
                                     NodePublic(bytes([self.n, 9]) * 16), user,
                                     {"Hostname": name}).id  # fmt: skip

    def peers(self, nid: NodeID) -> set[NodeID]:
        return {p.id for p in self.st.peers_of(nid)}


def test_tailnet_admin_create_list_rename_delete() -> None:
    st = World().st
    assert [(t.id, t.name) for t in st.list_tailnets()] == [(1, "default")]
    acme = st.create_tailnet("acme")
    assert st.get_tailnet_by_name("acme") == acme
    with pytest.raises(Conflict, match="already exists"):
        st.create_tailnet("acme")
    for bad in ("", "Acme", "-x", "a" * 64, "a b", "x_y"):
        with pytest.raises(InvalidArgument, match="invalid tailnet name"):
            st.create_tailnet(bad)
    renamed = st.rename_tailnet(acme.id, "acme2")
    assert renamed.name == "acme2" and st.get_tailnet(acme.id).name == "acme2"
    with pytest.raises(Conflict):
        st.rename_tailnet(acme.id, "default")
    bob = st.create_user("bob", tailnet=acme.id)
    with pytest.raises(Conflict, match="not empty: it has 1 user"):
        st.delete_tailnet(acme.id)
    with pytest.raises(InvalidArgument, match="default tailnet cannot be deleted"):
        st.delete_tailnet(DEFAULT_TAILNET)
    with pytest.raises(NotFound):
        st.delete_tailnet(TailnetID(99))
    with pytest.raises(NotFound):
        st.create_user("x", tailnet=TailnetID(99))
    st.delete_user(bob.id)
    st.delete_tailnet(acme.id)
    assert [t.name for t in st.list_tailnets()] == ["default"]


def test_names_are_per_tailnet_and_lookups_name_the_tailnet() -> None:
    w = World()
    st = w.st
    acme = st.create_tailnet("acme").id
    a = st.create_user("alice")
    b = st.create_user("alice", tailnet=acme)  # the same name, another tailnet
    with pytest.raises(Conflict, match="already exists in tailnet 'acme'"):
        st.create_user("alice", tailnet=acme)
    assert st.get_user_by_name("alice", DEFAULT_TAILNET) == a
    assert st.get_user_by_name("alice", acme) == b
    with pytest.raises(Conflict, match="several tailnets"):
        st.get_user_by_name("alice")
    n1, n2 = w.node(a.id, "laptop"), w.node(b.id, "laptop")
    assert st.get_node(n1).given_name == st.get_node(n2).given_name == "laptop"
    assert st.get_node(n2).tailnet_id == acme
    assert st.get_node_by_given_name("laptop") == st.get_node(n1)
    assert st.get_node_by_given_name("laptop", acme) == st.get_node(n2)
    n3 = w.node(b.id, "laptop")  # a clash inside one tailnet still gets a new name
    assert st.get_node(n3).given_name != "laptop"
    with pytest.raises(Conflict):
        st.rename_node(n3, "laptop")
    st.rename_user(b.id, "bob")
    assert [u.name for u in st.list_users(acme)] == ["bob"]
    assert [n.id for n in st.list_nodes(tailnet=acme)] == [n2, n3]
    # addresses are one space per server
    addrs = [x for n in st.list_nodes() for x in n.addresses()]
    assert len(addrs) == len(set(addrs))


def test_maps_hold_only_the_own_tailnet_without_and_with_policies() -> None:
    for policy in (False, True):
        w = World(policy=policy)
        st = w.st
        acme = st.create_tailnet("acme").id
        alice, bob = st.create_user("alice"), st.create_user("bob", tailnet=acme)
        a1, a2 = w.node(alice.id, "a1"), w.node(alice.id, "a2")
        b1, b2 = w.node(bob.id, "b1"), w.node(bob.id, "b2")
        assert w.peers(a1) == {a2} and w.peers(b1) == {b2}
        assert st.viewers_of(a1) == {a2} and st.viewers_of(b1) == {b2}
        assert not st.can_see(a1, b1) and not st.can_see(b1, a1)
        assert st.routes_view(a1, b1) == frozenset()
        # no rule of either tailnet names the other's addresses as a source
        b1_ip = str(st.get_node(b1).ipv4)
        assert not any(b1_ip in r.SrcIPs for r in st.packet_filter(a1))


def test_policies_are_per_tailnet() -> None:
    w = World(policy=True)
    st = w.st
    acme = st.create_tailnet("acme").id
    alice, carl = st.create_user("alice"), st.create_user("carl")
    bob, bert = st.create_user("bob", tailnet=acme), st.create_user("bert", tailnet=acme)
    a1, c1 = w.node(alice.id, "a1"), w.node(carl.id, "c1")
    b1, b2 = w.node(bob.id, "b1"), w.node(bert.id, "b2")
    v = st.set_policy(ALICE_ONLY, tailnet=acme)  # names no user of acme: acme denies all
    assert st.policy_of(acme) == ALICE_ONLY and st.policy_of() is None
    assert w.peers(b1) == set() and w.peers(a1) == {c1}  # default still allows all
    assert [x.version for x in st.policy_history(tailnet=acme)] == [v.version]
    assert st.policy_history() == []
    st.set_policy(ALICE_ONLY)
    assert w.peers(a1) == set()  # carl is not alice
    st.set_policy("{}", tailnet=acme)
    assert w.peers(b1) == {b2}
    st.rollback_policy(v.version, tailnet=acme)
    assert w.peers(b1) == set()
    with pytest.raises(NotFound):
        st.rollback_policy(v.version)  # a version of another tailnet
    with pytest.raises(NotFound):
        st.set_policy("{}", tailnet=TailnetID(99))


def test_keys_nodes_and_moves_stay_in_their_tailnet() -> None:
    w = World()
    st = w.st
    acme = st.create_tailnet("acme").id
    alice, bob = st.create_user("alice"), st.create_user("bob", tailnet=acme)
    key = st.create_preauth_key(bob.id, reusable=True)
    assert key.key.tailnet_id == acme
    assert [k.id for k in st.list_preauth_keys(tailnet=acme)] == [key.key.id]
    assert st.list_preauth_keys(tailnet=DEFAULT_TAILNET) == []
    n = st.register_with_preauth_key(key.secret, MachinePublic(b"m" * 32),
                                     NodePublic(b"n" * 32), {"Hostname": "b1"})  # fmt: skip
    assert n.tailnet_id == acme and n.user_id == bob.id
    with pytest.raises(InvalidArgument, match="another tailnet"):
        st.move_node(n.id, alice.id)
    # the same machine cannot silently join another tailnet
    with pytest.raises(Conflict, match="of tailnet 'acme'"):
        st.register_node(MachinePublic(b"m" * 32), NodePublic(b"o" * 32), alice.id, {})
    scoped = st.create_api_key(tailnet=acme)
    assert scoped.key.tailnet_id == acme
    assert [k.id for k in st.list_api_keys(tailnet=acme)] == [scoped.key.id]
    with pytest.raises(NotFound):
        st.create_api_key(tailnet=TailnetID(99))


def test_tailnets_survive_a_restart_and_scoped_keys_go_with_their_tailnet(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "db.sqlite")
    w = World(path, policy=True)
    st = w.st
    acme = st.create_tailnet("acme").id
    bob = st.create_user("bob", tailnet=acme)
    b1 = w.node(bob.id, "b1")
    st.set_policy("{}", tailnet=acme)
    scoped = st.create_api_key(tailnet=acme).key.id
    st.close()
    st = State.open(path, policy=PolicyEngine())
    assert st.get_tailnet_by_name("acme").id == acme
    assert st.get_node(b1).tailnet_id == acme and st.get_user(bob.id).tailnet_id == acme
    assert st.policy_of(acme) == "{}" and st.policy_of() is None
    assert st.get_api_key(scoped).tailnet_id == acme
    st.delete_node(b1)
    st.delete_user(bob.id)
    st.delete_tailnet(acme)
    with pytest.raises(NotFound):
        st.get_api_key(scoped)
    st.close()
    st = State.open(path)
    assert [t.name for t in st.list_tailnets()] == ["default"]
    assert st.list_api_keys() == []
    st.close()


def test_fqdn_in_own_tailnet_uses_its_base_domain_else_the_servers() -> None:
    w = World()
    st = w.st
    acme = st.create_tailnet("acme")
    bob = st.create_user("bob", tailnet=acme.id)
    node = st.get_node(w.node(bob.id, "b1"))
    assert st.core.fqdn_in_own_tailnet(node) == ""  # the server's dns.base_domain
    st.core.tailnets[acme.id] = type(acme)(acme.id, acme.name, "acme.example", None)
    assert st.core.fqdn_in_own_tailnet(node) == "b1.acme.example."
