"""AllowAll: the policy of a server without one, and the PolicyChange algebra."""

from __future__ import annotations

import ipaddress

from meshscale.control.models import Node, NodeID, UserID
from meshscale.filter import Filter
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import EVERYONE, NO_CHANGE, AllowAll, PolicyChange, PolicyManager
from meshscale.tailcfg import FilterRule, to_json

from ..packet.builders import ip_packet


def node(i: int) -> Node:
    mkey, nkey = MachinePublic(bytes([i]) * 32), NodePublic(bytes([i + 100]) * 32)
    return Node(NodeID(i), mkey, nkey, UserID(1), f"h{i}", f"h{i}",
                ipv4=ipaddress.IPv4Address(f"100.64.0.{i}"))  # fmt: skip


def test_packet_filter_is_allow_all() -> None:
    rules = AllowAll().filter_for(node(1))
    assert rules[0].SrcIPs == ["*"]
    assert [to_json(r) for r in rules] == [
        {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
    ]


def test_each_filter_is_a_fresh_list() -> None:
    policy = AllowAll()
    first = policy.filter_for(node(1))
    first[0].SrcIPs.append("10.0.0.0/8")
    assert policy.filter_for(node(1))[0].SrcIPs == ["*"]


def test_allow_all_answers_yes_and_only_a_policy_text_changes_anything() -> None:
    policy: PolicyManager = AllowAll()
    a, b = node(1), node(2)
    assert policy.can_see(a, b) and policy.can_see(b, a)
    assert policy.may_tag(a, "tag:server")
    assert policy.may_approve_route(a, ipaddress.ip_network("10.0.0.0/8"))
    assert policy.set_nodes([a, b]) == NO_CHANGE
    assert policy.update_node(a) == NO_CHANGE
    assert policy.remove_node(2) == NO_CHANGE
    assert policy.set_users([]) == NO_CHANGE
    assert policy.set_policy('{"acls": []}') == EVERYONE
    assert policy.set_policy(None) == EVERYONE


def test_policy_change_union() -> None:
    one, two = PolicyChange(nodes=frozenset({1})), PolicyChange(nodes=frozenset({2}))
    assert not NO_CHANGE and one and EVERYONE
    assert (one | two).nodes == {1, 2}
    assert (one | EVERYONE) == EVERYONE == (EVERYONE | one)
    assert (one | NO_CHANGE) is one
    assert (NO_CHANGE | one) == one


# ---- node sharing (docs/protocol/policy.md §6) ---------------------------------------------


def _syn(rules: list[FilterRule], src: str, dst: str, local: list[str]) -> bool:
    """Whether our packet filter, given ``rules``, admits a TCP SYN src -> dst:8080."""
    return Filter(rules, local).run_in(ip_packet(src, dst, 6, dport=8080)).accepted


def test_a_shared_in_node_cannot_open_flows_to_the_recipient_without_a_policy() -> None:
    """TS-2024-005 on control's side: with no policy, the recipient's ``*`` still leaves out
    the shared-in node's addresses (besides ``IsJailed``), and only them."""
    policy = AllowAll()
    r, s, other = node(1), node(5), node(2)  # r: recipient's device; s: shared into its tailnet
    me = ["100.64.0.1/32"]
    assert _syn(policy.filter_for(r), "100.64.0.5", "100.64.0.1", me)  # before: allowed
    policy.set_shared_in(s.addresses())
    rules = policy.filter_for(r)
    assert not _syn(rules, "100.64.0.5", "100.64.0.1", me)
    for src in ("100.64.0.2", "10.1.2.3", "100.64.0.4", "100.64.0.6"):
        assert _syn(rules, src, "100.64.0.1", me), src
    assert policy.filter_for(other) == rules  # same rules for every node of the tailnet
    policy.set_shared_in([])
    assert policy.filter_for(r)[0].SrcIPs == ["*"]


def test_a_shared_router_admits_guests_at_its_own_addresses_only() -> None:
    """ts#10642: a shared subnet router (or exit node) does not route for the recipient's
    devices, whatever their packets say; its own tailnet still gets everything."""
    policy = AllowAll()
    s, guest, mate = node(5), node(9), node(2)
    local = ["100.64.0.5/32", "10.1.0.0/16", "0.0.0.0/0"]  # its address, a subnet, exit
    assert _syn(policy.filter_for(s), "100.64.0.9", "10.1.2.3", local)  # before: routed
    change = policy.set_guests([(guest, [5])])
    assert change.nodes == {5}
    rules = policy.filter_for(s)
    assert _syn(rules, "100.64.0.9", "100.64.0.5", local)
    assert not _syn(rules, "100.64.0.9", "10.1.2.3", local)
    assert not _syn(rules, "100.64.0.9", "8.8.8.8", local)
    assert _syn(rules, "100.64.0.2", "10.1.2.3", local)
    assert _syn(rules, "100.64.0.2", "8.8.8.8", local)
    assert policy.filter_for(mate)[0].SrcIPs == ["*"]  # not shared: untouched
    assert policy.set_guests([(guest, [5])]) == NO_CHANGE
    assert policy.set_guests([]).nodes == {5}
    assert policy.filter_for(s)[0].SrcIPs == ["*"]
