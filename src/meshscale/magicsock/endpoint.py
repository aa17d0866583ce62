"""Per-peer path state: candidate endpoints, disco ping schedule, best address, trust.

Theory of operation (docs/protocol/derp-disco-stun.md §5.2-5.6, tailscale magicsock/endpoint.go)::

    candidates  <- netmap Endpoints | CallMeMaybe list (replaced each time)
                 | sources of pings we received (expire 45 s after the last one)

    send(now):   trusted best   -> best only
                 untrusted best -> best + DERP, and discovery
                 no best        -> DERP only, and discovery
    discovery:   ping every candidate not pinged in the last 5 s; if any was
                 pinged and the peer has a home DERP, ask the Conn for a
                 CallMeMaybe over DERP
    pong(tx):    latency = now - sent; the pinged address competes with best
                 (better_addr, or best untrusted); if it is best: trust 6.5 s
    heartbeat:   every 3 s while we sent to the peer within 45 s: ping best,
                 full discovery if no best / untrusted / slow and 1 min old
    ping timeout (5 s): forgotten; a best whose trust expired is dropped

Performs no I/O. Driven by the Conn: its send path, disco messages for this peer
and the timer. Outputs are Actions the Conn drains with ``take_actions``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshscale.disco import AddrPort, CallMeMaybe, Pong
from meshscale.key import DiscoPublic, NodePublic

HEARTBEAT_INTERVAL = 3.0  # seconds
TRUST_UDP_ADDR_DURATION = 6.5  # seconds
SESSION_ACTIVE_TIMEOUT = 45.0  # seconds
DISCO_PING_INTERVAL = 5.0  # seconds between discovery pings to one endpoint
PING_TIMEOUT = 5.0  # seconds
UPGRADE_UDP_DIRECT_INTERVAL = 60.0  # seconds
GOOD_ENOUGH_LATENCY = 0.005  # seconds

# A peer can add candidates by pinging us from many source ports; past this many
# the expired ones are pruned (docs/protocol/derp-disco-stun.md §5.2), and past twice this new ones
# are refused (stops memory growth from a peer spraying pings from random ports).
MAX_CANDIDATES = 100
# Outstanding pings per peer; each full discovery adds one per candidate.
MAX_SENT_PINGS = 4 * MAX_CANDIDATES


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a disco Ping with this TxID to ``dst`` over UDP."""

    dst: AddrPort
    tx_id: bytes


@dataclass(frozen=True, slots=True)
class SendCallMeMaybe:
    """Send our endpoints to the peer via DERP ``region`` (after a re-STUN if stale)."""

    region: int


@dataclass(frozen=True, slots=True)
class SendPingDERP:
    """Send a disco Ping with this TxID via DERP ``region`` (user pings only)."""

    region: int
    tx_id: bytes


@dataclass(frozen=True, slots=True)
class UserPingDone:
    """A user ping got its first Pong (``latency`` set) or timed out (None)."""

    ping_id: bytes
    latency: float | None
    addr: AddrPort | None  # the pinged UDP address, None if answered via DERP
    region: int  # DERP region of a DERP answer, else 0


@dataclass(frozen=True, slots=True)
class BestAddrChanged:
    """The direct path changed; None means DERP only."""

    addr: AddrPort | None
    latency: float | None


Action = SendPing | SendPingDERP | SendCallMeMaybe | BestAddrChanged | UserPingDone


@dataclass(slots=True)
class _Candidate:
    in_netmap: bool = False
    call_me_maybe_at: float | None = None
    last_got_ping: float | None = None  # set only for endpoints learnt from pings
    last_got_ping_tx: bytes = b""
    last_ping: float | None = None
    latency: float | None = None  # of the latest pong

    def expired(self, now: float) -> bool:
        if self.call_me_maybe_at is not None or self.in_netmap:
            return False
        if self.last_got_ping is None:
            return True
        return now - self.last_got_ping > SESSION_ACTIVE_TIMEOUT

    def clear(self) -> None:
        self.last_ping = None
        self.latency = None


@dataclass(slots=True)
class _SentPing:
    to: AddrPort | None  # None: sent via DERP
    at: float
    heartbeat: bool
    user: bytes = b""  # the user ping this belongs to (its first TxID), or b""


def _points(addr: AddrPort) -> int:
    ip = addr.ip
    pts = 0
    if ip.is_loopback:
        pts = 50
    elif ip.is_link_local:
        pts = 30
    elif _is_private(addr):
        pts = 20
    if ip.version == 6:
        pts += 10
    return pts


