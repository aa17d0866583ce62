"""The magicsock Conn core: one UDP socket shared by WireGuard, disco and STUN.

Theory of operation (docs/protocol/derp-disco-stun.md §4.4-4.6, 5, 6; tailscale magicsock.go)::

    UDP datagram in --classify--> STUN      -> netcheck (our mapped address)
                                  disco     -> open box -> Ping: Pong back, learn src
                                                           Pong: path latency
                                                           CallMeMaybe: ignored (DERP only)
                                  otherwise -> WireGuard, attributed by source address
    DERP packet in  ------------> disco     -> Ping: Pong via DERP; CallMeMaybe: ping all
                                  otherwise -> WireGuard from the DERP source node key
    send(peer, wg)  -> per-peer PeerEndpoint picks: best UDP addr, DERP region, or both

Our endpoints (local addresses + STUN results) are recomputed after each netcheck
report, re-STUN runs every 20-26 s while a session is active, and a CallMeMaybe
waits for a re-STUN when our endpoints are older than 27 s.

Performs no I/O. Driven by: datagrams from the UDP socket (``receive_datagram``),
packets from DERP (``receive_derp``), WireGuard datagrams to send (``send``),
configuration calls, and the timer. Outputs: ``datagrams_to_send``,
``derp_to_send``, ``received_wireguard``, ``next_event``, ``get_timer``.

Driving it (``meshscale.testing.magicsim.SimNode`` is a complete small driver)::

    conn = Conn(node_key, disco_private, rand=os.urandom, local_port=bound_port)
    conn.set_local_addresses(interface_ips, now); conn.set_derp_map(dm, now)
    conn.start(now)
    on netmap:        conn.set_peers([PeerConfig(key, disco, endpoints, home)], now)
    on UDP read:      conn.receive_datagram(data, src, now)       (src unmapped)
    on DERP packet:   conn.receive_derp(payload, src_key, region, now)
    on WG output:     conn.send(peer_key, datagram, now)
    on link change:   conn.note_network_change(now, local_port=...)
    after each input and at get_timer(): handle_timer(now), then flush:
        datagrams_to_send()  -> sendto on the shared socket
        derp_to_send()       -> SendPacket(dst) on that region (connect if needed)
        received_wireguard() -> the WireGuard device; for a source with peer None,
                                call note_wireguard_source(peer, addr) once it decrypts
        next_event()         -> EndpointsChanged / HomeDERPChanged / NetcheckReportReady
                                go to control (MapRequest); PeerPathChanged and
                                PingResult to status and the CLI
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshscale import disco
from meshscale.disco import AddrPort, DiscoBox, IPAddress
from meshscale.key import DiscoPrivate, DiscoPublic, NodePublic
from meshscale.magicsock.advertise import EndpointAdvertiser
from meshscale.magicsock.derpmap import DERP_MAGIC_IP, FrozenDERPMap
from meshscale.magicsock.endpoint import (
    SESSION_ACTIVE_TIMEOUT,
    BestAddrChanged,
    PeerEndpoint,
    SendCallMeMaybe,
    SendPing,
    SendPingDERP,
    UserPingDone,
)
from meshscale.magicsock.events import (
    AdvertisedEndpoint,
    EndpointsChanged,
    Event,
    HomeDERPChanged,
    NetcheckReportReady,
    PeerPathChanged,
    PingResult,
)
from meshscale.magicsock.hardnat import ProbeBudget, ProbePlanner, choose_role
from meshscale.magicsock.netcheck import Netcheck, STUNCodec

ENDPOINTS_FRESH_ENOUGH = 27.0  # seconds: older endpoints are re-STUNed before a CallMeMaybe
RESTUN_MIN = 20.0  # seconds
RESTUN_SPREAD = 6.0  # seconds: re-STUN every random 20-26 s while active
STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
# Source addresses bound to peers for WireGuard attribution, and DERP regions senders
# were last heard on; floods from fresh ports or keys must not grow these without limit.
MAX_ADDR_BINDINGS = 4096
# Events waiting for next_event(); a driver that stops reading them (a bug) must not
# make the core grow without limit, so the oldest are dropped and counted.
MAX_PENDING_EVENTS = 4096


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What control tells us about a peer (tailcfg.Node, the parts magicsock uses)."""

    node_key: NodePublic
    disco_key: DiscoPublic
    endpoints: tuple[AddrPort, ...] = ()
    home_derp: int = 0
    mapping_varies: bool | None = None  # its Hostinfo.NetInfo.MappingVariesByDestIP


