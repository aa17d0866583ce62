"""Two magicsock cores on SimNet across the NAT matrix (tailscale tstest/integration/nat grid).

Direct when at least one side's mapping can be learnt and the filters can be
opened by simultaneous pings: public<->anything with UDP, easy<->easy. Relay-only
when both mappings depend on the destination (hard<->hard), when an
address-and-port-dependent filter meets a symmetric NAT (easy<->hard), or when
UDP is blocked. Every case must deliver every WireGuard datagram.
"""

from __future__ import annotations

import itertools

import pytest

from meshscale.testing import SimControl, SimNet, SimNode, add_node

KINDS = ["public", "easy", "hard", "blocked"]
DIRECT = {
    ("public", "public"),
    ("public", "easy"),
    ("public", "hard"),
    ("easy", "easy"),
}
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))
FLOW_INTERVAL = 0.5  # seconds


def make_pair(kind_a: str, kind_b: str, seed: int = 1) -> tuple[SimNet, SimNode, SimNode]:
    net = SimNet(seed=seed)
    relay = net.add_relay(900, "192.0.2.1", latency=0.010)
    control = SimControl()
    a = add_node(net, kind_a, 1, [relay], control)
    b = add_node(net, kind_b, 2, [relay], control)
    a.start()
    b.start()
    control.publish(a)
    net.run(4.0)  # netcheck and home DERP settle
    return net, a, b


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=["-".join(p) for p in PAIRS])
def test_pair(kind_a: str, kind_b: str) -> None:
    net, a, b = make_pair(kind_a, kind_b)
    assert a.conn.home_derp == b.conn.home_derp == 900
    a.start_flow(b.node_key, FLOW_INTERVAL)
    b.start_flow(a.node_key, FLOW_INTERVAL)
    want_direct = (kind_a, kind_b) in DIRECT
    start = net.clock.now()
    both_direct = net.run_until(
        lambda: a.direct_to(b.node_key) and b.direct_to(a.node_key), 30.0, max_steps=50_000
    )
    assert both_direct is want_direct
    if want_direct:
        # Upgrade happens within a few round trips of the first packet.
        assert net.clock.now() - start < 2.0
    net.run(20.0, max_steps=50_000)
    if want_direct:
        assert a.direct_to(b.node_key)
        assert b.direct_to(a.node_key)
        late = [r for r in a.received_from(b.node_key) if r.at > start + 3.0]
        assert late
        assert all(r.via_udp for r in late), "a trusted direct path must carry all data"
    else:
        assert not any(r.via_udp for r in a.received_from(b.node_key))
    a.stop_flows()
    b.stop_flows()
    net.run(2.0)
    # Every datagram arrives (duplicates from "direct and DERP" sends collapse here,
    # as WireGuard's replay window would collapse them).
    assert b.payloads_from(a) == b.expected_from(a)
    assert a.payloads_from(b) == a.expected_from(b)
    assert len(b.expected_from(a)) >= 30


@pytest.mark.parametrize("kind", ["easy", "hard", "blocked"])
def test_stun_report_matches_nat(kind: str) -> None:
    _, a, _ = make_pair(kind, "public")
    report = a.conn.netcheck.last_report
    assert report is not None
    if kind == "blocked":
        assert not report.udp
        assert report.global_v4 is None
        # Without STUN the home region is still chosen (pseudo-randomly among one).
        assert a.conn.home_derp == 900
    else:
        assert report.udp
        assert report.global_v4 is not None
        assert str(report.global_v4.ip) == "198.18.0.2"


def test_call_me_maybe_alone_opens_easy_easy() -> None:
    # Control hides a's endpoints: b can only learn them from a's CallMeMaybe via DERP.
    net = SimNet(seed=3)
    relay = net.add_relay(900, "192.0.2.1", latency=0.010)
    control = SimControl()
    a = add_node(net, "easy", 1, [relay], control)
    b = add_node(net, "easy", 2, [relay], control)
    control.hidden.add(a.node_key)
    a.start()
    b.start()
    control.publish(a)
    net.run(4.0)
    a.start_flow(b.node_key)
    b.start_flow(a.node_key)
    assert net.run_until(lambda: a.direct_to(b.node_key) and b.direct_to(a.node_key), 15.0)
    assert b.conn.statistics().counters.get("disco_rx_derp_CallMeMaybe", 0) >= 1


def test_no_endpoints_anywhere_stays_on_derp() -> None:
    # As upstream: with no candidates there are no pings, hence no CallMeMaybe.
    net = SimNet(seed=3)
    relay = net.add_relay(900, "192.0.2.1", latency=0.010)
    control = SimControl(share_endpoints=False)
    a = add_node(net, "easy", 1, [relay], control)
    b = add_node(net, "easy", 2, [relay], control)
    a.start()
    b.start()
    control.publish(a)
    a.start_flow(b.node_key)
    b.start_flow(a.node_key)
    net.run(15.0)
    assert not a.direct_to(b.node_key)
    assert "disco_tx_derp_CallMeMaybe" not in a.conn.statistics().counters
    assert len(b.payloads_from(a)) >= 25


def test_one_way_traffic_still_goes_direct() -> None:
    # Only a sends; b learns a's address from a's pings and b's pongs punch b's NAT.
    net, a, b = make_pair("easy", "easy", seed=5)
    a.start_flow(b.node_key)
    assert net.run_until(lambda: a.direct_to(b.node_key), 15.0)
    net.run(5.0)
    assert all(r.via_udp for r in b.received_from(a.node_key) if r.at > net.clock.now() - 2.0)


def test_idle_session_stops_heartbeats() -> None:
    net, a, b = make_pair("public", "public")
    a.start_flow(b.node_key)
    b.start_flow(a.node_key)
    assert net.run_until(lambda: a.direct_to(b.node_key), 10.0)
    a.stop_flows()
    b.stop_flows()
    net.run(60.0)  # past the 45 s session timeout
    pings = a.conn.statistics().counters["disco_tx_udp_Ping"]
    net.run(30.0)
    assert a.conn.statistics().counters["disco_tx_udp_Ping"] == pings
    assert not a.direct_to(b.node_key)  # trust lapsed without heartbeats


# Looser filters open more pairs: a symmetric NAT's fresh mapping toward the peer gets
# through an address-dependent (or no) filter, because that side already sent to the
# symmetric NAT's IP; the pong then teaches both sides the working pair.
WIDER = [
    ("restricted", "hard", True),
    ("cone", "hard", True),
    ("restricted", "restricted", True),
    ("cone", "easy", True),
    ("cone", "blocked", False),
]


@pytest.mark.parametrize(
    ("kind_a", "kind_b", "direct"), WIDER, ids=[f"{a}-{b}" for a, b, _ in WIDER]
)
def test_wider_nat_kinds(kind_a: str, kind_b: str, direct: bool) -> None:
    net, a, b = make_pair(kind_a, kind_b)
    a.start_flow(b.node_key, FLOW_INTERVAL)
    b.start_flow(a.node_key, FLOW_INTERVAL)
    reached = net.run_until(
        lambda: a.direct_to(b.node_key) and b.direct_to(a.node_key), 30.0, max_steps=50_000
    )
    assert reached is direct
    a.stop_flows()
    b.stop_flows()
    net.run(2.0)
    assert b.payloads_from(a) == b.expected_from(a)
