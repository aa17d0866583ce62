"""PeerEndpoint under random sequences of inputs (hypothesis.stateful), checked by invariants."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshscale.disco import AddrPort, CallMeMaybe, Pong
from meshscale.key import DiscoPublic, NodePublic
from meshscale.magicsock.endpoint import (
    MAX_SENT_PINGS,
    PING_TIMEOUT,
    TRUST_UDP_ADDR_DURATION,
    BestAddrChanged,
    PeerEndpoint,
    SendCallMeMaybe,
    SendPing,
    SendPingDERP,
    UserPingDone,
)

POOL = [
    AddrPort.parse(a)
    for a in ("203.0.113.1:1", "198.51.100.2:2", "192.168.0.3:3", "[2001:db8::4]:4", "10.0.0.5:5")
]
addrs = st.sampled_from(POOL)


class EndpointMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        c = itertools.count(1)
        self.ep = PeerEndpoint(
            NodePublic(bytes([1]) * 32),
            DiscoPublic(bytes([2]) * 32),
            lambda n: next(c).to_bytes(n, "big"),
            home_derp=900,
            endpoints=POOL[:2],
        )
        self.now = 0.0
        self.outstanding: list[SendPing | SendPingDERP] = []
        self.best_events: list[AddrPort | None] = []
        self.user_started: dict[bytes, float] = {}
        self.user_done: list[bytes] = []
        self.handled_until = 0.0

    def _collect(self) -> None:
        for a in self.ep.take_actions():
            if isinstance(a, SendPing):
                # (A heartbeat may ping a best address that the same call then prunes.)
                self.outstanding.append(a)
            elif isinstance(a, SendPingDERP):
                assert a.region == 900
                self.outstanding.append(a)
            elif isinstance(a, UserPingDone):
                assert a.ping_id not in self.user_done, "one result per user ping"
                self.user_done.append(a.ping_id)
            elif isinstance(a, BestAddrChanged):
                self.best_events.append(a.addr)
            else:
                assert a == SendCallMeMaybe(900)

    @rule(dt=st.floats(0.0, 12.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        t = self.ep.get_timer()
        steps = 0
        while t is not None and t <= self.now:
            self.ep.handle_timer(t)
            nxt = self.ep.get_timer()
            # A handled timer always moves on: a driver can never spin on it.
            assert nxt is None or nxt > t
            t = nxt
            steps += 1
            assert steps < 1000
        self.handled_until = self.now
        self._collect()

    @rule()
    def send(self) -> None:
        udp, region = self.ep.addr_for_send(self.now)
        assert udp is not None or region == 900
        if self.ep.trusted(self.now):
            assert region == 0
        self.ep.note_send(self.now)
        self._collect()

    @precondition(lambda self: self.outstanding)
    @rule(i=st.integers(0, 100), latency=st.floats(0.0005, 0.3), via_derp=st.booleans())
    def pong(self, i: int, latency: float, via_derp: bool) -> None:
        p = self.outstanding.pop(i % len(self.outstanding))
        self.now += latency
        if isinstance(p, SendPingDERP):
            self.ep.handle_pong(Pong(p.tx_id, POOL[0]), None, self.now, 900)
            self._collect()
            return
        known = self.ep.handle_pong(Pong(p.tx_id, p.dst), None if via_derp else p.dst, self.now)
        if known and not via_derp and p.dst in self.ep.candidates() and self.ep.best == p.dst:
            assert self.ep.trust_until == self.now + TRUST_UDP_ADDR_DURATION
        self._collect()

    @rule(src=addrs, tx=st.binary(min_size=12, max_size=12))
    def ping_from(self, src: AddrPort, tx: bytes) -> None:
        self.ep.note_ping_from(src, tx, self.now)
        assert src in self.ep.candidates()

    @rule(eps=st.lists(addrs, max_size=3))
    def call_me_maybe(self, eps: list[AddrPort]) -> None:
        self.ep.handle_call_me_maybe(CallMeMaybe(tuple(eps)), self.now)
        self._collect()

    @rule(eps=st.lists(addrs, max_size=3))
    def netmap(self, eps: list[AddrPort]) -> None:
        self.ep.set_endpoints(eps, self.now)
        self._collect()

    @rule()
    def user_ping(self) -> None:
        self.user_started[self.ep.start_user_ping(self.now)] = self.now
        self._collect()

    @invariant()
    def user_pings_resolve_within_timeout(self) -> None:
        # advance() handles every timer up to its end, so older pings have a result.
        for ping_id, at in self.user_started.items():
            if at + PING_TIMEOUT <= self.handled_until:
                assert ping_id in self.user_done

    @rule()
    def link_change(self) -> None:
        self.ep.note_connectivity_change()
        self._collect()
        assert self.ep.best is None

    @invariant()
    def best_is_a_candidate(self) -> None:
        assert self.ep.best is None or self.ep.best in self.ep.candidates()
        assert (self.ep.best is None) == (self.ep.best_latency is None)

    @invariant()
    def events_track_best(self) -> None:
        if self.best_events:
            assert self.best_events[-1] == self.ep.best

    @invariant()
    def bounded(self) -> None:
        assert len(self.ep._sent) <= MAX_SENT_PINGS
        assert len(self.ep.candidates()) <= len(POOL)


EndpointMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestEndpointMachine = pytest.mark.slow(EndpointMachine.TestCase)