def _is_private(addr: AddrPort) -> bool:
    # Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only (not CGNAT, not docs).
    ip = addr.ip
    if ip.version == 4:
        b = ip.packed
        return b[0] == 10 or (b[0] == 172 and b[1] & 0xF0 == 16) or (b[0] == 192 and b[1] == 168)
    return ip.packed[0] & 0xFE == 0xFC


def better_addr(a: AddrPort | None, a_latency: float, b: AddrPort | None, b_latency: float) -> bool:
    """Whether path ``a`` beats the current path ``b`` (docs/protocol/derp-disco-stun.md §5.5,
    upstream betterAddr)."""
    if a == b:
        return False
    if b is None:
        return True
    if a is None:
        return False
    a_pts = b_pts = 0
    # Integer percent faster, computed on microseconds as Go does on Durations.
    a_us, b_us = round(a_latency * 1e6), round(b_latency * 1e6)
    if a_us > b_us and a_us > 0:
        b_pts = 100 - (b_us * 100) // a_us
    elif b_us > 0:
        a_pts = 100 - (a_us * 100) // b_us
    a_pts += _points(a)
    b_pts += _points(b)
    if a_pts <= 1 and b_pts == 0:
        return False  # hysteresis: under ~1% faster is not worth a switch
    return a_pts > b_pts


