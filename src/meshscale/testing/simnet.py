"""SimNet: an in-memory, discrete-event UDP internet with RFC 4787 NATs and a DERP-like relay.

Topology::

    Host (public IP) ----------------+
                                     |            +-- Relay (region N): STUN on UDP
    Host (LAN IP) -- NAT (public IP) +-- internet +   3478, DERP-like reliable relay
    Host (LAN IP) --/                |            +-- ...
                                     |
    NAT kinds (RFC 4787):  EASY  = endpoint-independent mapping,
                                   address-and-port-dependent filtering
                           HARD  = endpoint-dependent ("symmetric") mapping,
                                   address-and-port-dependent filtering
                           RESTRICTED = endpoint-independent mapping,
                                   address-dependent filtering
                           FULL_CONE = endpoint-independent mapping and filtering
                           UDP_BLOCKED = drops every UDP packet (DERP still works)

Run loop (trio's autojump, docs/style.md §7): deliver every packet that is due;
when none is, jump the clock to the earliest of the next packet and every agent's
``get_timer()``. Every loop counts steps and raises SimStepLimit past its cap.

Loss, duplication and extra delay come from a routing hook fed by the net's seeded
``random.Random``; the relay is TCP-like (in order, never lost).
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from meshscale import stun
from meshscale.disco import AddrPort, IPAddress
from meshscale.key import NodePublic
from meshscale.testing.clock import FakeClock

DEFAULT_LINK_LATENCY = 0.005  # seconds, one way, added to every hop's own latency
DEFAULT_MAPPING_TIMEOUT = 120.0  # seconds of outbound silence before a NAT forgets
STUN_PORT = 3478
DEFAULT_MAX_STEPS = 200_000


class SimStepLimit(RuntimeError):
    """A simulation loop exceeded its step cap (a livelock, or a cap set too low)."""


class NATType(enum.Enum):
    EASY = "easy"
    HARD = "hard"
    RESTRICTED = "restricted"
    FULL_CONE = "full-cone"
    UDP_BLOCKED = "udp-blocked"


@dataclass(frozen=True, slots=True)
class Packet:
    src: AddrPort
    dst: AddrPort
    payload: bytes


# A routing hook sees each UDP packet entering the internet and returns the extra
# delays at which copies are delivered: [] drops it, [0.0] is normal, two entries dup.
RoutingHook = Callable[[Packet, random.Random], list[float]]


def lossy(loss: float = 0.0, dup: float = 0.0, max_delay: float = 0.0) -> RoutingHook:
    """A hook that drops, duplicates and delays packets, seeded by the net's RNG."""

    def hook(pkt: Packet, rng: random.Random) -> list[float]:
        if rng.random() < loss:
            return []
        copies = 2 if rng.random() < dup else 1
        return [rng.uniform(0.0, max_delay) for _ in range(copies)]

    return hook


class Agent(Protocol):
    """Something with timers that the run loop must wake (a node driver)."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


DatagramHandler = Callable[[bytes, AddrPort, float], None]
DERPHandler = Callable[[bytes, NodePublic, int, float], None]


class SimSocket:
    """A bound UDP socket on a host; incoming datagrams go to ``on_datagram``."""

    def __init__(self, host: Host, port: int) -> None:
        self.host = host
        self.port = port
        self.on_datagram: DatagramHandler | None = None
        self.received: list[tuple[bytes, AddrPort]] = []  # used when no handler is set

    @property
    def local(self) -> AddrPort:
        return AddrPort(self.host.ip, self.port)

    def sendto(self, data: bytes, dst: AddrPort) -> None:
        self.host.net._send_udp(Packet(self.local, dst, bytes(data)), self.host)

    def _deliver(self, pkt: Packet, now: float) -> None:
        if self.on_datagram is not None:
            self.on_datagram(pkt.payload, pkt.src, now)
        else:
            self.received.append((pkt.payload, pkt.src))

    def close(self) -> None:
        self.host.sockets.pop(self.port, None)


class Host:
    """A machine with one IP, on the internet directly or on a NAT's LAN."""

    def __init__(self, net: SimNet, name: str, ip: IPAddress, nat: NAT | None, latency: float):
        self.net = net
        self.name = name
        self.ip = ip
        self.nat = nat
        self.latency = latency
        self.sockets: dict[int, SimSocket] = {}

    def bind(self, port: int = 0) -> SimSocket:
        if port == 0:
            port = next(p for p in itertools.count(40000) if p not in self.sockets)
        if port in self.sockets:
            raise OSError(f"{self.name}: port {port} in use")
        sock = SimSocket(self, port)
        self.sockets[port] = sock
        return sock

    def move(self, nat: NAT | None, ip: IPAddress) -> None:
        """Roam: the host appears elsewhere with a new address (sockets keep their ports)."""
        self.net._detach(self)
        self.nat, self.ip = nat, ip
        self.net._attach(self)


