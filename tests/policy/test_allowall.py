"""AllowAll: the policy of a server without one, and the PolicyChange algebra."""

from __future__ import annotations

import ipaddress

from meshscale.control.models import Node, NodeID, UserID
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import EVERYONE, NO_CHANGE, AllowAll, PolicyChange, PolicyManager
from meshscale.tailcfg import to_json


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