class PeerEndpoint:
    """Path state for one peer (tailscale magicsock.endpoint). Performs no I/O.

    :param rand: ``rand(n)`` returns n random bytes (ping TxIDs).
    """

    def __init__(
        self,
        node_key: NodePublic,
        disco_key: DiscoPublic,
        rand: Callable[[int], bytes],
        *,
        home_derp: int = 0,
        endpoints: Iterable[AddrPort] = (),
    ) -> None:
        self.node_key = node_key
        self.disco_key = disco_key
        self.home_derp = home_derp
        self._rand = rand
        self._eps: dict[AddrPort, _Candidate] = {}
        self._sent: dict[bytes, _SentPing] = {}
        self._user_pings: set[bytes] = set()  # unanswered user pings
        self._actions: list[Action] = []
        self.best: AddrPort | None = None
        self.best_latency: float | None = None
        self.trust_until = float("-inf")
        self.last_send: float | None = None
        self.last_full_ping: float | None = None
        self.heartbeat_at: float | None = None
        self.set_endpoints(endpoints, float("-inf"))

    # ---- configuration ----

    def set_endpoints(self, endpoints: Iterable[AddrPort], now: float) -> None:
        """Replace the netmap endpoints (control's view of the peer)."""
        for c in self._eps.values():
            c.in_netmap = False
        for ep in endpoints:
            self._eps.setdefault(ep, _Candidate()).in_netmap = True
        self._prune(now)

    def netmap_endpoints(self) -> list[AddrPort]:
        return [ep for ep, c in self._eps.items() if c.in_netmap]

    def candidates(self) -> list[AddrPort]:
        return list(self._eps)

    def trusted(self, now: float) -> bool:
        return self.best is not None and now <= self.trust_until

    # ---- the send path ----

    def addr_for_send(self, now: float) -> tuple[AddrPort | None, int]:
        """(direct address or None, DERP region or 0) for the next data packet
        (docs/protocol/derp-disco-stun.md §5.6)."""
        if self.best is not None and now <= self.trust_until:
            return self.best, 0
        return self.best, self.home_derp

    def note_send(self, now: float) -> None:
        """A data packet is being sent: start discovery if the path is not trusted."""
        if not self.trusted(now):
            self._send_pings(now, call_me_maybe=True)
        self.last_send = now
        if self.heartbeat_at is None:
            self.heartbeat_at = now + HEARTBEAT_INTERVAL

    def start_user_ping(self, now: float) -> bytes:
        """A ``tailscale ping``: returns its ID; the answer comes as a UserPingDone action.

        As upstream's discoPing: via DERP unless the direct path is trusted, and to
        the trusted best address only, or else to every candidate at once (no rate
        limit). It counts as traffic, so heartbeats start.
        """
        ping_id = b""
        trusted = self.trusted(now)
        targets: list[AddrPort | None] = [] if trusted or not self.home_derp else [None]
        targets += [self.best] if trusted else list(self._eps)
        for to in targets:
            tx = self._rand(12)
            ping_id = ping_id or tx
            self._sent[tx] = _SentPing(to, now, False, ping_id)
            if to is None:
                self._actions.append(SendPingDERP(self.home_derp, tx))
            else:
                self._eps[to].last_ping = now
                self._actions.append(SendPing(to, tx))
        if not ping_id:  # no path at all: report the failure at once
            ping_id = self._rand(12)
            self._actions.append(UserPingDone(ping_id, None, None, 0))
            return ping_id
        self._user_pings.add(ping_id)
        if self.heartbeat_at is None:
            self.heartbeat_at = now + HEARTBEAT_INTERVAL
        self.last_send = now
        return ping_id

    # ---- disco input ----

    def note_ping_from(self, src: AddrPort, tx_id: bytes, now: float) -> bool:
        """A disco Ping arrived over UDP from ``src``. Returns True if it is a duplicate."""
        c = self._eps.get(src)
        if c is not None:
            dup = tx_id == c.last_got_ping_tx
            c.last_got_ping_tx = tx_id
            if c.last_got_ping is not None:
                c.last_got_ping = now
            return dup
        if len(self._eps) >= MAX_CANDIDATES:
            self._prune(now)
            if len(self._eps) >= 2 * MAX_CANDIDATES:
                return False
        self._eps[src] = _Candidate(last_got_ping=now, last_got_ping_tx=tx_id)
        return False

    def handle_pong(self, pong: Pong, src: AddrPort | None, now: float, region: int = 0) -> bool:
        """A Pong arrived (``src`` None if via DERP ``region``). True if it answered our ping."""
        sp = self._sent.pop(pong.tx_id, None)
        if sp is None:
            return False
        latency = max(now - sp.at, 0.0)
        if sp.user and sp.user in self._user_pings:
            # The first answer to a user ping wins; its other probes are forgotten.
            self._user_pings.discard(sp.user)
            self._actions.append(
                UserPingDone(sp.user, latency, sp.to, region if src is None else 0)
            )
        if src is None or sp.to is None:
            # pongs via DERP never change the path (docs/protocol/derp-disco-stun.md §5.5)
            return True
        c = self._eps.get(sp.to)
        if c is None:
            return True  # no longer a candidate we care about
        c.latency = latency
        if better_addr(sp.to, latency, self.best, self.best_latency or 0.0) or (
            now > self.trust_until
        ):
            self._set_best(sp.to, latency)
        if self.best == sp.to:
            self.best_latency = latency
            self.trust_until = now + TRUST_UDP_ADDR_DURATION
        return True

    def note_probe_success(self, addr: AddrPort, now: float) -> None:
        """Hard-NAT probing found ``addr`` open (magicsock.hardnat): keep it as a candidate
        (like a ping source: it expires 45 s after the peer's last ping from it) and ping it
        now, outside the 5 s discovery interval."""
        c = self._eps.get(addr)
        if c is None:
            if len(self._eps) >= 2 * MAX_CANDIDATES:
                return
            c = self._eps[addr] = _Candidate(last_got_ping=now)
        elif c.last_got_ping is not None:
            c.last_got_ping = now
        self._start_ping(addr, now, heartbeat=False)
        self.last_send = now if self.last_send is None else self.last_send
        if self.heartbeat_at is None:
            self.heartbeat_at = now + HEARTBEAT_INTERVAL

    def handle_call_me_maybe(self, msg: CallMeMaybe, now: float) -> None:
        """The peer sent its endpoints via DERP: replace the previous CallMeMaybe set, ping all.

        An endpoint of the previous set that is missing now is deleted even if the netmap
        still lists it (the next netmap brings it back), and a best address among them is
        dropped, as upstream's handleCallMeMaybe does.

        meshscale also stops trusting the best address when the set gained an endpoint: the
        peer's network changed (it roamed; its old endpoints stay listed for 5 min, so the
        deletion above does not fire), and the peer sends a CallMeMaybe only while it has no
        trusted path to us. Data then goes over DERP as well until a pong answers, and the
        first candidate to answer becomes the best, instead of our sending to a dead address
        alone until the trust from its last pong (up to 6.5 s) runs out. A best that still
        works answers within a round trip and is trusted again.
        """
        wanted = {ep for ep in msg.my_number if not (ep.ip.version == 6 and ep.ip.is_link_local)}
        previous = {ep for ep, c in self._eps.items() if c.call_me_maybe_at is not None}
        for ep in previous - wanted:
            self._delete(ep)
        if wanted - previous:
            self.trust_until = float("-inf")
        for ep in wanted:
            self._eps.setdefault(ep, _Candidate()).call_me_maybe_at = now
        for c in self._eps.values():
            c.last_ping = None
        self._send_pings(now, call_me_maybe=False)

    # ---- resets ----

    def note_connectivity_change(self, now: float | None = None) -> None:
        """Our network changed: forget the best path and all probe history
        (docs/protocol/derp-disco-stun.md §5.7).

        With ``now``, a session active in the last 45 s also starts discovery at once (pings
        to every candidate and a CallMeMaybe) instead of at its next heartbeat, up to 3 s
        later: the peer keeps sending to our old address until it hears from us.
        """
        self._clear_best()
        for c in self._eps.values():
            c.clear()
        active = self.last_send is not None and (
            now is not None and now - self.last_send <= SESSION_ACTIVE_TIMEOUT
        )
        if active and now is not None:
            self._send_pings(now, call_me_maybe=True)

    def note_bad_endpoint(self, addr: AddrPort) -> None:
        """A send to ``addr`` failed in a way that says the path is gone."""
        self._clear_best()
        c = self._eps.get(addr)
        if c is not None:
            c.clear()

    # ---- timer ----

    def get_timer(self) -> float | None:
        times = [sp.at + PING_TIMEOUT for sp in self._sent.values()]
        if self.heartbeat_at is not None:
            times.append(self.heartbeat_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for tx, sp in list(self._sent.items()):
            if now >= sp.at + PING_TIMEOUT:
                del self._sent[tx]
                if sp.user in self._user_pings and not any(
                    o.user == sp.user for o in self._sent.values()
                ):
                    self._user_pings.discard(sp.user)
                    self._actions.append(UserPingDone(sp.user, None, None, 0))
                # Newer upstream: a timed-out ping to an untrusted best drops it.
                if sp.to == self.best and now > self.trust_until:
                    self._clear_best()
        if self.heartbeat_at is not None and now >= self.heartbeat_at:
            self._heartbeat(now)

    def has_actions(self) -> bool:
        return bool(self._actions)

    def take_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    # ---- internals ----

    def _heartbeat(self, now: float) -> None:
        self.heartbeat_at = None
        if self.last_send is None or now - self.last_send > SESSION_ACTIVE_TIMEOUT:
            return  # idle session: heartbeats stop until the next send
        if self.best is not None:
            self._start_ping(self.best, now, heartbeat=True)
        if self._want_full_ping(now):
            self._send_pings(now, call_me_maybe=True)
        self.heartbeat_at = now + HEARTBEAT_INTERVAL

    def _want_full_ping(self, now: float) -> bool:
        if self.best is None or self.last_full_ping is None or now > self.trust_until:
            return True
        if (self.best_latency or 0.0) <= GOOD_ENOUGH_LATENCY:
            return False
        return now - self.last_full_ping >= UPGRADE_UDP_DIRECT_INTERVAL

    def _send_pings(self, now: float, *, call_me_maybe: bool) -> None:
        self.last_full_ping = now
        sent_any = False
        for ep, c in list(self._eps.items()):
            if c.expired(now):
                self._delete(ep)
                continue
            if c.last_ping is not None and now - c.last_ping < DISCO_PING_INTERVAL:
                continue
            sent_any = True
            self._start_ping(ep, now, heartbeat=False)
        if sent_any and call_me_maybe and self.home_derp:
            self._actions.append(SendCallMeMaybe(self.home_derp))

    def _start_ping(self, ep: AddrPort, now: float, *, heartbeat: bool) -> None:
        self._eps[ep].last_ping = now  # callers pass candidates only (best is one)
        if len(self._sent) >= MAX_SENT_PINGS:
            return
        tx = self._rand(12)
        self._sent[tx] = _SentPing(ep, now, heartbeat)
        self._actions.append(SendPing(ep, tx))

    def _set_best(self, addr: AddrPort | None, latency: float | None) -> None:
        changed = addr != self.best
        self.best, self.best_latency = addr, latency
        if changed:
            self._actions.append(BestAddrChanged(addr, latency))

    def _clear_best(self) -> None:
        self._set_best(None, None)
        self.trust_until = float("-inf")

    def _delete(self, ep: AddrPort) -> None:
        del self._eps[ep]
        if self.best == ep:
            self._clear_best()

    def _prune(self, now: float) -> None:
        for ep, c in list(self._eps.items()):
            if c.expired(now):
                self._delete(ep)
