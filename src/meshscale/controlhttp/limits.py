"""Bounds on what /ts2021 connections may hold (issue #12, finding 1): sans-IO accounting.

Anyone can complete the Noise handshake with a self-made machine key, so an upgraded
connection is classed by what the key proves:

- **node**: the machine key belongs to a registered node (``classify`` says so). A node's
  map long poll is the one legitimate idle use of a connection.
- **unauthenticated**: any other key. It may register (or wait for an interactive login)
  and little else, so it gets a much smaller budget, and such connections are capped per
  source address (IPv6 per /64) and in total.

``NoiseGate`` keeps the server's counters: connections by class and source, and body bytes
buffered (requests whose body has not fully arrived) per connection and server-wide. The
H2 driver asks it before each step (``admit``, ``reserve``) and gives back (``release``,
``free``); ``stats()`` is what tests and /metrics read. Nothing here does I/O or keeps time:
the deadlines in ``Budget`` are applied by the driver (h2server.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

BURST_SECONDS = 0.25  # a rate bucket holds this many seconds of tokens
SHED_BUCKET = "\0shed"  # the bucket of shed_admit_rate (no source has this key)
MAX_BUCKETS = 4096  # rate-limit buckets kept (least recently used dropped)
KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Budget:
    """What one connection of a class may hold."""

    idle_timeout: float  # seconds without a request in progress or a byte read
    body_timeout: float  # seconds from a request's headers to the end of its body
    max_streams: int  # concurrent HTTP/2 request streams
    max_body: int  # bytes per request body
    max_buffered: int  # bytes of unfinished request bodies at once, all streams


NODE_BUDGET = Budget(
    idle_timeout=300.0, body_timeout=30.0, max_streams=100, max_body=1 * MiB, max_buffered=4 * MiB
)
UNAUTH_BUDGET = Budget(
    idle_timeout=15.0, body_timeout=10.0, max_streams=4, max_body=64 * KiB, max_buffered=128 * KiB
)


@dataclass(frozen=True, slots=True)
class NoiseLimits:
    """Server-wide limits on upgraded connections (defaults sized for ~10k nodes)."""

    node: Budget = NODE_BUDGET
    unauth: Budget = UNAUTH_BUDGET
    max_connections: int = 20_000  # upgraded connections of any class
    max_unauth_connections: int = 1024
    max_unauth_per_source: int = 64  # per IPv4 address or IPv6 /64
    max_buffered: int = 128 * MiB  # unfinished bodies, all connections
    max_buffered_unauth: int = 16 * MiB  # of which unauthenticated connections
    # New unauthenticated connections per second (token buckets, burst = BURST_SECONDS
    # worth): each costs a Noise handshake and HTTP/2 setup on the one event loop, so this
    # bounds the CPU a flood of fresh machine keys can take. Over the rate a connection is
    # paced (it waits for its token, up to max_pace seconds) and refused only past that, so
    # a legitimate burst is slowed down, not failed. Node connections are not limited.
    unauth_rate: float = 100.0  # server-wide
    unauth_rate_per_source: float = 50.0
    max_pace: float = 2.0  # seconds a connection may wait for its token
    max_frame: int = 16 * KiB  # HTTP/2 SETTINGS_MAX_FRAME_SIZE (the protocol's minimum)
    max_header_list: int = 16 * KiB  # decoded request headers, bytes
    # Overload shedding: the one event loop also carries every node's map stream, so when
    # it runs late by more than shed_lag seconds (the driver measures it, observe_lag), new
    # unauthenticated work is refused for shed_hold seconds: fresh machine keys after the
    # handshake, and before it any source that holds or recently opened unauthenticated
    # connections. Registered nodes' connections are still admitted. Only while at least
    # shed_min_unauth unauthenticated connections are held: a loop slow for other reasons
    # (a busy machine, a burst of node logins) is not helped by refusing them.
    shed_lag: float = 0.1
    shed_hold: float = 5.0
    # An episode that starts within shed_hold_max seconds of the last one's end holds twice
    # as long as that one did (up to shed_hold_max): a flood that returns the moment
    # shedding stops meets longer pauses instead of a spike every shed_hold seconds.
    shed_hold_max: float = 60.0
    shed_min_unauth: int = 32
    shed_tarpit: float = 2.0  # seconds a connection refused at accept is held, unread
    # While shedding, a fresh key from a new source (no unauthenticated connection held,
    # none refused or ended unregistered within shed_hold_max s) still gets
    # in at this many per second server-wide (paced like unauth_rate, refused past
    # max_pace): a burst of new nodes joining with a pre-auth key, each from its own
    # address, is slowed rather than refused, and a flood needs a fresh address per
    # connection to use it (counter ``shed_admitted``; 0 turns it off).
    shed_admit_rate: float = 10.0


def source_of(host: str | None) -> str:
    """The per-source key: the IPv4 address, the IPv6 /64, or the text as given."""
    if not host:
        return "?"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass(slots=True)
class Ticket:
    """One admitted connection's share of the counters."""

    source: str
    node: bool
    pace: float = 0.0  # seconds the connection must wait before it is served (rate limit)
    buffered: int = 0
    released: bool = False


