"""PeerEndpoint: path choice, trust, discovery schedule
(docs/protocol/derp-disco-stun.md §5.2-5.6)."""

from __future__ import annotations

import itertools

import pytest

from meshscale.disco import AddrPort, CallMeMaybe, Pong
from meshscale.key import DiscoPublic, NodePublic
from meshscale.magicsock.endpoint import (
    DISCO_PING_INTERVAL,
    HEARTBEAT_INTERVAL,
    MAX_CANDIDATES,
    MAX_SENT_PINGS,
    PING_TIMEOUT,
    SESSION_ACTIVE_TIMEOUT,
    TRUST_UDP_ADDR_DURATION,
    BestAddrChanged,
    PeerEndpoint,
    SendCallMeMaybe,
    SendPing,
    better_addr,
)

AP = AddrPort.parse
PUB1, PUB2 = AP("203.0.113.1:41641"), AP("198.51.100.7:1234")
PRIV = AP("192.168.1.5:41641")
V6 = AP("[2001:db8::1]:41641")


def counter_rand():
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


def make(endpoints=(PUB1, PUB2), home: int = 900) -> PeerEndpoint:
    return PeerEndpoint(
        NodePublic(bytes([1]) * 32),
        DiscoPublic(bytes([2]) * 32),
        counter_rand(),
        home_derp=home,
        endpoints=endpoints,
    )


def pings(ep: PeerEndpoint) -> list[SendPing]:
    return [a for a in ep.take_actions() if isinstance(a, SendPing)]


def pong_all(ep: PeerEndpoint, sent: list[SendPing], now: float, lat: dict | None = None):
    for p in sent:
        ep.handle_pong(Pong(p.tx_id, p.dst), p.dst, now + (lat or {}).get(p.dst, 0.02))


# better_addr: (a, a_latency, b, b_latency) -> a wins. Latencies in seconds.
BETTER = [
    (PUB1, 0.050, None, 0.0, True),  # anything beats nothing
    (None, 0.0, PUB1, 0.050, False),
    (PUB1, 0.010, PUB1, 0.050, False),  # same address never "better"
    (PUB1, 0.010, PUB2, 0.020, True),  # 50 % faster
    (PUB1, 0.0199, PUB2, 0.020, False),  # 0.5 % faster: hysteresis keeps the current
    (PUB1, 0.0195, PUB2, 0.020, True),  # 2 points beat 0 points
    (PRIV, 0.024, PUB2, 0.020, True),  # private +20 beats 17 points for 17 % faster
    (PRIV, 0.025, PUB2, 0.020, False),  # 20 vs 20: a tie keeps the current
    (V6, 0.020, PUB2, 0.020, True),  # IPv6 +10 on equal latency
    (AP("127.0.0.1:1"), 0.050, PRIV, 0.020, False),  # loopback +50 vs private 60+20
    (AP("127.0.0.1:1"), 0.025, PRIV, 0.020, True),  # loopback 50 vs 20+20
    (AP("169.254.1.1:1"), 0.020, PRIV, 0.020, True),  # link-local +30 vs private +20
    (AP("100.64.1.1:1"), 0.020, PUB2, 0.020, False),  # CGNAT is not "private"
]


@pytest.mark.parametrize(("a", "al", "b", "bl", "want"), BETTER)
def test_better_addr(a, al, b, bl, want) -> None:
    assert better_addr(a, al, b, bl) is want


def test_first_send_goes_via_derp_and_starts_discovery() -> None:
    ep = make()
    assert ep.addr_for_send(0.0) == (None, 900)
    ep.note_send(0.0)
    actions = ep.take_actions()
    assert {a.dst for a in actions if isinstance(a, SendPing)} == {PUB1, PUB2}
    assert SendCallMeMaybe(900) in actions


def test_no_home_derp_means_no_call_me_maybe() -> None:
    ep = make(home=0)
    ep.note_send(0.0)
    assert not [a for a in ep.take_actions() if isinstance(a, SendCallMeMaybe)]


def test_pong_promotes_and_trusts_then_trust_expires() -> None:
    ep = make()
    ep.note_send(0.0)
    sent = pings(ep)
    ep.handle_pong(Pong(sent[0].tx_id, sent[0].dst), sent[0].dst, 0.030)
    assert ep.best == sent[0].dst
    assert ep.best_latency == pytest.approx(0.030)
    assert ep.take_actions() == [BestAddrChanged(sent[0].dst, pytest.approx(0.030))]
    t = 0.030 + TRUST_UDP_ADDR_DURATION
    assert ep.addr_for_send(t) == (sent[0].dst, 0)  # trusted: direct only
    assert ep.addr_for_send(t + 0.001) == (sent[0].dst, 900)  # untrusted: both


