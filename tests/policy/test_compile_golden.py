"""Golden policy → FilterRules cases from docs/protocol/policy.md (§3.6, §2, §7)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from tests.policy.tailnet import ALICE, BOB, DEV, OTHER, USERS, node

from meshscale.control.models import Node
from meshscale.policy import EVERYONE, NO_CHANGE, PolicyEngine, PolicyError, PolicyManager
from meshscale.tailcfg import to_json

STAR = ["100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255", "fd7a:115c:a1e0::/48"]


def engine(text: str | None, nodes: list[Node]) -> PolicyEngine:
    e = PolicyEngine()
    e.set_users(USERS)
    e.set_nodes(nodes)
    e.set_policy(text)
    return e


def wire(e: PolicyEngine, n: Node) -> list[object]:
    return [to_json(r) for r in e.filter_for(n)]


def peers(e: PolicyEngine, n: Node, nodes: list[Node]) -> set[int]:
    seen = {p.id for p in nodes if p.id != n.id and e.can_see(n, p)}
    assert e.peer_ids(n) == seen  # the at-once form (full maps) agrees
    return seen


WORKED = """{
  // docs/protocol/policy.md §3.6, the worked example
  "groups": {"group:dev": ["alice@example.com", "bob@example.com",],},
  "tagOwners": {"tag:db": ["alice@example.com"]},
  /* one rule */
  "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}],
}"""


def test_worked_example_byte_for_byte() -> None:
    alice, bob = node(1, ALICE), node(2, BOB)
    db1 = node(10, ALICE, tags=("tag:db",))
    nodes = [alice, bob, db1]
    e = engine(WORKED, nodes)
    assert wire(e, db1) == [
        {
            "SrcIPs": ["100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"],
            "DstPorts": [
                {"IP": "100.64.0.10", "Ports": {"First": 5432, "Last": 5432}},
                {"IP": "fd7a:115c:a1e0::a", "Ports": {"First": 5432, "Last": 5432}},
            ],
        }
    ]
    assert wire(e, alice) == [] and wire(e, bob) == []
    assert peers(e, db1, nodes) == {1, 2}
    assert peers(e, alice, nodes) == {10} and peers(e, bob, nodes) == {10}


@pytest.mark.parametrize("text", [None, "{}", "", "// only a comment\n", '{"tagOwners": {}}'])
def test_no_access_sections_is_saas_allow_all(text: str | None) -> None:
    nodes = [node(1, ALICE), node(2, BOB, tags=())]
    e = engine(text, nodes)
    for n in nodes:
        assert wire(e, n) == [
            {"SrcIPs": STAR, "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
        ]
    assert e.can_see(nodes[0], nodes[1])


@pytest.mark.parametrize("text", ['{"acls": []}', '{"grants": []}'])
def test_empty_rule_lists_deny_all_and_no_peers(text: str) -> None:
    nodes = [node(1, ALICE), node(2, BOB)]
    e = engine(text, nodes)
    assert wire(e, nodes[0]) == [] and wire(e, nodes[1]) == []
    assert not e.can_see(nodes[0], nodes[1])


def test_star_src_lists_every_served_route_but_no_exit() -> None:
    r1 = node(1, ALICE, routes=("10.0.0.0/8",), approved=("10.0.0.0/8",))
    r2 = node(2, ALICE, routes=("10.33.0.0/16",), approved=("10.33.0.0/16",))
    ex = node(3, BOB, routes=("0.0.0.0/0", "::/0"))  # advertised, not approved
    unserved = node(4, BOB, approved=("10.44.0.0/16",))  # approved but not announced
    nodes = [r1, r2, ex, unserved]
    e = engine('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}', nodes)
    # numeric order (SaaS sorts as strings; the order is cosmetic)
    assert e.filter_for(ex)[0].SrcIPs == ["10.0.0.0/8", "10.33.0.0/16", *STAR]


def test_protocols_and_merging() -> None:
    a, b = node(1, ALICE), node(2, BOB)
    text = """{"grants": [{"src": ["bob@"], "dst": ["alice@"],
                            "ip": ["tcp:80", "udp:53", "tcp:443"]}],
      "acls": [{"action": "accept", "src": ["bob@example.com"], "proto": "tcp",
                "dst": ["alice@:22"]},
               {"action": "accept", "src": ["bob@"], "proto": "tcp", "dst": ["alice@:25"]},
               {"action": "accept", "src": ["autogroup:danger-all"], "dst": ["alice@:8080"]}]}"""
    e = engine(text, [a, b])
    rules = e.filter_for(a)
    assert [(r.IPProto, [(d.IP, d.Ports.First) for d in r.DstPorts]) for r in rules] == [
        # merged rules append their DstPorts; each rule's entries are IP-major
        ([6], [("100.64.0.1", 22), ("fd7a:115c:a1e0::1", 22), ("100.64.0.1", 25),
               ("fd7a:115c:a1e0::1", 25), ("100.64.0.1", 80), ("100.64.0.1", 443),
               ("fd7a:115c:a1e0::1", 80), ("fd7a:115c:a1e0::1", 443)]),
        ([], [("100.64.0.1", 8080), ("fd7a:115c:a1e0::1", 8080)]),
        ([17], [("100.64.0.1", 53), ("fd7a:115c:a1e0::1", 53)]),
    ]  # fmt: skip
    assert rules[0].SrcIPs == ["100.64.0.2", "fd7a:115c:a1e0::2"]
    assert rules[1].SrcIPs == ["*"]
    assert "SrcBits" not in str([to_json(r) for r in rules])


def test_allow_all_plus_narrow_rule_are_both_sent() -> None:
    a, b = node(1, ALICE), node(2, BOB)
    text = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]},' \
           '{"action": "accept", "src": ["bob@"], "dst": ["alice@:22"]}]}'  # fmt: skip
    assert len(engine(text, [a, b]).filter_for(a)) == 2


def test_internet_goes_to_approved_exit_nodes_only() -> None:
    src = node(1, ALICE)
    ex = node(
        2, BOB, tags=("tag:exit",), routes=("0.0.0.0/0", "::/0"), approved=("0.0.0.0/0", "::/0")
    )
    adv = node(3, BOB, tags=("tag:exit",), routes=("0.0.0.0/0", "::/0"))
    nodes = [src, ex, adv]
    text = """{"tagOwners": {"tag:exit": ["bob@"]},
      "acls": [{"action": "accept", "src": ["alice@"], "dst": ["autogroup:internet:*"]}]}"""
    e = engine(text, nodes)
    ips = [d.IP for d in e.filter_for(ex)[0].DstPorts]
    assert ips[0] == "0.0.0.0-9.255.255.255" and len(ips) == 7
    assert ips[-1] == "2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert e.filter_for(adv) == [] and e.filter_for(src) == []
    assert peers(e, src, nodes) == {2}


def test_subnet_destination_goes_to_the_overlapping_router_only() -> None:
    a = node(1, ALICE)
    router = node(2, BOB, routes=("10.0.0.0/8",), approved=("10.0.0.0/8",))
    other = node(3, BOB)
    nodes = [a, router, other]
    e = engine('{"acls": [{"action": "accept", "src": ["*"], "dst": ["10.99.0.0/16:*"]}]}', nodes)
    assert [d.IP for d in e.filter_for(router)[0].DstPorts] == ["10.99.0.0/16"]
    assert e.filter_for(a) == [] and e.filter_for(other) == []
    assert peers(e, a, nodes) == {2} and peers(e, other, nodes) == {2}


def test_hosts_and_single_host_without_length() -> None:
    a, b = node(1, ALICE), node(2, BOB)
    text = """{"hosts": {"web": "100.64.0.2"},
      "acls": [{"action": "accept", "src": ["100.64.0.1/32"], "dst": ["web:80,443-444"]}]}"""
    rule = engine(text, [a, b]).filter_for(b)[0]
    assert rule.SrcIPs == ["100.64.0.1"]
    assert [(d.IP, d.Ports.First, d.Ports.Last) for d in rule.DstPorts] == [
        ("100.64.0.2", 80, 80), ("100.64.0.2", 443, 444)
    ]  # fmt: skip


def test_tagged_nodes_have_no_user_identity() -> None:
    mine, tagged, target = node(1, ALICE), node(2, ALICE, tags=("tag:ci",)), node(3, BOB)
    text = """{"tagOwners": {"tag:ci": ["alice@"]},
      "acls": [{"action": "accept", "src": ["alice@", "autogroup:member"], "dst": ["bob@:*"]}]}"""
    e = engine(text, [mine, tagged, target])
    assert e.filter_for(target)[0].SrcIPs == ["100.64.0.1", "100.64.0.3", "fd7a:115c:a1e0::1",
                                               "fd7a:115c:a1e0::3"]  # fmt: skip
    assert not e.can_see(tagged, target)


def test_autogroup_self_per_user_and_a_new_device_updates_siblings() -> None:
    a1, a2, b1 = node(1, ALICE), node(2, ALICE), node(3, BOB)
    nodes = [a1, a2, b1]
    text = (
        '{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}'
    )
    e = engine(text, nodes)
    assert e.filter_for(a1)[0].SrcIPs == ["100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1",
                                           "fd7a:115c:a1e0::2"]  # fmt: skip
    assert e.filter_for(b1)[0].SrcIPs == ["100.64.0.3", "fd7a:115c:a1e0::3"]
    assert e.can_see(a1, a2) and not e.can_see(a1, b1)
    a3 = node(4, ALICE)
    change = e.update_node(a3)
    assert change.nodes == {1, 2}
    assert "100.64.0.4" in e.filter_for(a1)[0].SrcIPs


def test_app_grant_makes_capgrant_rules_and_peers() -> None:
    a, b = node(1, ALICE), node(2, BOB)
    text = '{"grants": [{"src": ["alice@"], "dst": ["bob@"],' \
           ' "app": {"example.com/cap/web": [{"r": 1}]}}]}'  # fmt: skip
    e = engine(text, [a, b])
    assert wire(e, b) == [
        {
            "SrcIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
            "CapGrant": [
                {
                    "Dsts": ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
                    "CapMap": {"example.com/cap/web": [{"r": 1}]},
                }
            ],
        }
    ]
    assert e.can_see(a, b) and e.can_see(b, a)


def test_policy_tests_accept_and_deny() -> None:
    dev1, other1 = node(1, DEV), node(2, OTHER)
    db = node(10, DEV, tags=("tag:db",))
    base = """{"groups": {"group:dev": ["dev@"]}, "tagOwners": {"tag:db": ["dev@"]},
      "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}],
      "tests": [%s]}"""
    good = '{"src": "dev@", "accept": ["tag:db:5432"], "deny": ["tag:db:8080"]}'
    e = engine(base % good, [dev1, other1, db])
    bad = '{"src": "other@", "accept": ["tag:db:5432"]}'
    with pytest.raises(PolicyError, match=r"should accept"):
        e.set_policy(base % bad)
    bad_deny = '{"src": "dev@", "deny": ["tag:db:5432"]}'
    with pytest.raises(PolicyError, match=r"should deny"):
        e.set_policy(base % bad_deny)
    assert e.text == base % good  # the old policy stays in force
    assert e.can_see(dev1, db) and not e.can_see(other1, db)


def test_policy_change_names_only_affected_nodes() -> None:
    dev1, other1, db = node(1, DEV), node(2, OTHER), node(10, DEV, tags=("tag:db",))
    bystander = node(3, OTHER)
    nodes = [dev1, other1, db, bystander]
    text = """{"groups": {"group:dev": [%s]}, "tagOwners": {"tag:db": ["dev@"]},
      "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}]}"""
    e = engine(text % '"dev@"', nodes)
    assert e.set_policy(text % '"dev@"') == NO_CHANGE
    change = e.set_policy(text % '"dev@", "other@"')
    assert change.nodes == {2, 3, 10}  # other's devices are now sources, db's filter moved
    assert e.can_see(other1, db)
    assert e.update_node(node(2, OTHER)) == NO_CHANGE  # same node written again
    moved = dataclasses.replace(node(2, OTHER), ipv4=ipaddress.IPv4Address("100.64.0.99"))
    assert e.update_node(moved).nodes == {10}
    assert e.remove_node(2).nodes == {10}
    assert e.set_policy(None) == EVERYONE


def test_tag_ownership_and_route_approval() -> None:
    a, ci = node(1, ALICE), node(2, ALICE, tags=("tag:ci",))
    text = """{"groups": {"group:ops": ["alice@example.com"]},
      "tagOwners": {"tag:ci": ["group:ops"], "tag:build": ["tag:ci"], "tag:x": []},
      "autoApprovers": {"routes": {"10.0.0.0/8": ["alice@"], "0.0.0.0/0": ["alice@"]},
                        "exitNode": ["tag:ci"]}}"""
    e = engine(text, [a, ci])
    assert e.may_tag(a, "tag:ci") and not e.may_tag(a, "tag:x") and not e.may_tag(a, "tag:nope")
    assert e.may_tag(ci, "tag:build") and not e.may_tag(node(3, BOB), "tag:ci")
    net = ipaddress.ip_network
    assert e.may_approve_route(a, net("10.33.0.0/16"))
    assert not e.may_approve_route(a, net("0.0.0.0/0"))  # routes never approve an exit
    assert e.may_approve_route(ci, net("0.0.0.0/0"))
    assert not e.may_approve_route(node(3, BOB), net("10.0.0.0/8"))


def test_via_installs_only_on_routers_with_the_via_tag() -> None:
    src = node(1, ALICE)
    eu = node(2, BOB, tags=("tag:exit-eu",), routes=("0.0.0.0/0", "::/0", "10.5.0.0/16"),
              approved=("0.0.0.0/0", "::/0", "10.5.0.0/16"))  # fmt: skip
    us = node(3, BOB, tags=("tag:exit-us",), routes=("0.0.0.0/0", "::/0", "10.5.0.0/16"),
              approved=("0.0.0.0/0", "::/0", "10.5.0.0/16"))  # fmt: skip
    nodes = [src, eu, us]
    text = """{"tagOwners": {"tag:exit-eu": ["bob@"], "tag:exit-us": ["bob@"]},
      "grants": [{"src": ["alice@"], "dst": ["autogroup:internet", "10.5.1.0/24"], "ip": ["*"],
                  "via": ["tag:exit-eu"]}]}"""
    e = engine(text, nodes)
    ips = [d.IP for d in e.filter_for(eu)[0].DstPorts]
    assert len(ips) == 8 and ips[-1] == "10.5.1.0/24"
    assert e.filter_for(us) == []
    assert peers(e, src, nodes) == {2}


def test_node_attrs_become_cap_map_keys() -> None:
    a, b = node(1, ALICE), node(2, BOB, tags=("tag:x",))
    text = """{"tagOwners": {"tag:x": []},
      "nodeAttrs": [{"target": ["tag:x"], "attr": ["funnel", "magicdns-aaaa"]},
                    {"target": ["*"], "attr": ["mullvad"]}]}"""
    e = engine(text, [a, b])
    assert e.cap_map_for(b) == {"funnel": None, "magicdns-aaaa": None, "mullvad": None}
    assert e.cap_map_for(a) == {"mullvad": None}


def test_policy_tests_naming_no_device_are_skipped_with_a_warning() -> None:
    text = """{"tagOwners": {"tag:db": []},
      "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:db:5432"]}],
      "tests": [{"src": "dev@", "accept": ["tag:db:5432"]}]}"""
    e = engine(text, [])  # first start: nothing registered yet
    assert any("not run" in w for w in e.warnings)
    dev1, db = node(1, DEV), node(10, DEV, tags=("tag:db",))
    e.set_nodes([dev1, db])
    e.set_policy(text)
    assert not any("not run" in w for w in e.warnings)


def test_reachable_routes_follow_what_the_viewer_may_reach() -> None:
    net = ipaddress.ip_network
    viewer, only_ip = node(1, ALICE), node(2, BOB)
    served = ("10.0.0.0/8", "192.168.0.0/24", "0.0.0.0/0", "::/0")
    router = node(3, DEV, tags=("tag:r",), routes=served, approved=served)
    nodes = [viewer, only_ip, router]
    text = """{"tagOwners": {"tag:r": []}, "acls": [
      {"action": "accept", "src": ["alice@"], "dst": ["10.99.0.0/16:*", "autogroup:internet:*"]},
      {"action": "accept", "src": ["bob@"], "dst": ["tag:r:22"]}]}"""
    e = engine(text, nodes)
    assert e.reachable_routes(viewer, router) == (
        net("10.0.0.0/8"), net("0.0.0.0/0"), net("::/0")
    )  # fmt: skip
    assert e.reachable_routes(only_ip, router) == ()  # may reach the router's IP only
    assert e.can_see(only_ip, router)
    star = engine('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}', nodes)
    # ``*`` covers the internet too: an allow-all policy offers exit nodes, as Tailscale's does
    assert star.reachable_routes(viewer, router) == (
        net("10.0.0.0/8"), net("192.168.0.0/24"), net("0.0.0.0/0"), net("::/0")
    )  # fmt: skip


def test_engine_is_a_policy_manager() -> None:
    manager: PolicyManager = PolicyEngine()  # mypy checks the protocol
    assert manager.may_tag(node(1, ALICE), "tag:any")  # no policy: every tag allowed
