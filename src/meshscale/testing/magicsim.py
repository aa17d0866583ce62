"""magicsim: magicsock Conn cores driven on SimNet, a thin driver per node plus a tiny "control".

``SimNode`` is the in-memory twin of ``meshscale.wgengine.magicbind.MagicBind``: after every input
it feeds the Conn, flushes UDP and DERP output, and handles events (home DERP
changes connect to the relay; endpoint changes go to ``SimControl``, which hands
every other node the new peer list, as a control server's map poll would).

WireGuard is faked: a datagram is ``04 00 00 00 | sender node key | payload`` so the
receiver can "decrypt" a datagram from an unknown address and attribute it, as
wireguard-go does for magicsock (docs/protocol/derp-disco-stun.md §6.2).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshscale.disco import AddrPort
from meshscale.key import DiscoPrivate, NodePrivate, NodePublic
from meshscale.magicsock import (
    Conn,
    EndpointsChanged,
    FrozenDERPMap,
    FrozenDERPNode,
    FrozenDERPRegion,
    HomeDERPChanged,
    PeerConfig,
    WireGuardSource,
)
from meshscale.testing.simnet import STUN_PORT, Host, NATType, Relay, SimNet

FAKE_WG_TYPE = b"\x04\x00\x00\x00"
WIREGUARD_PORT = 41641


def derp_map_for(relays: list[Relay]) -> FrozenDERPMap:
    """The DERP map describing the net's relays (STUN on 3478 at the relay's IP)."""
    regions = {
        r.region_id: FrozenDERPRegion(
            r.region_id,
            f"r{r.region_id}",
            f"Region {r.region_id}",
            (FrozenDERPNode(f"{r.region_id}a", r.region_id, ipv4=str(r.ip), stun_port=STUN_PORT),),
        )
        for r in relays
    }
    return FrozenDERPMap(regions)


@dataclass(slots=True)
class Received:
    payload: bytes
    peer: NodePublic | None
    via_udp: bool
    at: float


@dataclass(slots=True)
class _Flow:
    peer: NodePublic
    interval: float
    next_at: float
    seq: int = 0


class SimNode:
    """One node: a Conn core, a UDP socket on a SimNet host, DERP connections, fake WireGuard."""

    def __init__(
        self,
        net: SimNet,
        host: Host,
        name: str,
        relays: list[Relay],
        *,
        seed: int,
        port: int = WIREGUARD_PORT,
    ) -> None:
        self.net = net
        self.host = host
        self.name = name
        rng = random.Random(seed)
        self.rand: Callable[[int], bytes] = rng.randbytes
        self.node_private = NodePrivate(self.rand(32))
        self.node_key = self.node_private.public()
        self.disco_private = DiscoPrivate(self.rand(32))
        self.sock = host.bind(port)
        self.sock.on_datagram = self._on_datagram
        self.relays = {r.region_id: r for r in relays}
        self.conn = Conn(
            self.node_key, self.disco_private, rand=self.rand, local_port=port, https_fallback=True
        )
        self.control: SimControl | None = None
        self.received: list[Received] = []
        self.flows: list[_Flow] = []
        self.flow_sent: dict[NodePublic, int] = {}
        self.events: list[object] = []
        net.add_agent(self)

    # ---- setup ----

    def start(self) -> None:
        now = self.net.clock.now()
        self.conn.set_local_addresses([self.host.ip], now)
        self.conn.set_derp_map(derp_map_for(list(self.relays.values())), now)
        self.conn.start(now)
        self.flush()

    def send_wg(self, peer: NodePublic, payload: bytes) -> bool:
        ok = self.conn.send(peer, FAKE_WG_TYPE + self.node_key.raw + payload, self.net.clock.now())
        self.flush()
        return ok

    def start_flow(self, peer: NodePublic, interval: float = 0.5) -> None:
        """Send a numbered WireGuard datagram to ``peer`` every ``interval`` seconds."""
        seq = self.flow_sent.get(peer, 0)
        self.flows.append(_Flow(peer, interval, self.net.clock.now(), seq))

    def stop_flows(self) -> None:
        self.flows.clear()

    def roam(self, host: Host) -> None:
        """Move to another host (new LAN/IP): rebind there and tell the Conn."""
        self.sock.close()
        self.host = host
        self.sock = host.bind(self.sock.port)
        self.sock.on_datagram = self._on_datagram
        now = self.net.clock.now()
        self.conn.set_local_addresses([host.ip], now)
        self.conn.note_network_change(now)
        self.flush()

    # ---- agent ----

    def get_timer(self) -> float | None:
        times = [f.next_at for f in self.flows]
        if (t := self.conn.get_timer()) is not None:
            times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for f in self.flows:
            if f.next_at <= now:
                f.next_at = now + f.interval
                f.seq += 1
                self.flow_sent[f.peer] = self.flow_sent.get(f.peer, 0) + 1
                self.conn.send(
                    f.peer,
                    FAKE_WG_TYPE + self.node_key.raw + f"{self.name}#{f.seq}".encode(),
                    now,
                )
        if (t := self.conn.get_timer()) is not None and t <= now:
            self.conn.handle_timer(now)
        self.flush()

    # ---- driver ----

    def _on_datagram(self, data: bytes, src: AddrPort, now: float) -> None:
        self.conn.receive_datagram(data, src, now)
        self.flush()

    def _on_derp(self, data: bytes, src: NodePublic, region: int, now: float) -> None:
        self.conn.receive_derp(data, src, region, now)
        self.flush()

    def flush(self) -> None:
        now = self.net.clock.now()
        for data, dst in self.conn.datagrams_to_send():
            self.sock.sendto(data, dst)
        for region, dst_key, payload in self.conn.derp_to_send():
            relay = self.relays.get(region)
            if relay is None:
                continue
            if not relay.connected(self.node_key):
                relay.connect(self.node_key, self.host, self._on_derp)
            relay.send(self.host, self.node_key, dst_key, payload)
        for region in self.conn.https_probes_to_send():
            self._https_probe(region)
        for data, source in self.conn.received_wireguard():
            self._deliver_wg(data, source, now)
        while (ev := self.conn.next_event()) is not None:
            self.events.append(ev)
            match ev:
                case HomeDERPChanged(region, _):
                    relay = self.relays.get(region)
                    if relay is not None:
                        relay.connect(self.node_key, self.host, self._on_derp)
                    if self.control is not None:
                        self.control.publish(self)
                case EndpointsChanged():
                    if self.control is not None:
                        self.control.publish(self)
                case _:
                    pass

    def _https_probe(self, region: int) -> None:
        """Time a TLS request to the region: one TCP round trip, never blocked by NAT."""
        relay = self.relays.get(region)
        if relay is None:
            self.conn.receive_https_latency(region, None, self.net.clock.now())
            return
        rtt = 2 * (self.net.link_latency + self.host.latency + relay.latency)

        def done(now: float) -> None:
            self.conn.receive_https_latency(region, rtt, now)
            self.flush()

        self.net._schedule(rtt, done)

    def _deliver_wg(self, data: bytes, source: WireGuardSource, now: float) -> None:
        if len(data) < 36 or data[:4] != FAKE_WG_TYPE:
            return
        sender = NodePublic(data[4:36])
        peer = source.peer
        if peer is None and source.addr is not None:
            # "Decryption" identified the sender: attribute the source address.
            self.conn.note_wireguard_source(sender, source.addr)
            peer = sender
        if peer != sender:
            return  # attributed to the wrong peer: WireGuard would fail to decrypt
        self.received.append(Received(data[36:], peer, source.addr is not None, now))

    # ---- queries ----

    def direct_to(self, peer: NodePublic) -> bool:
        st = self.conn.peer_status(peer, self.net.clock.now())
        return st is not None and st.best is not None and st.trusted

    def expected_from(self, sender: SimNode) -> set[bytes]:
        """Payloads ``sender``'s flows have sent to us so far."""
        n = sender.flow_sent.get(self.node_key, 0)
        return {f"{sender.name}#{i}".encode() for i in range(1, n + 1)}

    def payloads_from(self, sender: SimNode) -> set[bytes]:
        return {r.payload for r in self.received_from(sender.node_key)}

    def received_from(self, peer: NodePublic, *, since: float = 0.0) -> list[Received]:
        return [r for r in self.received if r.peer == peer and r.at >= since]