@dataclass(slots=True)
class _Mapping:
    public_port: int
    internal: AddrPort
    last_out: float
    allowed: set[AddrPort] = field(default_factory=set)  # remotes we sent to (APDF)
    allowed_ips: set[IPAddress] = field(default_factory=set)  # their IPs (ADF)


class NAT:
    """A NAT router with one public IP and a LAN behind it (tailscale natlab's SNAT44)."""

    def __init__(
        self, net: SimNet, name: str, public_ip: IPAddress, kind: NATType, timeout: float
    ) -> None:
        self.net = net
        self.name = name
        self.public_ip = public_ip
        self.kind = kind
        self.mapping_timeout = timeout
        self._by_key: dict[tuple[AddrPort, AddrPort | None], _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}
        self._next_port = net.rng.randrange(20000, 60000)

    def reset(self) -> None:
        """Forget every mapping and move the port allocator: all public mappings change."""
        self._by_key.clear()
        self._by_port.clear()
        self._next_port = self.net.rng.randrange(20000, 60000)

    def mappings(self) -> int:
        return len(self._by_key)

    def _alloc_port(self) -> int:
        while True:
            self._next_port = self._next_port + 1 if self._next_port < 65535 else 1024
            if self._next_port not in self._by_port:
                return self._next_port

    def outbound(self, pkt: Packet, now: float) -> Packet | None:
        if self.kind is NATType.UDP_BLOCKED:
            return None
        key = (pkt.src, pkt.dst if self.kind is NATType.HARD else None)
        m = self._by_key.get(key)
        if m is not None and now - m.last_out > self.mapping_timeout:
            self._drop(key, m)
            m = None
        if m is None:
            m = _Mapping(self._alloc_port(), pkt.src, now)
            self._by_key[key] = m
            self._by_port[m.public_port] = m
        m.last_out = now
        m.allowed.add(pkt.dst)
        m.allowed_ips.add(pkt.dst.ip)
        return Packet(AddrPort(self.public_ip, m.public_port), pkt.dst, pkt.payload)

    def inbound(self, pkt: Packet, now: float) -> Packet | None:
        if self.kind is NATType.UDP_BLOCKED:
            return None
        m = self._by_port.get(pkt.dst.port)
        if m is None or now - m.last_out > self.mapping_timeout:
            return None
        if self.kind is NATType.RESTRICTED:
            if pkt.src.ip not in m.allowed_ips:
                return None  # address-dependent filtering
        elif self.kind is not NATType.FULL_CONE and pkt.src not in m.allowed:
            return None  # address-and-port-dependent filtering
        return Packet(pkt.src, m.internal, pkt.payload)

    def _drop(self, key: tuple[AddrPort, AddrPort | None], m: _Mapping) -> None:
        del self._by_key[key]
        self._by_port.pop(m.public_port, None)


