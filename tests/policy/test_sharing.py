"""Node sharing in the policy engine (docs/protocol/policy.md §6, issue #16 part 2): the
sharer's policy governs, recipients' devices are guests selected by ``*``,
``autogroup:shared`` or address, and ``*`` on the recipient side no longer covers a
shared-in node."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.policy.tailnet import ALICE, BOB, node

from meshscale.control.models import User, UserID
from meshscale.filter import Filter
from meshscale.policy import PolicyEngine, parse_policy
from meshscale.policy.compile import WILDCARD_SRC
from meshscale.policy.sharing import confine_guests, cut_ranges
from meshscale.tailcfg import FilterRule, NetPortRange, PortRange

from ..packet.builders import ip_packet

CAROL = User(UserID(9), "carol")  # a user of another tailnet
S, T = node(1, ALICE), node(2, BOB, tags=("tag:db",))
R = node(20, CAROL)  # carol's device, a guest once S is shared to carol
R2 = node(21, CAROL)

OWNERS = '"tagOwners": {"tag:db": ["bob@"]}'


def text(acls: str, extra: str = "") -> str:
    return "{" + OWNERS + extra + ', "acls": [' + acls + "]}"


def engine(acls: str | None) -> PolicyEngine:
    e = PolicyEngine()
    e.set_users([ALICE, BOB])
    e.set_nodes([S, T])
    if acls is not None:
        e.set_policy(text(acls))
    return e


def acl(src: str, dst: str) -> str:
    return f'{{"action": "accept", "src": [{src}], "dst": [{dst}]}}'


def test_no_policy_lets_a_guest_reach_only_what_was_shared() -> None:
    e = PolicyEngine()
    e.set_users([ALICE, BOB])
    e.set_nodes([S, T])
    change = e.set_guests([(R, [S.id])])
    assert change.nodes == {R.id, S.id}
    assert e.guest_reach(R.id, S.id)
    assert not e.guest_reach(R.id, T.id)  # not shared
    assert not e.guest_reach(R2.id, S.id)  # not a guest
    assert e.guests_of(S.id) == {R.id}
    assert e.guests_of(T.id) == set()


def test_autogroup_shared_puts_the_guests_addresses_in_the_shared_nodes_filter() -> None:
    e = engine(acl('"autogroup:shared"', '"alice@:8080"'))
    assert e.filter_for(S) == []  # no guests: names no one
    e.set_guests([(R, [S.id]), (R2, [S.id])])
    (rule,) = e.filter_for(S)
    assert rule.SrcIPs == ["100.64.0.20", "100.64.0.21", "fd7a:115c:a1e0::14",
                           "fd7a:115c:a1e0::15"]  # fmt: skip
    assert [(d.IP, d.Ports.First) for d in rule.DstPorts] == [
        ("100.64.0.1", 8080), ("fd7a:115c:a1e0::1", 8080)
    ]  # fmt: skip
    assert e.guest_reach(R.id, S.id)
    e.set_guests([(R, [S.id])])
    assert "100.64.0.21" not in e.filter_for(S)[0].SrcIPs
    assert e.set_guests([]).nodes == {R.id, S.id}
    assert e.filter_for(S) == []
    assert not e.guest_reach(R.id, S.id)


def test_users_groups_and_tags_never_select_a_guest() -> None:
    # carol is not a user of this tailnet: "carol@" names no one here, and a guest's
    # tags (none) or user cannot match; only *, autogroup:shared or an address can.
    e = engine(acl('"alice@", "bob@", "carol@", "tag:db"', '"*:*"'))
    e.set_guests([(R, [S.id])])
    assert not e.guest_reach(R.id, S.id)
    e = engine(acl('"100.64.0.20"', '"alice@:22"'))
    e.set_guests([(R, [S.id]), (R2, [S.id])])
    assert e.guest_reach(R.id, S.id) and not e.guest_reach(R2.id, S.id)


def test_the_sharers_policy_decides_the_destination() -> None:
    e = engine(acl('"autogroup:shared"', '"tag:db:5432"'))
    e.set_guests([(R, [S.id, T.id])])
    assert e.guest_reach(R.id, T.id)
    assert not e.guest_reach(R.id, S.id)  # shared, but the policy grants nothing on it
    # a policy swap re-reports the guests and shared nodes
    change = e.set_policy(text(acl('"*"', '"alice@:*"')))
    assert change.everyone or {R.id, S.id, T.id} <= change.nodes
    assert e.guest_reach(R.id, S.id) and not e.guest_reach(R.id, T.id)


def test_the_parser_no_longer_warns_that_sharing_is_not_implemented() -> None:
    p = parse_policy(text(acl('"autogroup:shared"', '"*:*"')))
    assert not any("sharing" in w for w in p.warnings)


def test_star_on_the_recipient_side_no_longer_covers_a_shared_in_node() -> None:
    e = engine(acl('"*"', '"*:*"'))
    before = e.filter_for(T)[0].SrcIPs
    assert before[:3] == list(WILDCARD_SRC)
    shared_in = [ipaddress.ip_address("100.64.0.20"), ipaddress.ip_address("fd7a:115c:a1e0::14")]
    change = e.set_shared_in(shared_in)
    assert change.nodes == {S.id, T.id}
    src = e.filter_for(T)[0].SrcIPs
    assert src == ["100.64.0.0-100.64.0.19", "100.64.0.21-100.115.91.255",
                   "100.115.94.0-100.127.255.255", "fd7a:115c:a1e0::-fd7a:115c:a1e0::13",
                   "fd7a:115c:a1e0::15-fd7a:115c:a1e0:ffff:ffff:ffff:ffff:ffff"]  # fmt: skip
    assert e.set_shared_in(shared_in).nodes == frozenset()
    e.set_policy(text(acl('"*"', '"*:*"'), ', "hosts": {}'))
    assert e.filter_for(T)[0].SrcIPs == src  # kept across a recompile
    e.set_shared_in([])
    assert e.filter_for(T)[0].SrcIPs[:3] == list(WILDCARD_SRC)


def _covers(ranges: tuple[str, ...], x: ipaddress.IPv4Address) -> bool:
    for r in ranges:
        if "-" in r:
            lo, hi = (ipaddress.ip_address(p) for p in r.split("-"))
            if lo.version == 4 and lo <= x <= hi:
                return True
        elif ipaddress.ip_network(r).version == 4 and x in ipaddress.ip_network(r):
            return True
    return False


CGNAT = st.integers(int(ipaddress.ip_address("100.64.0.0")),
                    int(ipaddress.ip_address("100.127.255.255")))  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(CGNAT, max_size=6), st.lists(CGNAT, min_size=1, max_size=12))
def test_cut_ranges_removes_exactly_the_holes(holes: list[int], probes: list[int]) -> None:
    addrs = [ipaddress.IPv4Address(h) for h in holes]
    cut = cut_ranges(WILDCARD_SRC, addrs)
    for p in [*probes, *holes]:
        x = ipaddress.IPv4Address(p)
        assert _covers(cut, x) == (_covers(WILDCARD_SRC, x) and p not in holes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([20, 21, 22]), st.sets(st.sampled_from([1, 2]))),
                max_size=4),
       st.sampled_from(['"autogroup:shared"', '"*"', '"100.64.0.21"', '"alice@"']))  # fmt: skip
def test_guest_reach_is_share_and_a_selecting_rule(
    shares: list[tuple[int, set[int]]], src: str
) -> None:
    """Property: guest_reach(g, s) ⇔ s is shared to g and the rule's source selects g
    (the rule's destination, alice@ and tag:db, covers both S and T)."""
    e = engine(acl(src, '"alice@:*", "tag:db:*"'))
    guests = {g: set(s) for g, s in shares}  # the last entry of an id wins
    e.set_guests([(node(g, CAROL), sorted(s)) for g, s in guests.items()])
    for g in (20, 21, 22):
        for s in (S.id, T.id):
            selected = {'"autogroup:shared"': True, '"*"': True, '"alice@"': False,
                        '"100.64.0.21"': g == 21}[src]  # fmt: skip
            want = s in guests.get(g, set()) and selected
            assert e.guest_reach(g, s) == want
            assert (g in e.guests_of(s)) == want


# ---- a shared router does not route for its guests (ts#10642) ------------------------------

ROUTER = node(3, ALICE, routes=("10.1.0.0/16", "0.0.0.0/0", "::/0"),
              approved=("10.1.0.0/16", "0.0.0.0/0", "::/0"))  # fmt: skip
ROUTER_NETS = ["100.64.0.3/32", "fd7a:115c:a1e0::3/128", "10.1.0.0/16", "0.0.0.0/0", "::/0"]


def _admits(rules: list[FilterRule], src: str, dst: str, port: int = 8080) -> bool:
    proto = 6
    return Filter(rules, ROUTER_NETS).run_in(ip_packet(src, dst, proto, dport=port)).accepted


@pytest.mark.parametrize("rule", [
    acl('"*"', '"*:*"'),
    acl('"autogroup:shared"', '"*:*"'),
    acl('"autogroup:shared"', '"10.1.0.0/16:*", "alice@:*", "autogroup:internet:*"'),
    acl('"100.64.0.0/10"', '"*:*"'),
])  # fmt: skip
def test_a_shared_router_admits_its_guests_at_its_own_addresses_only(rule: str) -> None:
    """Whatever destination the sharer's rule names (``*``, the router's subnet, the
    internet), a guest's packet is admitted at the shared node's own addresses and nowhere
    behind it; the tailnet's own nodes keep what the rule gives them."""
    e = PolicyEngine()
    e.set_users([ALICE, BOB])
    e.set_nodes([ROUTER, T])
    e.set_policy(text(rule + ", " + acl('"bob@", "tag:db"', '"*:*"')))
    e.set_guests([(R, [ROUTER.id])])
    rules = e.filter_for(ROUTER)
    assert e.guest_reach(R.id, ROUTER.id)
    assert _admits(rules, "100.64.0.20", "100.64.0.3")
    assert _admits(rules, "fd7a:115c:a1e0::14", "fd7a:115c:a1e0::3") == ("/10" not in rule)
    for dst in ("10.1.2.3", "8.8.8.8"):
        assert not _admits(rules, "100.64.0.20", dst), (dst, rules)
    assert not _admits(rules, "fd7a:115c:a1e0::14", "2001:db8::1")
    assert _admits(rules, "100.64.0.2", "10.1.2.3") and _admits(rules, "100.64.0.2", "8.8.8.8")


ADDRS = ["100.64.0.3", "100.64.0.20", "100.64.0.21", "100.64.0.2", "10.1.2.3", "8.8.8.8"]
SRCS = st.lists(st.sampled_from(["*", "100.64.0.0/10", "100.64.0.20", "100.64.0.2",
                                 "100.64.0.10-100.64.0.30", "10.0.0.0/8"]),
                min_size=1, max_size=3, unique=True)  # fmt: skip
DSTS = st.lists(st.tuples(st.sampled_from(["*", "100.64.0.3", "10.1.0.0/16", "100.64.0.0/10",
                                           "0.0.0.0/0"]),
                          st.sampled_from([(0, 65535), (8080, 8080), (22, 22)])),
                min_size=1, max_size=3)  # fmt: skip
RULES = st.lists(st.tuples(SRCS, DSTS), max_size=3)


@settings(max_examples=150, deadline=None)
@given(RULES, st.sampled_from(ADDRS), st.sampled_from(ADDRS), st.sampled_from([22, 8080]))
def test_confine_guests_narrows_guests_only(
    raw: list[tuple[list[str], list[tuple[str, tuple[int, int]]]]], src: str, dst: str, port: int
) -> None:
    """Property: after confine_guests a guest (100.64.0.20) is admitted iff it was before and
    the destination is the shared node's own address; every other source is judged as before."""
    rules = [FilterRule(SrcIPs=s, DstPorts=[NetPortRange(IP=ip, Ports=PortRange(*p))
                                            for ip, p in d]) for s, d in raw]  # fmt: skip
    confined = confine_guests(rules, ["100.64.0.20"], ["100.64.0.3"])
    before, after = _admits(rules, src, dst, port), _admits(confined, src, dst, port)
    if src == "100.64.0.20":
        assert after == (before and dst == "100.64.0.3"), (rules, confined)
    else:
        assert after == before, (rules, confined)


def test_danger_all_on_the_recipient_side_leaves_out_a_shared_in_node_too() -> None:
    """autogroup:danger-all is every address, but a node shared into the tailnet may still
    not open flows to it (one way; besides IsJailed)."""
    e = engine(acl('"autogroup:danger-all"', '"*:*"'))
    assert e.filter_for(T)[0].SrcIPs == ["*"]
    e.set_shared_in([ipaddress.ip_address("100.64.0.20")])
    rules = e.filter_for(T)
    nets = ["100.64.0.2/32"]
    f = Filter(rules, nets)
    assert not f.run_in(ip_packet("100.64.0.20", "100.64.0.2", 6, dport=22)).accepted
    for src in ("100.64.0.19", "100.64.0.21", "8.8.8.8", "fd7a:115c:a1e0::14"):
        dst = "100.64.0.2" if "." in src else "fd7a:115c:a1e0::2"
        f = Filter(rules, [*nets, "fd7a:115c:a1e0::2/128"])
        assert f.run_in(ip_packet(src, dst, 6, dport=22)).accepted, src
    e.set_shared_in([])
    assert e.filter_for(T)[0].SrcIPs == ["*"]