def test_faster_path_wins_and_slower_pong_only_updates_its_latency() -> None:
    ep = make()
    ep.note_send(0.0)
    sent = {p.dst: p for p in pings(ep)}
    ep.handle_pong(Pong(sent[PUB1].tx_id, PUB1), PUB1, 0.050)
    ep.handle_pong(Pong(sent[PUB2].tx_id, PUB2), PUB2, 0.010)
    assert ep.best == PUB2
    assert ep.best_latency == pytest.approx(0.010)


def test_pong_via_derp_never_changes_path() -> None:
    ep = make()
    ep.note_send(0.0)
    p = pings(ep)[0]
    assert ep.handle_pong(Pong(p.tx_id, p.dst), None, 0.01)
    assert ep.best is None


def test_unknown_pong_is_ignored() -> None:
    ep = make()
    assert not ep.handle_pong(Pong(bytes(12), PUB1), PUB1, 1.0)
    assert ep.best is None


def test_discovery_pings_are_rate_limited_per_endpoint() -> None:
    ep = make()
    ep.note_send(0.0)
    assert len(pings(ep)) == 2
    ep.note_send(1.0)
    assert pings(ep) == []
    ep.note_send(DISCO_PING_INTERVAL)
    assert len(pings(ep)) == 2


def test_heartbeat_pings_best_every_3s_while_active_then_stops() -> None:
    ep = make()
    ep.note_send(0.0)
    pong_all(ep, pings(ep), 0.0)
    assert ep.get_timer() == pytest.approx(HEARTBEAT_INTERVAL)
    ep.handle_timer(HEARTBEAT_INTERVAL)
    hb = pings(ep)
    assert [p.dst for p in hb] == [ep.best]  # latency 20 ms > 5 ms but full ping is recent
    # No more sends: heartbeats stop once the session is idle for 45 s.
    t = HEARTBEAT_INTERVAL
    count = 0
    while (nxt := ep.get_timer()) is not None and count < 100:
        t = nxt
        ep.handle_timer(t)
        pong_all(ep, pings(ep), t)
        count += 1
    assert ep.heartbeat_at is None
    assert SESSION_ACTIVE_TIMEOUT <= t <= SESSION_ACTIVE_TIMEOUT + HEARTBEAT_INTERVAL + PING_TIMEOUT


def test_call_me_maybe_replaces_previous_set_and_pings_immediately() -> None:
    ep = make(endpoints=())
    ep.handle_call_me_maybe(CallMeMaybe((PUB1, AP("[fe80::1]:5"))), 0.0)
    assert [p.dst for p in pings(ep)] == [PUB1]  # IPv6 link-local ignored
    ep.handle_call_me_maybe(CallMeMaybe((PUB2,)), 1.0)
    # Re-pinged at once despite the 5 s limit; PUB1 (only from the old CMM) is gone.
    assert [p.dst for p in pings(ep)] == [PUB2]
    assert ep.candidates() == [PUB2]
    # A CallMeMaybe never triggers a CallMeMaybe back.
    assert not [a for a in ep.take_actions() if isinstance(a, SendCallMeMaybe)]


def test_ping_learned_endpoints_expire_after_45s() -> None:
    ep = make(endpoints=())
    assert not ep.note_ping_from(PUB1, b"a" * 12, 0.0)
    assert ep.note_ping_from(PUB1, b"a" * 12, 1.0)  # duplicate TxID from the same source
    assert ep.candidates() == [PUB1]
    ep.note_send(SESSION_ACTIVE_TIMEOUT + 1.1)
    assert ep.candidates() == []


def test_candidate_flood_is_bounded() -> None:
    ep = make(endpoints=())
    for port in range(3 * MAX_CANDIDATES):
        ep.note_ping_from(AP(f"203.0.113.9:{port + 1}"), port.to_bytes(12, "big"), 0.0)
    assert len(ep.candidates()) <= 2 * MAX_CANDIDATES


def test_netmap_endpoint_removed_from_netmap_is_forgotten() -> None:
    ep = make()
    ep.set_endpoints([PUB2], 0.0)
    assert ep.candidates() == [PUB2]


def test_ping_timeout_drops_untrusted_best() -> None:
    ep = make()
    ep.note_send(0.0)
    pong_all(ep, pings(ep), 0.0)
    best = ep.best
    assert best is not None
    # Keep sending, but the path died: no more pongs.
    t = 0.0
    for _ in range(20):
        t += 1.0
        ep.note_send(t)
        ep.handle_timer(t)
        ep.take_actions()
    assert ep.best is None
    assert ep.addr_for_send(t) == (None, 900)


def test_connectivity_change_resets_everything() -> None:
    ep = make()
    ep.note_send(0.0)
    pong_all(ep, pings(ep), 0.0)
    ep.take_actions()
    ep.note_connectivity_change()
    assert ep.best is None
    assert ep.take_actions() == [BestAddrChanged(None, None)]
    ep.note_send(0.5)  # history cleared: pings again at once
    assert len(pings(ep)) == 2