class Relay:
    """A DERP region: one node that relays by node key and answers STUN on UDP 3478."""

    def __init__(self, net: SimNet, region_id: int, ip: IPAddress, latency: float) -> None:
        self.net = net
        self.region_id = region_id
        self.ip = ip
        self.latency = latency
        self._clients: dict[NodePublic, tuple[Host, DERPHandler]] = {}
        self.relayed = 0
        self.stun_answered = 0

    def connect(self, key: NodePublic, host: Host, handler: DERPHandler) -> None:
        """Register a client connection (the latest connection for a key wins)."""
        self._clients[key] = (host, handler)

    def disconnect(self, key: NodePublic) -> None:
        self._clients.pop(key, None)

    def connected(self, key: NodePublic) -> bool:
        return key in self._clients

    def send(self, src_host: Host, src: NodePublic, dst: NodePublic, payload: bytes) -> None:
        """SendPacket from ``src``; delivered as RecvPacket if ``dst`` is connected on arrival."""
        net = self.net
        up = net.link_latency + src_host.latency + self.latency
        # TCP keeps order per connection: never deliver before the previous frame.
        net._schedule(up, lambda now: self._forward(src, dst, payload))

    def _forward(self, src: NodePublic, dst: NodePublic, payload: bytes) -> None:
        client = self._clients.get(dst)
        if client is None:
            return
        host, handler = client
        self.relayed += 1
        down = self.net.link_latency + self.latency + host.latency
        region = self.region_id
        self.net._schedule(down, lambda now: handler(payload, src, region, now))

    def _udp(self, pkt: Packet, now: float) -> None:
        if pkt.dst.port != STUN_PORT:
            return
        try:
            txid = stun.parse_request(pkt.payload, require_tailnode=True)
        except stun.ParseError:
            return
        self.stun_answered += 1
        reply = stun.response(txid, pkt.src.ip, pkt.src.port)
        self.net._send_udp(Packet(pkt.dst, pkt.src, reply), None)