@dataclass(frozen=True, slots=True)
class WireGuardSource:
    """Where a received WireGuard datagram came from.

    ``peer`` is None for a UDP source not yet tied to a peer: hand the datagram
    to WireGuard anyway and call ``Conn.note_wireguard_source`` once it decrypts.
    """

    peer: NodePublic | None
    addr: AddrPort | None  # UDP source, None if via DERP
    region: int  # DERP region, 0 if via UDP


@dataclass(frozen=True, slots=True)
class PeerStatus:
    node_key: NodePublic
    best: AddrPort | None
    latency: float | None
    trusted: bool
    home_derp: int


@dataclass(frozen=True, slots=True)
class ConnStats:
    counters: Mapping[str, int]


def looks_like_stun(b: bytes | memoryview) -> bool:
    """docs/protocol/derp-disco-stun.md §4.4 rule 1: a STUN binding message (request or
    response)."""
    return len(b) >= 20 and b[0] & 0xC0 == 0 and b[1] == 0x01 and b[4:8] == STUN_MAGIC_COOKIE


class Conn:
    """magicsock: demultiplexes the shared socket and chooses each peer's path.

    :param node_key: our WireGuard public key (sent in our Pings).
    :param disco_private: this run's disco private key.
    :param rand: ``rand(n)`` returns n random bytes (TxIDs, nonces, jitter).
    :param local_port: the UDP socket's port (advertised with local addresses).
    :param stun_codec: STUN request builder and response parser (default: meshscale.stun).
    :param https_fallback: measure regions over HTTPS when STUN gets no answer (the
        driver then serves ``https_probes_to_send`` / ``receive_https_latency``).
    :param hard_nat: the hard-NAT probe budget (magicsock.hardnat; default on, packets=0 off).
        Its extra sockets: keep ``aux_sockets()`` open, send ``aux_datagrams_to_send()`` from
        them, feed what they receive to ``receive_datagram(..., sock=id)``.
    """

    def __init__(
        self,
        node_key: NodePublic,
        disco_private: DiscoPrivate,
        *,
        rand: Callable[[int], bytes],
        local_port: int,
        stun_codec: STUNCodec | None = None,
        https_fallback: bool = False,
        hard_nat: ProbeBudget | None = None,
    ) -> None:
        self.node_key = node_key
        self._disco = disco_private
        self.disco_public = disco_private.public()
        self._rand = rand
        self.local_port = local_port
        self.netcheck = Netcheck(rand, stun_codec, https_fallback=https_fallback)
        self.derp_map = FrozenDERPMap()
        self.home_derp = 0
        self.endpoints: tuple[AdvertisedEndpoint, ...] = ()
        self._endpoints_at: float | None = None
        self._local_ips: tuple[IPAddress, ...] = ()
        self._portmapped: tuple[AddrPort, ...] = ()
        self._advertiser = EndpointAdvertiser()
        self._peers: dict[NodePublic, PeerEndpoint] = {}
        self._by_disco: dict[DiscoPublic, list[NodePublic]] = {}
        self._boxes: dict[DiscoPublic, DiscoBox] = {}
        self._addr_src: dict[AddrPort, WireGuardSource] = {}  # attribution of UDP sources
        self._sent_udp = 0
        self._sent_derp = 0
        self._last_derp_region: dict[NodePublic, int] = {}
        self._pending_cmm: dict[NodePublic, int] = {}
        self._restun_at: float | None = None
        self.control_connected = True  # home changes wait while control cannot hear them
        self._udp_out: list[tuple[bytes, AddrPort]] = []
        self._derp_out: list[tuple[int, NodePublic, bytes]] = []
        self._wg_in: list[tuple[bytes, WireGuardSource]] = []
        self._events: list[Event] = []
        self._stats: Counter[str] = Counter()
        self.hardnat = ProbePlanner(hard_nat or ProbeBudget(), rand)
        self._peer_varies: dict[NodePublic, bool | None] = {}
        self._via: dict[AddrPort, int] = {}  # destinations sent from an extra socket
        self._aux_out: list[tuple[int, bytes, AddrPort]] = []

    # ---- configuration ----

    def start(self, now: float) -> None:
        """Begin: first netcheck (if a DERP map is set) and the re-STUN timer."""
        self._restun(now, force_full=True)

    def set_derp_map(self, derp_map: FrozenDERPMap, now: float) -> None:
        changed = derp_map != self.derp_map
        self.derp_map = derp_map
        if self.home_derp and self.home_derp not in derp_map.regions:
            # docs/protocol/derp-disco-stun.md §2.2: a vanished home is forgotten; re-chosen below
            self.home_derp = 0
        if changed and self._restun_at is not None:
            self._restun(now, force_full=True)
        if not self.home_derp and self.netcheck.last_report is None:
            # A provisional home until the first netcheck picks the nearest: without it the
            # node cannot relay until STUN times out (seconds behind a UDP-blocking NAT).
            # The lowest region, drawn without the RNG so seeded runs keep their stream.
            homes = self._home_candidates()
            if homes:
                self._set_home(homes[0])

    def set_local_addresses(self, ips: Iterable[IPAddress], now: float) -> None:
        """Addresses of our interfaces, advertised with our port as EndpointLocal."""
        self._local_ips = tuple(ips)
        self._recompute_endpoints(now, fresh=False)

    def set_portmapped(self, addr: AddrPort | None, now: float) -> None:
        """The gateway's mapping of our port (portmap), advertised first as EndpointPortmapped."""
        mapped = (addr,) if addr is not None else ()
        if mapped != self._portmapped:
            self._portmapped = mapped
            self._recompute_endpoints(now, fresh=False)

    def set_peers(self, peers: Iterable[PeerConfig], now: float) -> None:
        """Install the netmap's peers. Peers with a zero disco key are left out, as the
        official client does (docs/protocol/derp-disco-stun.md §4.1): they are unreachable, even
        over DERP."""
        want = {p.node_key: p for p in peers if not p.disco_key.is_zero()}
        for key in list(self._peers):
            if key not in want:
                self._remove_peer(key)
        for key, cfg in want.items():
            ep = self._peers.get(key)
            if ep is not None and ep.disco_key != cfg.disco_key:
                self._remove_peer(key)  # new disco key = peer restarted: start afresh
                ep = None
            if ep is None:
                ep = PeerEndpoint(key, cfg.disco_key, self._rand, home_derp=cfg.home_derp)
                self._peers[key] = ep
                self._by_disco.setdefault(cfg.disco_key, []).append(key)
            ep.home_derp = cfg.home_derp
            ep.set_endpoints(cfg.endpoints, now)
            self._drain(ep, now)
            if self._peer_varies.get(key) != cfg.mapping_varies:
                self._peer_varies[key] = cfg.mapping_varies
                if ep.last_send is not None and now - ep.last_send < 5.0:
                    self._maybe_probe_hard_nat(ep, now)  # the peer's NAT kind just arrived

    def note_disco_key(self, peer: NodePublic, disco_key: DiscoPublic, now: float) -> None:
        """A peer announced its disco key inside the tunnel (TSMP 'a',
        docs/protocol/derp-disco-stun.md §4.7).

        A different key means the peer restarted: its path state starts afresh, as
        when control reports the new key. (A later netmap still carrying the old key
        would switch back; control normally catches up within seconds.)
        """
        ep = self._peers.get(peer)
        if ep is None or ep.disco_key == disco_key:
            return
        self._remove_peer(peer)
        new = PeerEndpoint(
            peer, disco_key, self._rand, home_derp=ep.home_derp, endpoints=ep.netmap_endpoints()
        )
        self._peers[peer] = new
        self._by_disco.setdefault(disco_key, []).append(peer)

    def note_network_change(self, now: float, *, local_port: int | None = None) -> None:
        """Link or route change (or a rebind): forget every path and re-STUN
        (docs/protocol/derp-disco-stun.md §5.7)."""
        if local_port is not None:
            self.local_port = local_port
        self._via = {}
        self._addr_src.clear()
        self._endpoints_at = None
        # The re-STUN starts first: the CallMeMaybes of active sessions below then wait for
        # its report and carry our new endpoints, not the ones we just lost.
        self._restun(now, force_full=True)
        for ep in self._peers.values():
            self.hardnat.forget(ep.node_key)
            ep.note_connectivity_change(now)
            self._drain(ep, now)

    def note_wireguard_source(self, peer: NodePublic, addr: AddrPort) -> None:
        """WireGuard decrypted a datagram from ``addr`` as ``peer``: attribute that source."""
        if peer in self._peers:
            self._bind(addr, peer)

    def note_send_error(self, peer: NodePublic, addr: AddrPort) -> None:
        """A send to ``addr`` failed with an error that means the path is unusable."""
        ep = self._peers.get(peer)
        if ep is not None:
            ep.note_bad_endpoint(addr)
            self._drain(ep, 0.0)

    def ping(self, peer: NodePublic, now: float) -> bytes | None:
        """Start a user ping (``tailscale ping``); the answer is a PingResult event.

        Returns the ping's ID, or None if ``peer`` is unknown.
        """
        ep = self._peers.get(peer)
        if ep is None:
            return None
        ping_id = ep.start_user_ping(now)
        self._drain(ep, now)
        return ping_id

    # ---- data path ----

    def send(self, peer: NodePublic, data: bytes, now: float) -> bool:
        """Route one outgoing WireGuard datagram. Returns False if there is no path at all."""
        ep = self._peers.get(peer)
        if ep is not None and ep.best is not None and now <= ep.trust_until:
            # Hot path: a trusted direct path; only the activity bookkeeping remains.
            ep.last_send = now
            if ep.heartbeat_at is None:
                ep.note_send(now)
            self._udp_out.append((data, ep.best))
            self._sent_udp += 1
            return True
        return self.send_batch(peer, (data,), now)

    def send_batch(self, peer: NodePublic, datagrams: Sequence[bytes], now: float) -> bool:
        """Route WireGuard datagrams for one peer; the path is chosen once for the batch.

        Returns False (and drops them) if the peer is unknown or has neither a UDP
        path nor a DERP region.
        """
        ep = self._peers.get(peer)
        if ep is None:
            self._stats["send_unknown_peer"] += len(datagrams)
            return False
        udp, region = ep.addr_for_send(now)
        ep.note_send(now)
        if ep.has_actions():
            self._drain(ep, now)
        if udp is None and region == 0:
            # A peer whose home DERP we do not know yet (its first netmap entry can precede
            # its report) is tried via our own home: that relay forwards when the peer is
            # connected there, and drops it otherwise, as if nothing had been sent.
            region = self._last_derp_region.get(peer, 0) or self.home_derp
            if region == 0:
                self._stats["send_no_udp_or_derp"] += len(datagrams)
                return False
        if udp is not None:
            self._udp_out += [(d, udp) for d in datagrams]
            self._sent_udp += len(datagrams)
        if region:
            self._derp_out += [(region, peer, d) for d in datagrams]
            self._sent_derp += len(datagrams)
        return True

    def receive_datagram(self, data: bytes, src: AddrPort, now: float, sock: int = 0) -> None:
        """A datagram from the shared UDP socket (or extra socket ``sock``, hard-NAT probing);
        ``src`` must be unmapped (IPv4 as IPv4)."""
        if sock:
            if disco.looks_like_disco(data):
                self._receive_disco(data, src, None, 0, now, sock)
            elif not looks_like_stun(data):
                self._wg_in.append((data, self._addr_src.get(src) or WireGuardSource(None, src, 0)))
            return
        # docs/protocol/derp-disco-stun.md §4.4: WireGuard's byte 1 is 0 (STUN needs 0x01) and its
        # byte 0 is 1-4 (disco starts with 0x54), so the common case is decided on two bytes.
        if len(data) >= 2 and data[1] != 0x01 and data[0] != 0x54:
            wsrc = self._addr_src.get(src)
            self._wg_in.append((data, wsrc or WireGuardSource(None, src, 0)))
            return
        self.receive_datagrams(((data, src),), now)

    def receive_datagrams(self, batch: Iterable[tuple[bytes, AddrPort]], now: float) -> None:
        """A batch of datagrams from the shared UDP socket (see ``receive_datagram``)."""
        addr_src, wg_in = self._addr_src, self._wg_in
        for data, src in batch:
            if len(data) >= 2 and data[1] != 0x01 and data[0] != 0x54:
                wsrc = addr_src.get(src)
                wg_in.append((data, wsrc or WireGuardSource(None, src, 0)))
            elif looks_like_stun(data):
                if not self.netcheck.receive_stun(data, now):
                    self._stats["drop_stun_unmatched"] += 1
                self._after_netcheck(now)
            elif disco.looks_like_disco(data):
                self._receive_disco(data, src, None, 0, now)
            else:
                wsrc = addr_src.get(src)
                wg_in.append((data, wsrc or WireGuardSource(None, src, 0)))

    def receive_derp(self, data: bytes, src: NodePublic, region: int, now: float) -> None:
        """A RecvPacket payload from DERP ``region``, sent by node key ``src``."""
        last = self._last_derp_region
        if src not in last and len(last) >= MAX_ADDR_BINDINGS:
            last.pop(next(iter(last)))  # anyone can DERP us: keep the table bounded
        last[src] = region
        self.netcheck.note_derp_frame(region, now)
        if disco.looks_like_disco(data):
            self._receive_disco(data, None, src, region, now)
            return
        self._wg_in.append((data, WireGuardSource(src, None, region)))

    def https_probes_to_send(self) -> list[int]:
        """DERP regions to time with ``GET /derp/latency-check`` (only with https_fallback)."""
        return self.netcheck.https_probes_to_send()

    def receive_https_latency(self, region: int, latency: float | None, now: float) -> None:
        """The result of one HTTPS latency probe (None if it failed)."""
        self.netcheck.receive_https_latency(region, latency, now)
        self._after_netcheck(now)

    # ---- timer ----

    def get_timer(self) -> float | None:
        times = [
            t
            for t in (self.netcheck.get_timer(), self._restun_at, self.hardnat.get_timer())
            if t is not None
        ]
        times += [t for ep in self._peers.values() if (t := ep.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if (t := self.netcheck.get_timer()) is not None and t <= now:
            self.netcheck.handle_timer(now)
            self._after_netcheck(now)
        for ep in list(self._peers.values()):
            if (t := ep.get_timer()) is not None and t <= now:
                ep.handle_timer(now)
                self._drain(ep, now)
        if (t := self.hardnat.get_timer()) is not None and t <= now:
            self.hardnat.handle_timer(now)
            self._flush_probes()
        if self._restun_at is not None and self._restun_at <= now:
            active = any(
                ep.last_send is not None and now - ep.last_send <= SESSION_ACTIVE_TIMEOUT
                for ep in self._peers.values()
            )
            self._restun_at = None
            if active:
                self._restun(now)
            else:
                self._schedule_restun(now)

    # ---- outputs ----

    def datagrams_to_send(self) -> list[tuple[bytes, AddrPort]]:
        """UDP datagrams (WireGuard, disco, STUN) to send from the shared socket."""
        self._udp_out += self.netcheck.datagrams_to_send()
        out, self._udp_out = self._udp_out, []
        if self._via:  # hard-NAT probing found these peers through an extra socket
            via, main = self._via, []
            for d, dst in out:
                if (s := via.get(dst)) is not None:
                    self._aux_out.append((s, d, dst))
                else:
                    main.append((d, dst))
            return main
        return out

    def aux_datagrams_to_send(self) -> list[tuple[int, bytes, AddrPort]]:
        """(extra socket id, datagram, destination): call after ``datagrams_to_send``."""
        out, self._aux_out = self._aux_out, []
        return out

    def aux_sockets(self) -> frozenset[int]:
        """Extra sockets (hard-NAT probing) the driver must keep open; close any others."""
        return self.hardnat.sockets()

    def derp_to_send(self) -> list[tuple[int, NodePublic, bytes]]:
        """(region, destination node key, payload) for DERP SendPacket frames."""
        out, self._derp_out = self._derp_out, []
        return out

    def received_wireguard(self) -> list[tuple[bytes, WireGuardSource]]:
        """WireGuard datagrams to hand to the WireGuard device."""
        out, self._wg_in = self._wg_in, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def peer_status(self, peer: NodePublic, now: float) -> PeerStatus | None:
        ep = self._peers.get(peer)
        if ep is None:
            return None
        return PeerStatus(peer, ep.best, ep.best_latency, ep.trusted(now), ep.home_derp)

    def statistics(self) -> ConnStats:
        counters = dict(self._stats)
        hn = self.hardnat.stats
        for name in ("attempts", "sent", "successes", "gave_up", "stopped"):
            if v := getattr(hn, name):
                counters[f"hardnat_{name}"] = v
        if self._sent_udp:
            counters["send_udp"] = self._sent_udp
        if self._sent_derp:
            counters["send_derp"] = self._sent_derp
        return ConnStats(counters)

    # ---- disco ----

    def _box(self, key: DiscoPublic) -> DiscoBox | None:
        box = self._boxes.get(key)
        if box is None:
            try:
                box = DiscoBox(self._disco, key)
            except disco.OpenError:  # a low-order key: nothing can be sealed to it
                return None
            self._boxes[key] = box
        return box

    def _send_disco_udp(self, peer: PeerEndpoint, msg: disco.Message, dst: AddrPort) -> None:
        box = self._box(peer.disco_key)
        if box is not None:
            self._udp_out.append((box.seal(msg, self._rand(disco.NONCE_LEN)), dst))
            self._stats[f"disco_tx_udp_{type(msg).__name__}"] += 1

    def _send_disco_derp(self, peer: PeerEndpoint, msg: disco.Message, region: int) -> None:
        box = self._box(peer.disco_key)
        if box is not None and region:
            payload = box.seal(msg, self._rand(disco.NONCE_LEN))
            self._derp_out.append((region, peer.node_key, payload))
            self._stats[f"disco_tx_derp_{type(msg).__name__}"] += 1

    def _receive_disco(
        self,
        data: bytes,
        src: AddrPort | None,
        derp_src: NodePublic | None,
        region: int,
        now: float,
        sock: int = 0,
    ) -> None:
        sender = disco.source(data)
        keys = self._by_disco.get(sender)
        if not keys:
            self._stats["drop_disco_unknown_sender"] += 1  # checked before decrypting (4.6)
            return
        box = self._box(sender)
        if box is None:
            self._stats["drop_disco_bad_key"] += 1
            return
        try:
            msg = box.open(data)
        except disco.OpenError:
            self._stats["drop_disco_open"] += 1
            return
        except disco.ParseError:
            self._stats["drop_disco_parse"] += 1
            return
        self._stats[f"disco_rx_{'derp' if src is None else 'udp'}_{type(msg).__name__}"] += 1
        peers = [self._peers[k] for k in keys]
        if sock and src is not None:
            self._note_aux(sock, peers, src, now)
        match msg:
            case disco.Ping():
                self._handle_ping(msg, peers, src, derp_src, region, now)
            case disco.Pong():
                for ep in peers:
                    if ep.handle_pong(msg, src, now, region):
                        if src is not None:
                            self._bind(src, ep.node_key)
                        self._drain(ep, now)
                        break
                else:
                    found = self.hardnat.note_pong(msg.tx_id, now) if src is not None else None
                    hit = next((ep for ep in peers if ep.node_key == found), None)
                    if hit is not None and src is not None:
                        hit.note_probe_success(src, now)  # a spray probe got through
                        self._drain(hit, now)
            case disco.CallMeMaybe():
                target = self._peers.get(derp_src) if derp_src is not None else None
                if src is not None or target is None or target.disco_key != sender:
                    self._stats["drop_call_me_maybe"] += 1
                    return
                target.handle_call_me_maybe(msg, now)
                self._drain(target, now)
                self._maybe_probe_hard_nat(target, now)
            case _:
                self._stats["drop_disco_unhandled"] += 1  # peer relays are not offered

    def _handle_ping(
        self,
        msg: disco.Ping,
        peers: list[PeerEndpoint],
        src: AddrPort | None,
        derp_src: NodePublic | None,
        region: int,
        now: float,
    ) -> None:
        if src is None:
            ep = self._peers.get(derp_src) if derp_src is not None else None
            if ep is None or ep not in peers:
                self._stats["drop_ping_derp_unknown"] += 1
                return
            pong = disco.Pong(msg.tx_id, AddrPort(DERP_MAGIC_IP, region))
            self._send_disco_derp(ep, pong, region)
            return
        if msg.node_key is not None:
            peers = [ep for ep in peers if ep.node_key == msg.node_key] or peers
        dup = False
        for ep in peers:
            dup = ep.note_ping_from(src, msg.tx_id, now) or dup
        if len(peers) == 1:
            self._bind(src, peers[0].node_key)
        if dup:
            self._stats["drop_ping_duplicate"] += 1
            return
        self._send_disco_udp(peers[0], disco.Pong(msg.tx_id, src), src)

    # ---- internals ----

    def _emit(self, ev: Event) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:
            self._events.pop(0)
            self._stats["events_dropped"] += 1
        self._events.append(ev)

    def _bind(self, addr: AddrPort, peer: NodePublic) -> None:
        if addr not in self._addr_src and len(self._addr_src) >= MAX_ADDR_BINDINGS:
            self._addr_src.pop(next(iter(self._addr_src)))
        self._addr_src[addr] = WireGuardSource(peer, addr, 0)

    def _drain(self, ep: PeerEndpoint, now: float) -> None:
        for action in ep.take_actions():
            match action:
                case SendPing(dst, tx_id):
                    ping = disco.Ping(tx_id, self.node_key)
                    self._send_disco_udp(ep, ping, dst)
                case SendPingDERP(region, tx_id):
                    self._send_disco_derp(ep, disco.Ping(tx_id, self.node_key), region)
                case SendCallMeMaybe(region):
                    self._queue_call_me_maybe(ep, region, now)
                    self._maybe_probe_hard_nat(ep, now)
                case UserPingDone(ping_id, latency, addr, region):
                    self._emit(PingResult(ep.node_key, ping_id, latency, addr, region))
                case BestAddrChanged(addr, latency):
                    if addr is not None:
                        self._bind(addr, ep.node_key)
                        self.hardnat.note_direct(ep.node_key, addr)
                    self._emit(PeerPathChanged(ep.node_key, addr, latency))

    # ---- hard-NAT probing (magicsock.hardnat) ----

    def _maybe_probe_hard_nat(self, ep: PeerEndpoint, now: float) -> None:
        """Discovery is running for ``ep``: start a birthday-paradox attempt if one side is
        hard and the other easy and there is no direct path yet."""
        hn = self.hardnat
        if not hn.budget.enabled or ep.best is not None or hn.running(ep.node_key):
            return
        report = self.netcheck.last_report
        ours = report.mapping_varies_by_dest_ip if report is not None else None
        role = choose_role(ours, self._peer_varies.get(ep.node_key))
        if role is not None and hn.start(ep.node_key, role, ep.candidates(), now):
            self._flush_probes()

    def _flush_probes(self) -> None:
        for p in self.hardnat.take_probes():
            ep = self._peers.get(p.peer)
            box = self._box(ep.disco_key) if ep is not None else None
            if box is None:
                continue
            data = box.seal(disco.Ping(p.tx_id, self.node_key), self._rand(disco.NONCE_LEN))
            if p.sock:
                self._aux_out.append((p.sock, data, p.dst))
            else:
                self._udp_out.append((data, p.dst))

    def _note_aux(self, sock: int, peers: list[PeerEndpoint], src: AddrPort, now: float) -> None:
        """A disco message came in on extra socket ``sock``: that socket reaches ``src``."""
        for ep in peers:
            first = src not in self._via
            if self.hardnat.note_received(sock, ep.node_key, src, now):
                self._via = self.hardnat.routes()
                if first:
                    ep.note_probe_success(src, now)  # ping it now, through that socket
                    self._drain(ep, now)
                return

    def _queue_call_me_maybe(self, ep: PeerEndpoint, region: int, now: float) -> None:
        fresh = (
            self._endpoints_at is not None and now - self._endpoints_at <= ENDPOINTS_FRESH_ENOUGH
        )
        if fresh or not self.derp_map.regions:
            self._send_call_me_maybe(ep, region)
            return
        self._pending_cmm[ep.node_key] = region
        if not self.netcheck.running:
            self._restun(now)

    def _send_call_me_maybe(self, ep: PeerEndpoint, region: int) -> None:
        eps = tuple(e.addr for e in self.endpoints)
        self._send_disco_derp(ep, disco.CallMeMaybe(eps), region)

    def _restun(self, now: float, *, force_full: bool = False) -> None:
        self._schedule_restun(now)
        if self.derp_map.regions:
            have_v6 = any(
                ip.version == 6 and not (ip.is_link_local or ip.is_loopback)
                for ip in self._local_ips
            )
            have_v4 = any(ip.version == 4 for ip in self._local_ips) or not self._local_ips
            self.netcheck.start_report(
                self.derp_map, now, have_v4=have_v4, have_v6=have_v6, force_full=force_full
            )
            self._after_netcheck(now)
        else:
            self._recompute_endpoints(now)
            self._flush_call_me_maybe()

    def _schedule_restun(self, now: float) -> None:
        jitter = int.from_bytes(self._rand(2), "big") / 65535
        self._restun_at = now + RESTUN_MIN + RESTUN_SPREAD * jitter

    def _after_netcheck(self, now: float) -> None:
        while (report := self.netcheck.next_report()) is not None:
            self._emit(NetcheckReportReady(report))
            self._recompute_endpoints(now)
            self._set_home(report.preferred_derp)
            self._flush_call_me_maybe()

    def _flush_call_me_maybe(self) -> None:
        pending, self._pending_cmm = self._pending_cmm, {}
        for key, region in pending.items():
            ep = self._peers.get(key)
            if ep is not None:
                self._send_call_me_maybe(ep, region)

    def _home_candidates(self) -> list[int]:
        """Regions that may be a home, sorted by id."""
        return sorted(
            r.region_id
            for r in self.derp_map.regions.values()
            if r.nodes and not r.no_measure_no_home
        )

    def _set_home(self, preferred: int) -> None:
        if preferred == 0:
            if self.home_derp:
                return  # no data: keep the current home (docs/protocol/derp-disco-stun.md §2.3)
            candidates = self._home_candidates()
            if not candidates:
                return
            preferred = candidates[int.from_bytes(self._rand(2), "big") % len(candidates)]
        if preferred != self.home_derp:
            if self.home_derp and not self.control_connected:
                return  # peers could not learn the move (docs/protocol/derp-disco-stun.md §2.3)
            prev, self.home_derp = self.home_derp, preferred
            self._emit(HomeDERPChanged(preferred, prev))

    def _recompute_endpoints(self, now: float, *, fresh: bool = True) -> None:
        report = self.netcheck.last_report
        eps = self._advertiser.compute(
            report.stun_endpoints if report is not None else (),
            self._local_ips,
            self.local_port,
            now,
            fresh=fresh,
            portmapped=self._portmapped,
        )
        if fresh:
            self._endpoints_at = now
        if eps != self.endpoints:
            self.endpoints = eps
            self._emit(EndpointsChanged(eps))

    def _remove_peer(self, key: NodePublic) -> None:
        ep = self._peers.pop(key)
        keys = self._by_disco[ep.disco_key]
        keys.remove(key)
        if not keys:
            self._by_disco.pop(ep.disco_key, None)
            self._boxes.pop(ep.disco_key, None)
        for addr in [a for a, w in self._addr_src.items() if w.peer == key]:
            del self._addr_src[addr]
        self._pending_cmm.pop(key, None)
        self._peer_varies.pop(key, None)
        self.hardnat.forget(key)
        self._via = self.hardnat.routes()