@dataclass(slots=True)
class NoiseGate:
    """The server's counters; see the module docstring."""

    limits: NoiseLimits = field(default_factory=NoiseLimits)
    connections: int = 0
    unauth_connections: int = 0
    buffered: int = 0
    buffered_unauth: int = 0
    refused: int = 0  # connections refused by a cap
    paced: int = 0  # connections made to wait by the rate limit
    closed_idle: int = 0  # connections closed by a deadline
    rejected_bodies: int = 0  # streams refused by a body budget
    shed: int = 0  # connections refused because the server was overloaded
    shed_at_accept: int = 0  # of which reset at accept, unread (accept)
    shed_admitted: int = 0  # fresh keys admitted while shedding (shed_admit_rate)
    refused_early: int = 0  # of ``refused``: a suspect source over the server-wide rate,
    # before its handshake (precheck) or at accept, unread (accept)
    overloads: int = 0  # times the loop lag went over limits.shed_lag (episodes)
    max_lag_ms: int = 0  # the worst loop lag observed
    _shed_until: float = 0.0
    _hold: float = 0.0  # the current episode's hold (0: none yet)
    # source -> when an unauthenticated connection of its was last refused or ended without
    # becoming a node's (LRU-bounded): who is suspect while shedding. One that registers
    # leaves no mark, so nodes that just joined do not make their address (and a /health
    # probe from it) suspect.
    _recent: dict[str, float] = field(default_factory=dict)
    _per_source: dict[str, int] = field(default_factory=dict)
    # token buckets: source ("" = server-wide) -> (tokens, at); sources LRU-bounded
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def _take(self, key: str, rate: float, now: float) -> float | None:
        """Reserve a token: seconds to wait for it (0: now), or None (past max_pace, not
        reserved). Tokens may go negative: that is the queue of paced connections."""
        burst = max(1.0, BURST_SECONDS * rate)
        tokens, at = self._buckets.pop(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate) - 1
        wait = max(0.0, -tokens / rate)
        if wait > self.limits.max_pace:
            tokens += 1  # not reserved
        self._buckets[key] = (tokens, now)  # re-inserted: most recently used
        while len(self._buckets) > MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]
        return None if wait > self.limits.max_pace else wait

    def _give_back(self, key: str) -> None:
        tokens, at = self._buckets.get(key, (0.0, 0.0))
        if key in self._buckets:
            self._buckets[key] = (tokens + 1, at)

    def observe_lag(self, lag: float, now: float) -> None:
        """The driver saw the event loop run ``lag`` seconds late at ``now``."""
        self.max_lag_ms = max(self.max_lag_ms, int(lag * 1000))
        if lag <= self.limits.shed_lag:
            return
        lim = self.limits
        if not self.shedding(now):  # a new episode needs unauthenticated load to shed
            if self.unauth_connections < lim.shed_min_unauth:
                return
            self.overloads += 1
            recent = self._hold and now - self._shed_until < lim.shed_hold_max
            self._hold = min(lim.shed_hold_max, 2 * self._hold) if recent else lim.shed_hold
        self._shed_until = now + self._hold

    def shedding(self, now: float) -> bool:
        return now < self._shed_until

    def _suspect(self, src: str, now: float) -> bool:
        """Holds unauthenticated connections, or had one refused or end unregistered within
        shed_hold s."""
        if self._per_source.get(src, 0) > 0:
            return True
        at = self._recent.get(src)
        return at is not None and now - at < self.limits.shed_hold

    def _saw_unauth(self, src: str, now: float) -> None:
        self._recent.pop(src, None)
        self._recent[src] = now  # re-inserted: most recently used
        while len(self._recent) > MAX_BUCKETS:
            del self._recent[next(iter(self._recent))]

    def accept(self, host: str | None, now: float) -> float | None:
        """Whether to read a new TCP connection from ``host`` at all (None: read it), else
        how long to hold it unread before resetting it (``shed_tarpit``): a suspect
        source's connections are refused at accept, before any parsing, while shedding
        (counter ``shed_at_accept``) and while the server-wide new-connection rate is
        exhausted past max_pace (``refused_early``), since even a 503 costs an HTTP parse
        and a response."""
        src = source_of(host)
        if not self._suspect(src, now):
            return None
        if self.shedding(now):
            self.shed += 1
            self.shed_at_accept += 1
            return self.limits.shed_tarpit
        # Over the server-wide new-connection rate precheck would refuse it after parsing
        # the request; refusing it here costs no parse, no response and no task, which is
        # what a burst of fresh keys (before the lag probe can react) needs.
        if self._over_pace("", self.limits.unauth_rate, now):
            self.refused += 1
            self.refused_early += 1
            return self.limits.shed_tarpit
        return None

    def budget(self, ticket: Ticket) -> Budget:
        return self.limits.node if ticket.node else self.limits.unauth

    def precheck(self, host: str | None, now: float = 0.0) -> str | None:
        """Why to refuse a connection from ``host`` before its handshake, or None.

        A handshake costs about 1 ms of the event loop even when the connection is then
        refused, so a source already at its unauthenticated cap, or so far over its rate
        that it would be refused anyway, is refused first (it cannot be told apart from a
        node on the same address before the handshake: such a node waits until the
        source's connections drop)."""
        lim = self.limits
        src = source_of(host)
        if self._per_source.get(src, 0) >= lim.max_unauth_per_source:
            self.refused += 1
            return "too many unauthenticated connections from this address"
        if self._over_pace(src, lim.unauth_rate_per_source, now):
            self.refused += 1
            return "too many new connections from this address"
        suspect = self._suspect(src, now)
        if suspect and self.shedding(now):
            self.shed += 1
            return "server busy"
        # The server-wide rate too, but only for a source that is already suspect: its key
        # would be refused after the handshake unless it is a node's, and a burst of fresh
        # keys (1,000 connections at once) would otherwise cost a handshake each, queued
        # ahead of every other connection's work, before the lag probe can react.
        if suspect and self._over_pace("", lim.unauth_rate, now):
            self.refused += 1
            self.refused_early += 1
            return "too many new connections"
        return None

    def _shed_token(self, src: str, now: float) -> float | None:
        """While shedding: seconds a fresh key from ``src`` waits for a shed_admit_rate
        token, or None: the allowance is exhausted past max_pace, or the source is not new.
        Not new means it holds unauthenticated connections or had one refused or end
        unregistered within shed_hold_max s, not shed_hold: a flooding source is suspect
        only shed_hold s after its last mark (its refusals at accept leave none), and would
        otherwise take the allowance every shed_hold s (bench_hardening: 3,438 junk keys)."""
        lim = self.limits
        at = self._recent.get(src)
        seen = at is not None and now - at < lim.shed_hold_max
        if seen or self._per_source.get(src, 0) > 0 or lim.shed_admit_rate <= 0:
            return None
        return self._take(SHED_BUCKET, self.limits.shed_admit_rate, now)

    def _over_pace(self, key: str, rate: float, now: float) -> bool:
        """Would ``_take`` refuse (a token further away than max_pace)? Reserves nothing."""
        burst = max(1.0, BURST_SECONDS * rate)
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate) - 1
        return -tokens / rate > self.limits.max_pace

    def admit(self, host: str | None, node: bool, now: float = 0.0) -> Ticket | str:
        """A ticket for a new connection, or why it is refused (``now``: monotonic
        seconds, for the rate limits)."""
        lim = self.limits
        if self.connections >= lim.max_connections:
            self.refused += 1
            return "too many connections"
        src = source_of(host)
        pace = 0.0
        if not node:
            admitted = self._admit_unauth(src, now)
            if isinstance(admitted, str):
                self._saw_unauth(src, now)
                return admitted
            pace = admitted
            self.unauth_connections += 1
            self._per_source[src] = self._per_source.get(src, 0) + 1
        self.connections += 1
        if pace:
            self.paced += 1
        return Ticket(src, node, pace=pace)

    def _admit_unauth(self, src: str, now: float) -> float | str:
        """The caps and rates for an unauthenticated connection: seconds it must wait
        (pace), or why it is refused (counted; no token kept)."""
        lim = self.limits
        shedding = self.shedding(now)
        w_shed = self._shed_token(src, now) if shedding else 0.0
        if w_shed is None:
            self.shed += 1
            return "server busy"
        why, w_src, w_all = "", None, None
        if self.unauth_connections >= lim.max_unauth_connections:
            why = "too many unauthenticated connections"
        elif self._per_source.get(src, 0) >= lim.max_unauth_per_source:
            why = "too many unauthenticated connections from this address"
        elif (w_src := self._take(src, lim.unauth_rate_per_source, now)) is None:
            why = "too many new connections from this address"
        elif (w_all := self._take("", lim.unauth_rate, now)) is None:
            self._give_back(src)
            why = "too many new connections"
        if why or w_src is None or w_all is None:
            self.refused += 1
            if shedding:
                self._give_back(SHED_BUCKET)
            return why
        if shedding:
            self.shed_admitted += 1
        return max(w_shed, w_src, w_all)

    def promote(self, ticket: Ticket) -> None:
        """The connection's machine key registered: it becomes a node connection."""
        if ticket.node or ticket.released:
            return
        self._drop_unauth(ticket)
        self.buffered_unauth -= ticket.buffered
        ticket.node = True

    def release(self, ticket: Ticket, now: float | None = None) -> None:
        """The connection ended (``now``: monotonic seconds; one that never registered
        marks its source suspect for shed_hold s)."""
        if ticket.released:
            return
        self.free(ticket, ticket.buffered)
        if not ticket.node:
            self._drop_unauth(ticket)
            if now is not None:
                self._saw_unauth(ticket.source, now)
        self.connections -= 1
        ticket.released = True

    def _drop_unauth(self, ticket: Ticket) -> None:
        self.unauth_connections -= 1
        left = self._per_source.get(ticket.source, 0) - 1
        if left > 0:
            self._per_source[ticket.source] = left
        else:
            self._per_source.pop(ticket.source, None)

    def reserve(self, ticket: Ticket, n: int) -> bool:
        """Room for ``n`` more bytes of unfinished body on this connection?"""
        lim = self.limits
        if ticket.buffered + n > self.budget(ticket).max_buffered:
            return False
        if self.buffered + n > lim.max_buffered:
            return False
        if not ticket.node and self.buffered_unauth + n > lim.max_buffered_unauth:
            return False
        ticket.buffered += n
        self.buffered += n
        if not ticket.node:
            self.buffered_unauth += n
        return True

    def free(self, ticket: Ticket, n: int) -> None:
        n = min(n, ticket.buffered)
        ticket.buffered -= n
        self.buffered -= n
        if not ticket.node:
            self.buffered_unauth -= n

    def stats(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "unauth_connections": self.unauth_connections,
            "buffered_bytes": self.buffered,
            "buffered_unauth_bytes": self.buffered_unauth,
            "refused": self.refused,
            "paced": self.paced,
            "closed_idle": self.closed_idle,
            "rejected_bodies": self.rejected_bodies,
            "shed": self.shed,
            "shed_at_accept": self.shed_at_accept,
            "shed_admitted": self.shed_admitted,
            "refused_early": self.refused_early,
            "overloads": self.overloads,
            "max_lag_ms": self.max_lag_ms,
            "shed_hold_ms": int(self._hold * 1000),
            "sources": len(self._per_source),
        }