class SimNet:
    """The simulated internet. Every random choice comes from ``rng`` (seeded).

    :param seed: seeds the RNG used by NAT port allocation and the routing hook.
    :param hook: optional loss/duplication/delay hook for UDP (see ``lossy``).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        clock: FakeClock | None = None,
        hook: RoutingHook | None = None,
        link_latency: float = DEFAULT_LINK_LATENCY,
    ) -> None:
        self.rng = random.Random(seed)
        self.clock = clock or FakeClock()
        self.hook = hook
        self.link_latency = link_latency
        self._queue: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._public: dict[IPAddress, Host | NAT | Relay] = {}
        self._lans: dict[str, dict[IPAddress, Host]] = {}
        self.agents: list[Agent] = []
        self.steps = 0
        self.udp_sent = 0
        self.udp_dropped = 0

    # ---- building ----

    def add_host(self, name: str, ip: str, *, nat: NAT | None = None, latency: float = 0.0) -> Host:
        host = Host(self, name, ipaddress.ip_address(ip), nat, latency)
        self._attach(host)
        return host

    def add_nat(
        self,
        name: str,
        public_ip: str,
        kind: NATType,
        *,
        mapping_timeout: float = DEFAULT_MAPPING_TIMEOUT,
    ) -> NAT:
        nat = NAT(self, name, ipaddress.ip_address(public_ip), kind, mapping_timeout)
        self._claim(nat.public_ip, nat)
        self._lans[name] = {}
        return nat

    def add_relay(self, region_id: int, ip: str, *, latency: float = 0.0) -> Relay:
        relay = Relay(self, region_id, ipaddress.ip_address(ip), latency)
        self._claim(relay.ip, relay)
        return relay

    def add_agent(self, agent: Agent) -> None:
        self.agents.append(agent)

    def _claim(self, ip: IPAddress, owner: Host | NAT | Relay) -> None:
        if ip in self._public:
            raise ValueError(f"{ip} already in use")
        self._public[ip] = owner

    def _attach(self, host: Host) -> None:
        if host.nat is None:
            self._claim(host.ip, host)
        else:
            lan = self._lans[host.nat.name]
            if host.ip in lan:
                raise ValueError(f"{host.ip} already in use on {host.nat.name}")
            lan[host.ip] = host

    def _detach(self, host: Host) -> None:
        if host.nat is None:
            self._public.pop(host.ip, None)
        else:
            self._lans[host.nat.name].pop(host.ip, None)

    # ---- the data path ----

    def _schedule(self, delay: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self._queue, (self.clock.now() + delay, next(self._seq), fn))

    def _send_udp(self, pkt: Packet, from_host: Host | None) -> None:
        self.udp_sent += 1
        now = self.clock.now()
        hop = self.link_latency + (from_host.latency if from_host else 0.0)
        if from_host is not None and from_host.nat is not None:
            lan = self._lans[from_host.nat.name]
            local = lan.get(pkt.dst.ip)
            if local is not None:  # same LAN: no NAT, no hook
                self._schedule(hop, lambda t: self._to_host(local, pkt, t))
                return
            out = from_host.nat.outbound(pkt, now)
            if out is None:
                self.udp_dropped += 1
                return
            pkt = out
        delays = [0.0] if self.hook is None else self.hook(pkt, self.rng)
        if not delays:
            self.udp_dropped += 1
        routed = pkt
        for extra in delays:
            self._schedule(hop + extra, lambda t: self._arrive(routed, t))

    def _arrive(self, pkt: Packet, now: float) -> None:
        owner = self._public.get(pkt.dst.ip)
        if isinstance(owner, Relay):
            self._schedule(owner.latency, lambda t: owner._udp(pkt, t))
        elif isinstance(owner, NAT):
            inner = owner.inbound(pkt, now)
            if inner is None:
                self.udp_dropped += 1
                return
            host = self._lans[owner.name].get(inner.dst.ip)
            if host is None:
                self.udp_dropped += 1
                return
            self._schedule(
                self.link_latency + host.latency, lambda t: self._to_host(host, inner, t)
            )
        elif isinstance(owner, Host):
            self._schedule(owner.latency, lambda t: self._to_host(owner, pkt, t))
        else:
            self.udp_dropped += 1  # no route (for example another LAN's private address)

    def _to_host(self, host: Host, pkt: Packet, now: float) -> None:
        sock = host.sockets.get(pkt.dst.port)
        if sock is None or host.ip != pkt.dst.ip:
            self.udp_dropped += 1
            return
        sock._deliver(pkt, now)

    # ---- the loop ----

    def _step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise SimStepLimit(f"more than {self.max_steps} steps")

    max_steps = DEFAULT_MAX_STEPS

    def run(self, duration: float, *, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        """Advance ``duration`` simulated seconds; raises SimStepLimit past ``max_steps``."""
        self.run_until(lambda: False, duration, max_steps=max_steps)

    def run_until(
        self, done: Callable[[], bool], timeout: float, *, max_steps: int = DEFAULT_MAX_STEPS
    ) -> bool:
        """Run until ``done()`` or ``timeout`` simulated seconds pass. Returns ``done()``."""
        end = self.clock.now() + timeout
        self.max_steps, self.steps = max_steps, 0
        while not done():
            self._step()
            t_pkt = self._queue[0][0] if self._queue else float("inf")
            timers = [t for a in self.agents if (t := a.get_timer()) is not None]
            t_timer = min(timers) if timers else float("inf")
            t = min(t_pkt, t_timer)
            if t > end:
                self.clock.jump_to(max(end, self.clock.now()))
                return done()
            self.clock.jump_to(max(t, self.clock.now()))
            now = self.clock.now()
            if t_pkt <= t_timer:
                while self._queue and self._queue[0][0] <= now:
                    self._step()
                    _, _, fn = heapq.heappop(self._queue)
                    fn(now)
            else:
                for a in list(self.agents):
                    if (at := a.get_timer()) is not None and at <= now:
                        a.handle_timer(now)
        return True
