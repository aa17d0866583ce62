"""PeerEndpoint when a peer roams or our own network changes (docs/protocol/derp-disco-stun.md
§5.7): the CallMeMaybe of a roamed peer ends trust in its old address, a dropped CallMeMaybe
endpoint goes, and our own network change starts discovery at once for active sessions."""

from __future__ import annotations

import itertools

from meshscale.disco import AddrPort, CallMeMaybe, Pong
from meshscale.key import DiscoPublic, NodePublic
from meshscale.magicsock.endpoint import (
    SESSION_ACTIVE_TIMEOUT,
    TRUST_UDP_ADDR_DURATION,
    PeerEndpoint,
    SendCallMeMaybe,
    SendPing,
)

AP = AddrPort.parse
OLD, NEW, LAN = AP("198.18.0.3:35596"), AP("198.18.0.3:35597"), AP("10.2.0.2:41641")


def make(endpoints: tuple[AddrPort, ...] = ()) -> PeerEndpoint:
    c = itertools.count(1)
    return PeerEndpoint(
        NodePublic(bytes([1]) * 32),
        DiscoPublic(bytes([2]) * 32),
        lambda n: next(c).to_bytes(n, "big"),
        home_derp=900,
        endpoints=endpoints,
    )


def pings(ep: PeerEndpoint) -> list[SendPing]:
    return [a for a in ep.take_actions() if isinstance(a, SendPing)]


def direct_via(ep: PeerEndpoint, addr: AddrPort, now: float) -> None:
    """Make ``addr`` the trusted best: ping it, answer."""
    for p in pings(ep):
        if p.dst == addr:
            ep.handle_pong(Pong(p.tx_id, p.dst), p.dst, now)
    assert ep.best == addr and ep.trusted(now)


def test_call_me_maybe_with_a_new_endpoint_ends_trust_and_the_answering_path_wins() -> None:
    ep = make(endpoints=(OLD,))
    ep.handle_call_me_maybe(CallMeMaybe((OLD, LAN)), 0.0)
    direct_via(ep, OLD, 0.01)
    # The peer roamed: its new mapping comes first, the old one is still listed (its
    # endpoint cache keeps it for 5 min), so nothing is deleted.
    ep.handle_call_me_maybe(CallMeMaybe((NEW, OLD, LAN)), 1.0)
    assert OLD in ep.candidates()
    assert not ep.trusted(1.0)
    assert ep.addr_for_send(1.0) == (OLD, 900)  # DERP too while the paths are re-checked
    sent = {p.dst: p for p in pings(ep)}
    assert set(sent) == {NEW, OLD, LAN}
    ep.handle_pong(Pong(sent[NEW].tx_id, NEW), NEW, 1.02)  # only the new mapping answers
    assert ep.best == NEW and ep.trusted(1.02)
    assert ep.addr_for_send(1.02) == (NEW, 0)


def test_the_same_call_me_maybe_again_keeps_trust() -> None:
    """The minute-by-minute upgrade CallMeMaybe of a slow path lists the same endpoints."""
    ep = make(endpoints=(OLD,))
    ep.handle_call_me_maybe(CallMeMaybe((OLD, LAN)), 0.0)
    direct_via(ep, OLD, 0.01)
    ep.handle_call_me_maybe(CallMeMaybe((LAN, OLD)), 1.0)
    assert ep.trusted(1.0)
    assert ep.addr_for_send(1.0) == (OLD, 0)


def test_a_best_dropped_from_the_call_me_maybe_set_goes_even_if_in_the_netmap() -> None:
    ep = make(endpoints=(OLD,))
    ep.handle_call_me_maybe(CallMeMaybe((OLD,)), 0.0)
    direct_via(ep, OLD, 0.01)
    ep.handle_call_me_maybe(CallMeMaybe((NEW,)), 1.0)
    assert ep.best is None
    assert OLD not in ep.candidates()
    ep.set_endpoints((OLD,), 2.0)  # the next netmap brings it back as a candidate
    assert OLD in ep.candidates() and ep.best is None


def test_network_change_rediscovers_an_active_session_at_once() -> None:
    ep = make(endpoints=(OLD,))
    ep.note_send(0.0)
    direct_via(ep, OLD, 0.01)
    ep.take_actions()
    ep.note_connectivity_change(1.0)
    actions = ep.take_actions()
    assert [a.dst for a in actions if isinstance(a, SendPing)] == [OLD]
    assert SendCallMeMaybe(900) in actions
    assert ep.best is None


def test_network_change_leaves_an_idle_session_alone() -> None:
    ep = make(endpoints=(OLD,))
    ep.note_send(0.0)
    direct_via(ep, OLD, 0.01)
    ep.take_actions()
    ep.note_connectivity_change(SESSION_ACTIVE_TIMEOUT + TRUST_UDP_ADDR_DURATION)
    assert not [a for a in ep.take_actions() if isinstance(a, SendPing | SendCallMeMaybe)]
    never_sent = make(endpoints=(OLD,))
    never_sent.note_connectivity_change(1.0)
    assert not pings(never_sent)