@dataclass(slots=True)
class SimControl:
    """A minimal control plane: every node learns every other node's key, disco key,
    home DERP and advertised endpoints (unless ``share_endpoints`` is off, or the
    node's key is in ``hidden``)."""

    share_endpoints: bool = True
    nodes: list[SimNode] = field(default_factory=list)
    hidden: set[NodePublic] = field(default_factory=set)

    def add(self, node: SimNode) -> None:
        self.nodes.append(node)
        node.control = self

    def publish(self, changed: SimNode | None = None) -> None:
        now = changed.net.clock.now() if changed else 0.0
        for node in self.nodes:
            peers = [
                PeerConfig(
                    other.node_key,
                    other.disco_private.public(),
                    tuple(e.addr for e in other.conn.endpoints)
                    if self.share_endpoints and other.node_key not in self.hidden
                    else (),
                    other.conn.home_derp,
                )
                for other in self.nodes
                if other is not node
            ]
            node.conn.set_peers(peers, now if changed else node.net.clock.now())
            if node is not changed:
                node.flush()


NAT_KINDS = {
    "easy": NATType.EASY,
    "hard": NATType.HARD,
    "restricted": NATType.RESTRICTED,
    "cone": NATType.FULL_CONE,
    "blocked": NATType.UDP_BLOCKED,
}


def add_node(
    net: SimNet,
    kind: str,
    index: int,
    relays: list[Relay],
    control: SimControl | None = None,
    *,
    seed: int | None = None,
    latency: float = 0.0,
) -> SimNode:
    """A node on a fresh host: ``kind`` is "public" or a NAT_KINDS key ("easy", "hard", ...).

    Public hosts get 203.0.113.<10+index>; NATed ones sit at 10.<index>.0.2 behind a
    NAT whose public address is 198.18.0.<index+1>.
    """
    if kind == "public":
        host = net.add_host(f"h{index}", f"203.0.113.{10 + index}", latency=latency)
    else:
        nat = net.add_nat(f"nat{index}", f"198.18.0.{index + 1}", NAT_KINDS[kind])
        host = net.add_host(f"h{index}", f"10.{index}.0.2", nat=nat, latency=latency)
    node = SimNode(net, host, f"n{index}-{kind}", relays, seed=index if seed is None else seed)
    if control is not None:
        control.add(node)
    return node
