"""Hard-NAT probing: the birthday-paradox plan between an easy and a hard NAT. No I/O.

Behind an endpoint-dependent ("hard") NAT a node's public port differs per destination, so a
peer behind a port-stable ("easy") NAT cannot learn which port to send to, and both NATs drop
what they did not ask for: the ordinary disco pings never meet. Tailscale's "How NAT traversal
works" (the birthday section) describes the way out, which this module plans::

    hard side (OPEN):   opens N extra sockets; each pings the easy side's public ip:port,
                        which opens N mappings on its NAT, each at a random public port
    easy side (SPRAY):  from its one socket, pings M distinct random ports on the hard side's
                        public IP; each opens its own NAT towards that port
    a probe that hits one of the N ports passes both NATs (either order works: each side's
    packet leaves the state the other's needs); P(success) = 1 - (1 - M/R)^N for R
    possible ports (R = 64512 for Linux's default 1024-65535): N = 256, M = 2048: 99.97 %

The easy side learns the working ip:port from the Pong; the hard side learns which extra socket
works from the first disco message that arrives on it, and keeps that socket for the peer.

Rules: an attempt starts only when our netcheck and the peer's (its Hostinfo.NetInfo) disagree
about MappingVariesByDestIP (never hard<->hard: the search space is 2^32 there), never while a
direct path exists (it stops as soon as one does), sends at most ``budget.packets`` probes and
lasts at most ``budget.seconds``; a peer gets one attempt per ``budget.cooldown``.
The official client has no such search (docs/protocol/derp-disco-stun.md §5.8).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshscale.disco import AddrPort, IPAddress
from meshscale.key import NodePublic

PORT_MIN = 1024  # Linux NAT keeps ports >= 1024 in 1024-65535 (nf_nat_l4proto_unique_tuple)
PORT_MAX = 65535
START_DELAY = 0.5  # seconds: ordinary discovery gets this long to find a path first
TICK = 0.05  # seconds between paced bursts
LATE_PONG = 2.0  # seconds an ended attempt's TxIDs still count (a Pong in flight)
MAX_WINNERS = 8  # extra sockets kept for peers after a success (oldest released first)
OPEN_ROUNDS = 2  # the hard side pings from each socket at the start and half-way


class Role(enum.Enum):
    SPRAY = "spray"  # we are easy, the peer hard
    OPEN = "open"  # we are hard, the peer easy


@dataclass(frozen=True, slots=True)
class ProbeBudget:
    """Limits of one attempt (per peer, per side). ``packets`` 0 turns probing off."""

    packets: int = 2048
    seconds: float = 3.0
    ports: int = 256
    rate: int = 2048  # probes per second
    cooldown: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.packets <= 65536:
            raise ValueError(f"hard-NAT probe packets must be 0-65536, not {self.packets}")
        if not 0 < self.seconds <= 60:
            raise ValueError(f"hard-NAT probe seconds must be in (0, 60], not {self.seconds}")
        if not 1 <= self.ports <= 1024:
            raise ValueError(f"hard-NAT probe ports must be 1-1024, not {self.ports}")
        if not 1 <= self.rate <= 100_000:
            raise ValueError(f"hard-NAT probe rate must be 1-100000/s, not {self.rate}")
        if not 0 <= self.cooldown <= 86400:
            raise ValueError(f"hard-NAT probe cooldown must be 0-86400 s, not {self.cooldown}")

    @property
    def enabled(self) -> bool:
        return self.packets > 0


def choose_role(ours: bool | None, theirs: bool | None) -> Role | None:
    """Our role from both sides' MappingVariesByDestIP (None: unknown, no attempt)."""
    if ours is True and theirs is False:
        return Role.OPEN
    if ours is False and theirs is True:
        return Role.SPRAY
    return None


def is_public_v4(addr: AddrPort) -> bool:
    """An IPv4 endpoint a NAT could have mapped (not private, CGNAT, loopback or link-local)."""
    ip = addr.ip
    if ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return False
    # RFC 1918 and 100.64.0.0/10 (the tailnet's own) only: Python's is_private also counts
    # the documentation ranges, and the lab's internet is 203.0.113.0/24.
    b = ip.packed
    rfc1918 = b[0] == 10 or (b[0] == 172 and b[1] & 0xF0 == 16) or (b[0] == 192 and b[1] == 168)
    return not (rfc1918 or (b[0] == 100 and b[1] & 0xC0 == 64))