def test_bad_endpoint_clears_best() -> None:
    ep = make()
    ep.note_send(0.0)
    pong_all(ep, pings(ep), 0.0)
    assert ep.best is not None
    ep.note_bad_endpoint(ep.best)
    assert ep.best is None


def test_better_addr_with_zero_latencies() -> None:
    assert not better_addr(PUB1, 0.0, PUB2, 0.0)  # 0 vs 0 points: keep
    assert better_addr(V6, 0.0, PUB2, 0.0)  # only the IPv6 bonus decides


def test_pong_for_a_candidate_gone_meanwhile() -> None:
    ep = make()
    ep.note_send(0.0)
    sent = pings(ep)
    ep.set_endpoints([], 0.01)  # both netmap endpoints removed before the pongs
    for p in sent:
        assert ep.handle_pong(Pong(p.tx_id, p.dst), p.dst, 0.02)
    assert ep.best is None
    ep.note_bad_endpoint(PUB1)  # not a candidate any more: only clears best


def test_full_ping_schedule_by_latency() -> None:
    fast, slow = make(), make()
    for ep, lat in ((fast, 0.002), (slow, 0.040)):
        ep.note_send(0.0)
        sent = pings(ep)
        for p in sent:
            ep.handle_pong(Pong(p.tx_id, p.dst), p.dst, lat)
    # Both stay active; heartbeat every 3 s. A good-enough path (<= 5 ms) never
    # re-probes everyone, a slow one does so once a minute.
    full_fast = full_slow = 0
    t = 0.0
    while t < 130.0:
        t += HEARTBEAT_INTERVAL
        for ep in (fast, slow):
            ep.note_send(t)
            ep.handle_timer(t)
            sent = pings(ep)
            for p in sent:
                ep.handle_pong(Pong(p.tx_id, p.dst), p.dst, t + (0.002 if ep is fast else 0.04))
            if len(sent) > 1:
                if ep is fast:
                    full_fast += 1
                else:
                    full_slow += 1
    assert full_fast == 0
    assert full_slow == 2  # at about 60 s and 120 s


def test_sent_pings_are_bounded() -> None:
    many = [AP(f"203.0.113.{i // 200 + 1}:{i % 200 + 1000}") for i in range(MAX_CANDIDATES)]
    ep = make(endpoints=many)
    for k in range(6):  # each CallMeMaybe re-pings every candidate at once
        ep.handle_call_me_maybe(CallMeMaybe(()), float(k) * 0.1)
        ep.take_actions()
    assert len(ep._sent) == MAX_SENT_PINGS  # 600 pings were wanted


# Dual stack (issue #18 goal 3): a peer with a direct IPv4 and a direct IPv6 path. Upstream's
# betterAddr gives IPv6 +10 points, so it wins on near-equal latency (up to ~10 % slower) and
# loses when clearly slower -- whichever pong comes back first.
@pytest.mark.parametrize(
    ("v4_lat", "v6_lat", "winner"),
    [
        (0.020, 0.020, V6),  # equal: IPv6
        (0.020, 0.0218, V6),  # 9 % slower: still IPv6 (10 points vs 9)
        (0.020, 0.0225, PUB1),  # 12 % slower: IPv4 (10 points vs 12)
        (0.020, 0.040, PUB1),  # twice as slow: IPv4
        (0.040, 0.020, V6),  # IPv6 faster: IPv6
    ],
)
@pytest.mark.parametrize("v6_first", [True, False])
def test_dual_stack_picks_by_latency_with_v6_bonus(v4_lat, v6_lat, winner, v6_first) -> None:
    ep = make(endpoints=(PUB1, V6))
    ep.note_send(0.0)
    sent = {p.dst: p for p in pings(ep)}
    assert set(sent) == {PUB1, V6}
    order = [(V6, v6_lat), (PUB1, v4_lat)]
    for dst, lat in order if v6_first else order[::-1]:
        ep.handle_pong(Pong(sent[dst].tx_id, dst), dst, lat)
    assert ep.best == winner
    assert ep.addr_for_send(0.05) == (winner, 0)


def test_dual_stack_switches_family_when_the_other_gets_faster() -> None:
    """A slow (> 5 ms) best path is re-probed every minute; the now-faster family takes over."""
    ep = make(endpoints=(PUB1, V6))
    lat = {PUB1: 0.010, V6: 0.030}
    t = 0.0
    ep.note_send(t)
    pong_all(ep, pings(ep), t, lat)
    assert ep.best == PUB1
    lat = {PUB1: 0.050, V6: 0.030}  # the IPv4 path got slow (and the heartbeat shows it)
    switched_at = None
    while t < 75.0 and switched_at is None:
        t += HEARTBEAT_INTERVAL
        ep.note_send(t)
        ep.handle_timer(t)
        pong_all(ep, pings(ep), t, lat)
        if ep.best == V6:
            switched_at = t
    assert switched_at is not None and 57.0 <= switched_at <= 63.0, switched_at
    assert ep.best_latency == pytest.approx(0.030)