@dataclass(frozen=True, slots=True)
class Probe:
    """Send a disco Ping with ``tx_id`` to ``dst`` from socket ``sock`` (0: the main one)."""

    peer: NodePublic
    sock: int
    dst: AddrPort
    tx_id: bytes


@dataclass(slots=True)
class _Attempt:
    role: Role
    targets: tuple[AddrPort, ...]  # SPRAY: one per hard-side IP (port unused); OPEN: easy eps
    begin: float  # first probes
    deadline: float
    socks: list[int] = field(default_factory=list)  # OPEN
    used: set[tuple[IPAddress, int]] = field(default_factory=set)  # SPRAY: ports probed
    sent: int = 0
    rounds: int = 0  # OPEN


@dataclass(slots=True)
class PlannerStats:
    attempts: int = 0
    sent: int = 0
    successes: int = 0
    gave_up: int = 0  # attempts that reached their deadline or budget without success
    stopped: int = 0  # attempts ended because a direct path appeared another way


class ProbePlanner:
    """Plans hard-NAT probe attempts (see the module docstring). Performs no I/O.

    :param rand: ``rand(n)`` returns n random bytes (ports and TxIDs).
    """

    def __init__(self, budget: ProbeBudget, rand: Callable[[int], bytes]) -> None:
        self.budget = budget
        self._rand = rand
        self._attempts: dict[NodePublic, _Attempt] = {}
        self._last: dict[NodePublic, float] = {}  # when each peer's last attempt started
        self._tx: dict[bytes, tuple[NodePublic, float]] = {}  # probe TxID -> (peer, expiry)
        self._sock_peer: dict[int, NodePublic] = {}  # every open extra socket -> its peer
        self._winners: dict[int, AddrPort] = {}  # kept sockets -> the address they reach
        self._next_sock = 1
        self._out: list[Probe] = []
        self.stats = PlannerStats()

    # ---- inputs ----

    def start(
        self, peer: NodePublic, role: Role, endpoints: Iterable[AddrPort], now: float
    ) -> bool:
        """Begin an attempt towards ``peer`` (whose advertised endpoints are ``endpoints``).

        Refused (False) when probing is off, an attempt runs or ran within the cooldown, the
        peer has no public IPv4 endpoint, or (OPEN) the budget cannot pay one round.
        """
        b = self.budget
        if not b.enabled or peer in self._attempts:
            return False
        last = self._last.get(peer)
        if last is not None and now - last < b.cooldown:
            return False
        public = [e for e in dict.fromkeys(endpoints) if is_public_v4(e)]
        if role is Role.SPRAY:
            public = list({e.ip: e for e in public}.values())  # one target per IP
        if not public:
            return False
        begin = now + START_DELAY
        att = _Attempt(role, tuple(public), begin, begin + b.seconds)
        if role is Role.OPEN:
            n = min(b.ports, b.packets // (OPEN_ROUNDS * len(public)))
            if n < 1:
                return False
            att.socks = list(range(self._next_sock, self._next_sock + n))
            self._next_sock += n
            for s in att.socks:
                self._sock_peer[s] = peer
        self._attempts[peer] = att
        self._last[peer] = now
        self.stats.attempts += 1
        return True

    def note_pong(self, tx_id: bytes, now: float) -> NodePublic | None:
        """A Pong arrived: the peer it answers if it is one of our probes (a success)."""
        entry = self._tx.pop(tx_id, None)
        if entry is None or now > entry[1]:
            return None
        peer = entry[0]
        self.stats.successes += 1
        self._end(peer, success=True)
        return peer

    def note_received(self, sock: int, peer: NodePublic, src: AddrPort, now: float) -> bool:
        """A disco message from ``peer`` came in on extra socket ``sock`` from ``src``.

        True if the socket is ours for that peer: it is kept (``routes``) and the attempt,
        if still running, counts a success.
        """
        if self._sock_peer.get(sock) != peer:
            return False
        if sock not in self._winners:
            if len(self._winners) >= MAX_WINNERS:
                self.release(next(iter(self._winners)))
            self._winners[sock] = src
            att = self._attempts.get(peer)
            if att is not None and sock in att.socks:
                att.socks.remove(sock)  # kept when the others go
                self.stats.successes += 1
                self._end(peer, success=True)
        return True

    def note_direct(self, peer: NodePublic, addr: AddrPort) -> None:
        """The peer has a direct path at ``addr``: no attempt for it may run. A spray counts
        it a success if it probed that very ip:port (the hard side's ping met our probe's
        hole before our probe met its socket: ordinary discovery then found the path)."""
        att = self._attempts.get(peer)
        if att is None:
            return
        if att.role is Role.SPRAY and (addr.ip, addr.port) in att.used:
            self.stats.successes += 1
            self._end(peer, success=True)
        else:
            self.stats.stopped += 1
            self._end(peer, success=False)

    def forget(self, peer: NodePublic) -> None:
        """The peer left (or our network changed): end its attempt and release its sockets."""
        self._attempts.pop(peer, None)
        self._last.pop(peer, None)
        for s in [s for s, p in self._sock_peer.items() if p == peer]:
            self.release(s)

    def release(self, sock: int) -> None:
        self._sock_peer.pop(sock, None)
        self._winners.pop(sock, None)

    # ---- timer ----

    def get_timer(self) -> float | None:
        times = [self._next_at(a) for a in self._attempts.values()]
        if self._tx:
            times.append(min(exp for _, exp in self._tx.values()))
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for tx in [tx for tx, (_, exp) in self._tx.items() if now >= exp]:
            del self._tx[tx]
        for peer, att in list(self._attempts.items()):
            if now >= att.deadline:
                self.stats.gave_up += 1
                self._end(peer, success=False)
            elif now >= att.begin:
                self._emit(peer, att, now)

    # ---- outputs ----

    def take_probes(self) -> list[Probe]:
        out, self._out = self._out, []
        return out

    def sockets(self) -> frozenset[int]:
        """Extra sockets the driver must keep open (it closes any others it has)."""
        return frozenset(self._sock_peer)

    def routes(self) -> dict[AddrPort, int]:
        """Addresses reached through a kept extra socket: send to them from that socket."""
        return {addr: s for s, addr in self._winners.items()}

    def running(self, peer: NodePublic) -> bool:
        return peer in self._attempts

    # ---- internals ----

    def _next_at(self, att: _Attempt) -> float:
        if att.role is Role.OPEN:
            half = att.begin + (att.deadline - att.begin) / OPEN_ROUNDS * att.rounds
            return min(max(att.begin, half), att.deadline)
        if att.sent >= self.budget.packets or len(att.used) >= _space(att):
            return att.deadline  # nothing more to send: only the end is due
        return min(max(att.begin, att.begin + att.sent / self.budget.rate), att.deadline)

    def _emit(self, peer: NodePublic, att: _Attempt, now: float) -> None:
        b = self.budget
        if att.role is Role.OPEN:
            if att.rounds >= OPEN_ROUNDS or now < self._next_at(att):
                return
            att.rounds += 1
            for s in att.socks:
                for dst in att.targets:
                    if att.sent >= b.packets:
                        return
                    self._probe(peer, att, s, dst, now)
            return  # the sockets stay open until the deadline
        # SPRAY: paced at rate/s, each burst one tick's worth, distinct ports per IP.
        due = min(b.packets, int((now - att.begin + TICK) * b.rate))
        space = _space(att)
        while att.sent < due and len(att.used) < space:
            dst = att.targets[att.sent % len(att.targets)]
            port = self._random_port(dst.ip, att.used)
            self._probe(peer, att, 0, AddrPort(dst.ip, port), now)

    def _random_port(self, ip: IPAddress, used: set[tuple[IPAddress, int]]) -> int:
        span = PORT_MAX - PORT_MIN + 1
        port = PORT_MIN + int.from_bytes(self._rand(2), "big") % span
        while (ip, port) in used:  # a linear step: the set is far from full
            port = PORT_MIN + (port - PORT_MIN + 1) % span
        used.add((ip, port))
        return port

    def _probe(self, peer: NodePublic, att: _Attempt, sock: int, dst: AddrPort, now: float) -> None:
        tx = self._rand(12)
        att.sent += 1
        self.stats.sent += 1
        if att.role is Role.SPRAY:
            self._tx[tx] = (peer, att.deadline + LATE_PONG)
        self._out.append(Probe(peer, sock, dst, tx))

    def _end(self, peer: NodePublic, *, success: bool) -> None:
        att = self._attempts.pop(peer, None)
        if att is None:
            return
        for s in att.socks:
            if s not in self._winners:
                self.release(s)
        if success:
            # later Pongs of the same spray are answers, not new successes
            for tx in [tx for tx, (p, _) in self._tx.items() if p == peer]:
                del self._tx[tx]


def _space(att: _Attempt) -> int:
    return len(att.targets) * (PORT_MAX - PORT_MIN + 1)
