"""Conn core: socket demultiplexing and the disco acceptance rules
(docs/protocol/derp-disco-stun.md §4.4-4.6, 5.3, 6.2)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale import disco, stun
from meshscale.disco import AddrPort
from meshscale.key import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic
from meshscale.magicsock import (
    Conn,
    EndpointsChanged,
    FrozenDERPMap,
    FrozenDERPNode,
    FrozenDERPRegion,
    PeerConfig,
    PeerPathChanged,
    PingResult,
    WireGuardSource,
    looks_like_stun,
)
from meshscale.magicsock.conn import ENDPOINTS_FRESH_ENOUGH

A_ADDR = AddrPort.parse("10.0.0.1:41641")
B_ADDR = AddrPort.parse("10.0.0.2:41641")
WG = b"\x04\x00\x00\x00" + bytes(28)


def rand(seed: int):
    c = itertools.count(seed * 1_000_000)
    return lambda n: next(c).to_bytes(8, "big").rjust(n, b"\x00")[-n:]


class Node:
    def __init__(self, seed: int, addr: AddrPort) -> None:
        self.addr = addr
        self.node = NodePrivate(bytes([seed]) * 32)
        self.disco = DiscoPrivate(bytes([seed + 100]) * 32)
        self.conn = Conn(self.node.public(), self.disco, rand=rand(seed), local_port=addr.port)
        self.conn.set_local_addresses([addr.ip], 0.0)
        self.conn.start(0.0)

    def cfg(self, home: int = 900) -> PeerConfig:
        return PeerConfig(self.node.public(), self.disco.public(), (self.addr,), home)


@pytest.fixture
def pair() -> tuple[Node, Node]:
    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    a.conn.set_peers([b.cfg()], 0.0)
    b.conn.set_peers([a.cfg()], 0.0)
    return a, b


def deliver_udp(src: Node, dst: Node, now: float) -> int:
    n = 0
    for data, to in src.conn.datagrams_to_send():
        if to == dst.addr:
            dst.conn.receive_datagram(data, src.addr, now)
            n += 1
    return n


def deliver_derp(src: Node, dst: Node, now: float) -> list[int]:
    regions = []
    for region, key, data in src.conn.derp_to_send():
        if key == dst.node.public():
            dst.conn.receive_derp(data, src.node.public(), region, now)
            regions.append(region)
    return regions


def open_all(dst: Node, src: Node, out: list[tuple[bytes, AddrPort]]) -> list[disco.Message]:
    box = disco.DiscoBox(dst.disco, src.disco.public())
    return [box.open(d) for d, _ in out if disco.looks_like_disco(d)]


def test_first_send_goes_via_derp_with_pings_and_call_me_maybe(pair) -> None:
    a, b = pair
    assert a.conn.send(b.node.public(), WG, 1.0)
    out = a.conn.datagrams_to_send()
    msgs = open_all(b, a, out)
    assert [type(m) for m in msgs] == [disco.Ping]
    assert msgs[0].node_key == a.node.public()  # our node key rides in every Ping
    derp = a.conn.derp_to_send()
    assert (900, b.node.public(), WG) in derp
    cmm = [disco.DiscoBox(b.disco, a.disco.public()).open(d) for _, _, d in derp if d != WG]
    assert cmm == [disco.CallMeMaybe((A_ADDR,))]


def test_ping_pong_makes_direct_path(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    assert deliver_udp(a, b, 1.01) == 1  # ping
    out = b.conn.datagrams_to_send()
    (pong,) = open_all(a, b, out)
    assert isinstance(pong, disco.Pong)
    assert pong.src == A_ADDR
    for data, _ in out:
        a.conn.receive_datagram(data, B_ADDR, 1.02)
    st = a.conn.peer_status(b.node.public(), 1.02)
    assert st is not None
    assert st.best == B_ADDR
    assert st.trusted
    assert st.latency == pytest.approx(0.02)
    events = []
    while (ev := a.conn.next_event()) is not None:
        events.append(ev)
    assert PeerPathChanged(b.node.public(), B_ADDR, pytest.approx(0.02)) in events
    # Trusted: the next WireGuard packet goes only direct.
    a.conn.derp_to_send()
    a.conn.send(b.node.public(), WG, 1.5)
    assert a.conn.datagrams_to_send() == [(WG, B_ADDR)]
    assert a.conn.derp_to_send() == []


def test_duplicate_ping_is_answered_once(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    (ping, _), *_ = [o for o in a.conn.datagrams_to_send() if disco.looks_like_disco(o[0])]
    b.conn.receive_datagram(ping, A_ADDR, 1.01)
    b.conn.receive_datagram(ping, A_ADDR, 1.02)
    assert len(b.conn.datagrams_to_send()) == 1
    assert b.conn.statistics().counters["drop_ping_duplicate"] == 1


def test_ping_from_new_address_becomes_candidate_and_binds_wireguard(pair) -> None:
    a, b = pair
    roamed = AddrPort.parse("198.18.0.9:3333")
    a.conn.send(b.node.public(), WG, 1.0)
    (ping, _), *_ = [o for o in a.conn.datagrams_to_send() if disco.looks_like_disco(o[0])]
    b.conn.receive_datagram(ping, roamed, 1.01)
    assert [to for _, to in b.conn.datagrams_to_send()] == [roamed]  # pong to the source
    b.conn.receive_datagram(WG, roamed, 1.02)
    assert b.conn.received_wireguard() == [(WG, WireGuardSource(a.node.public(), roamed, 0))]
    b.conn.send(a.node.public(), WG, 1.1)
    pinged = {to for d, to in b.conn.datagrams_to_send() if disco.looks_like_disco(d)}
    assert pinged == {A_ADDR, roamed}


def test_ping_via_derp_is_answered_via_derp_with_magic_address(pair) -> None:
    a, b = pair
    box = disco.DiscoBox(a.disco, b.disco.public())
    ping = box.seal(disco.Ping(b"t" * 12, a.node.public()), bytes(24))
    b.conn.receive_derp(ping, a.node.public(), 901, 1.0)
    ((region, key, data),) = b.conn.derp_to_send()
    assert (region, key) == (901, a.node.public())
    assert box.open(data) == disco.Pong(
        b"t" * 12, AddrPort(ipaddress.ip_address("127.3.3.40"), 901)
    )


def test_call_me_maybe_only_via_derp_from_matching_peer(pair) -> None:
    a, b = pair
    cmm = disco.DiscoBox(a.disco, b.disco.public()).seal(
        disco.CallMeMaybe((AddrPort.parse("198.18.0.1:7777"),)), bytes(24)
    )
    b.conn.receive_datagram(cmm, A_ADDR, 1.0)  # over UDP: ignored
    stranger = NodePrivate(bytes([9]) * 32).public()
    b.conn.receive_derp(cmm, stranger, 900, 1.0)  # wrong DERP sender: ignored
    assert b.conn.datagrams_to_send() == []
    assert b.conn.statistics().counters["drop_call_me_maybe"] == 2
    b.conn.receive_derp(cmm, a.node.public(), 900, 1.0)
    pinged = {to for _, to in b.conn.datagrams_to_send()}
    assert pinged == {A_ADDR, AddrPort.parse("198.18.0.1:7777")}


def test_unknown_sender_is_dropped_before_decrypting(pair) -> None:
    _, b = pair
    other = DiscoPrivate(bytes([77]) * 32)
    pkt = disco.seal(other, b.disco.public(), disco.Ping(bytes(12)), bytes(24))
    b.conn.receive_datagram(pkt, A_ADDR, 1.0)
    assert b.conn.statistics().counters == {"drop_disco_unknown_sender": 1}


def test_tampered_disco_is_dropped(pair) -> None:
    a, b = pair
    pkt = bytearray(disco.seal(a.disco, b.disco.public(), disco.Ping(bytes(12)), bytes(24)))
    pkt[-1] ^= 0xFF
    b.conn.receive_datagram(bytes(pkt), A_ADDR, 1.0)
    assert b.conn.statistics().counters["drop_disco_open"] == 1
    assert b.conn.datagrams_to_send() == []


def test_wireguard_from_unknown_address_is_delivered_unattributed(pair) -> None:
    _, b = pair
    src = AddrPort.parse("203.0.113.5:999")
    b.conn.receive_datagram(WG, src, 1.0)
    assert b.conn.received_wireguard() == [(WG, WireGuardSource(None, src, 0))]


def test_stun_classification() -> None:
    req = stun.request(bytes(12))
    assert looks_like_stun(req)
    assert looks_like_stun(stun.response(bytes(12), ipaddress.ip_address("1.2.3.4"), 5))
    assert not looks_like_stun(WG)
    assert not looks_like_stun(disco.MAGIC + bytes(60))


def test_send_without_any_path() -> None:
    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    a.conn.set_peers([PeerConfig(b.node.public(), b.disco.public())], 0.0)
    assert not a.conn.send(b.node.public(), WG, 1.0)
    assert not a.conn.send(NodePrivate(bytes([5]) * 32).public(), WG, 1.0)
    # Once the peer has reached us over DERP, we answer on that region.
    a.conn.receive_derp(WG, b.node.public(), 905, 1.1)
    assert a.conn.send(b.node.public(), WG, 1.2)
    assert (905, b.node.public(), WG) in a.conn.derp_to_send()


def test_new_disco_key_resets_the_path(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    deliver_udp(a, b, 1.01)
    deliver_udp(b, a, 1.02)
    assert a.conn.peer_status(b.node.public(), 1.02).best == B_ADDR
    new = PeerConfig(b.node.public(), DiscoPrivate(bytes([55]) * 32).public(), (B_ADDR,), 900)
    a.conn.set_peers([new], 1.1)
    assert a.conn.peer_status(b.node.public(), 1.1).best is None


def test_call_me_maybe_waits_for_fresh_endpoints() -> None:
    dm = FrozenDERPMap(
        {900: FrozenDERPRegion(900, nodes=(FrozenDERPNode("900a", 900, ipv4="192.0.2.1"),))}
    )
    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    a.conn.set_derp_map(dm, 0.0)
    a.conn.set_peers([b.cfg()], 0.0)
    a.conn.handle_timer(3.0)  # the first report times out without STUN answers
    t = 3.0 + ENDPOINTS_FRESH_ENOUGH + 1.0
    a.conn.send(b.node.public(), WG, t)
    # Stale endpoints: a re-STUN starts, and the CallMeMaybe waits for it.
    assert a.conn.netcheck.running
    assert [d for _, _, d in a.conn.derp_to_send()] == [WG]
    a.conn.handle_timer(t + 0.0)
    requests = [(d, to) for d, to in a.conn.datagrams_to_send() if looks_like_stun(d)]
    assert requests
    txid = stun.parse_request(requests[-1][0])  # earlier ones belong to the first report
    mapped = AddrPort.parse("198.18.0.1:4242")
    a.conn.receive_datagram(stun.response(txid, mapped.ip, mapped.port), requests[-1][1], t + 0.02)
    (cmm,) = [d for _, _, d in a.conn.derp_to_send()]
    msg = disco.DiscoBox(b.disco, a.disco.public()).open(cmm)
    assert msg == disco.CallMeMaybe((mapped, A_ADDR))
    events = []
    while (ev := a.conn.next_event()) is not None:
        events.append(ev)
    assert any(isinstance(e, EndpointsChanged) and e.endpoints[0].addr == mapped for e in events)


def test_network_change_forgets_paths(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    deliver_udp(a, b, 1.01)
    deliver_udp(b, a, 1.02)
    assert a.conn.peer_status(b.node.public(), 1.03).trusted
    a.conn.note_network_change(1.1)
    st = a.conn.peer_status(b.node.public(), 1.1)
    assert st is not None
    assert st.best is None


def _stun_round(node: Node, now: float, mapped: AddrPort) -> None:
    node.conn.handle_timer(now)
    reqs = [(d, to) for d, to in node.conn.datagrams_to_send() if looks_like_stun(d)]
    txid = stun.parse_request(reqs[-1][0])
    node.conn.receive_datagram(stun.response(txid, mapped.ip, mapped.port), reqs[-1][1], now)


def test_recent_endpoints_stay_advertised_for_310s() -> None:
    dm = FrozenDERPMap(
        {900: FrozenDERPRegion(900, nodes=(FrozenDERPNode("900a", 900, ipv4="192.0.2.1"),))}
    )
    a = Node(1, A_ADDR)
    a.conn.set_derp_map(dm, 0.0)
    first, second = AddrPort.parse("198.18.0.1:1000"), AddrPort.parse("198.18.0.1:2000")
    _stun_round(a, 0.0, first)
    a.conn.note_network_change(10.0)  # forces a new report
    _stun_round(a, 10.0, second)
    addrs = [e.addr for e in a.conn.endpoints]
    assert addrs == [second, A_ADDR, first]  # fresh first, the cached one last
    a.conn.note_network_change(320.0)
    _stun_round(a, 320.0, second)
    assert [e.addr for e in a.conn.endpoints] == [second, A_ADDR]


def test_home_does_not_move_while_control_is_unreachable() -> None:
    a = Node(1, A_ADDR)
    a.conn._set_home(900)
    a.conn.control_connected = False
    a.conn._set_home(901)
    assert a.conn.home_derp == 900
    a.conn.control_connected = True
    a.conn._set_home(901)
    assert a.conn.home_derp == 901


def test_derp_map_from_tailcfg() -> None:
    from meshscale import tailcfg

    m = tailcfg.DERPMap(
        HomeParams=tailcfg.DERPHomeParams(RegionScore={900: 2.0}),
        Regions={
            900: tailcfg.DERPRegion(
                RegionID=900,
                RegionCode="x",
                NoMeasureNoHome=True,
                Nodes=[tailcfg.DERPNode(Name="900a", RegionID=900, IPv4="192.0.2.1")],
            )
        },
    )
    dm = FrozenDERPMap.from_tailcfg(m)
    assert dm.region_score == {900: 2.0}
    assert dm.regions[900].no_measure_no_home
    assert dm.regions[900].nodes == (FrozenDERPNode("900a", 900, ipv4="192.0.2.1"),)


def test_low_order_disco_key_peer_is_harmless() -> None:
    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    low_order = DiscoPublic(bytes([1]) + bytes(31))  # the point of order 1: not zero
    bad = PeerConfig(b.node.public(), low_order, (B_ADDR,), 900)
    a.conn.set_peers([bad], 0.0)
    assert a.conn.send(b.node.public(), WG, 1.0)  # data still goes via DERP
    assert [d for d, _ in a.conn.datagrams_to_send() if disco.looks_like_disco(d)] == []
    a.conn.receive_datagram(disco.MAGIC + low_order.raw + bytes(60), B_ADDR, 1.1)
    assert a.conn.statistics().counters["drop_disco_bad_key"] == 1


def test_batches(pair) -> None:
    a, b = pair
    assert a.conn.send_batch(b.node.public(), [WG, WG + b"1"], 1.0)
    derp = [d for _, key, d in a.conn.derp_to_send() if d.startswith(WG)]
    assert derp == [WG, WG + b"1"]
    deliver_udp(a, b, 1.01)
    pongs = b.conn.datagrams_to_send()
    src = AddrPort.parse("203.0.113.77:1")
    a.conn.receive_datagrams([(d, B_ADDR) for d, _ in pongs] + [(WG, B_ADDR), (WG, src)], 1.02)
    assert a.conn.received_wireguard() == [
        (WG, WireGuardSource(b.node.public(), B_ADDR, 0)),
        (WG, WireGuardSource(None, src, 0)),
    ]
    assert a.conn.send_batch(b.node.public(), [WG] * 3, 1.1)
    assert a.conn.datagrams_to_send() == [(WG, B_ADDR)] * 3
    assert a.conn.statistics().counters["send_udp"] == 3
    assert not a.conn.send_batch(NodePrivate(bytes([8]) * 32).public(), [WG] * 2, 1.2)
    assert a.conn.statistics().counters["send_unknown_peer"] == 2


def test_local_endpoint_rules() -> None:
    a = Node(1, A_ADDR)
    lo, ll = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("fe80::1")
    a.conn.set_local_addresses([lo, ll, A_ADDR.ip], 0.0)
    assert [e.addr for e in a.conn.endpoints] == [A_ADDR]
    a.conn.set_local_addresses([lo, ll], 0.0)
    assert [e.addr for e in a.conn.endpoints] == [AddrPort(lo, 41641), A_ADDR]  # A_ADDR cached


def test_vanished_home_region_is_rechosen() -> None:
    r900 = FrozenDERPRegion(900, nodes=(FrozenDERPNode("900a", 900, ipv4="192.0.2.1"),))
    r901 = FrozenDERPRegion(901, nodes=(FrozenDERPNode("901a", 901, ipv4="192.0.2.2"),))
    a = Node(1, A_ADDR)
    a.conn.set_derp_map(FrozenDERPMap({900: r900}), 0.0)
    a.conn.handle_timer(3.0)  # no STUN answers: a pseudo-random home among {900}
    assert a.conn.home_derp == 900
    a.conn.set_derp_map(FrozenDERPMap({901: r901}), 10.0)
    assert a.conn.home_derp == 0
    a.conn.handle_timer(13.0)
    assert a.conn.home_derp == 901


@pytest.mark.slow
@given(st.binary(max_size=200), st.integers(0, 2))
def test_garbage_never_raises(data: bytes, where: int) -> None:
    import nacl.public

    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    a.conn.set_peers([b.cfg()], 0.0)
    box = nacl.public.Box(
        nacl.public.PrivateKey(b.disco.raw), nacl.public.PublicKey(a.disco.public().raw)
    )
    # Random bytes, random bytes behind the magic, and a valid box around random plaintext.
    sealed = disco.MAGIC + b.disco.public().raw + bytes(box.encrypt(data, bytes(24)))
    for payload in (data, disco.MAGIC + b.disco.public().raw + data, sealed):
        if where == 0:
            a.conn.receive_datagram(payload, B_ADDR, 1.0)
        elif where == 1:
            a.conn.receive_derp(payload, b.node.public(), 900, 1.0)
        else:
            a.conn.receive_datagrams([(payload, B_ADDR)], 1.0)


def _events(node: Node) -> list:
    out = []
    while (ev := node.conn.next_event()) is not None:
        out.append(ev)
    return out


def test_user_ping_via_derp_and_all_candidates(pair) -> None:
    a, b = pair
    ping_id = a.conn.ping(b.node.public(), 1.0)
    assert ping_id is not None
    udp = a.conn.datagrams_to_send()
    assert [to for _, to in udp] == [B_ADDR]  # every candidate, no rate limit
    deliver_derp(a, b, 1.05)  # b answers the DERP copy first
    ((region, _, pong),) = b.conn.derp_to_send()
    a.conn.receive_derp(pong, b.node.public(), region, 1.1)
    results = [e for e in _events(a) if isinstance(e, PingResult)]
    assert results == [PingResult(b.node.public(), ping_id, pytest.approx(0.1), None, 900)]
    # The UDP answer arriving later still teaches the path but is not a second result.
    for data, _ in udp:
        b.conn.receive_datagram(data, A_ADDR, 1.11)
    deliver_udp(b, a, 1.12)
    assert not [e for e in _events(a) if isinstance(e, PingResult)]
    assert a.conn.peer_status(b.node.public(), 1.12).best == B_ADDR


def test_user_ping_on_trusted_path_and_timeout(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    deliver_udp(a, b, 1.01)
    deliver_udp(b, a, 1.02)
    a.conn.derp_to_send()
    ping_id = a.conn.ping(b.node.public(), 2.0)
    assert a.conn.derp_to_send() == []  # trusted: no DERP copy
    deliver_udp(a, b, 2.01)
    deliver_udp(b, a, 2.02)
    (res,) = [e for e in _events(a) if isinstance(e, PingResult)]
    assert (res.ping_id, res.addr, res.region) == (ping_id, B_ADDR, 0)
    assert res.latency == pytest.approx(0.02)
    lost = a.conn.ping(b.node.public(), 3.0)
    a.conn.datagrams_to_send()
    a.conn.handle_timer(8.0)
    (res,) = [e for e in _events(a) if isinstance(e, PingResult)]
    assert (res.ping_id, res.latency) == (lost, None)


def test_user_ping_without_any_path() -> None:
    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    assert a.conn.ping(b.node.public(), 1.0) is None
    a.conn.set_peers([PeerConfig(b.node.public(), b.disco.public())], 0.0)
    ping_id = a.conn.ping(b.node.public(), 1.0)
    (res,) = [e for e in _events(a) if isinstance(e, PingResult)]
    assert (res.ping_id, res.latency) == (ping_id, None)


def test_tables_fed_by_strangers_are_bounded(pair) -> None:
    from meshscale.magicsock.conn import MAX_ADDR_BINDINGS

    a, _ = pair
    for i in range(MAX_ADDR_BINDINGS + 50):
        key = NodePublic(i.to_bytes(4, "big") + bytes(28))
        a.conn.receive_derp(WG, key, 900, 1.0)
    assert len(a.conn._last_derp_region) == MAX_ADDR_BINDINGS


def test_peer_removal_and_unknowns(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    deliver_udp(a, b, 1.01)
    deliver_udp(b, a, 1.02)
    a.conn.set_peers([], 2.0)
    assert a.conn.peer_status(b.node.public(), 2.0) is None
    # Its address no longer attributes WireGuard datagrams; its disco is unknown now.
    a.conn.receive_datagram(WG, B_ADDR, 2.1)
    assert a.conn.received_wireguard() == [(WG, WireGuardSource(None, B_ADDR, 0))]
    a.conn.note_wireguard_source(b.node.public(), B_ADDR)  # not a peer: ignored
    a.conn.receive_datagram(WG, B_ADDR, 2.2)
    assert a.conn.received_wireguard()[0][1].peer is None
    a.conn.note_send_error(b.node.public(), B_ADDR)  # unknown peer: no-op


def test_send_error_drops_the_path(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    deliver_udp(a, b, 1.01)
    deliver_udp(b, a, 1.02)
    a.conn.note_send_error(b.node.public(), B_ADDR)
    assert a.conn.peer_status(b.node.public(), 1.03).best is None


def test_rebind_changes_advertised_port(pair) -> None:
    a, _ = pair
    a.conn.note_network_change(1.0, local_port=5555)
    assert AddrPort(A_ADDR.ip, 5555) in [e.addr for e in a.conn.endpoints]


def test_ping_over_derp_from_a_stranger_is_ignored(pair) -> None:
    a, b = pair
    ping = disco.DiscoBox(a.disco, b.disco.public()).seal(disco.Ping(b"t" * 12), bytes(24))
    stranger = NodePrivate(bytes([9]) * 32).public()
    b.conn.receive_derp(ping, stranger, 900, 1.0)
    assert b.conn.derp_to_send() == []
    assert b.conn.statistics().counters["drop_ping_derp_unknown"] == 1


def test_relay_messages_are_counted_and_ignored(pair) -> None:
    a, b = pair
    msg = disco.BindUDPRelayEndpointChallenge(1, 2, a.disco.public())
    b.conn.receive_datagram(disco.seal(a.disco, b.disco.public(), msg, bytes(24)), A_ADDR, 1.0)
    assert b.conn.statistics().counters["drop_disco_unhandled"] == 1


def test_heartbeats_resume_on_the_hot_path_after_idle(pair) -> None:
    a, b = pair
    a.conn.send(b.node.public(), WG, 1.0)
    deliver_udp(a, b, 1.01)
    deliver_udp(b, a, 1.02)
    ep = a.conn._peers[b.node.public()]
    ep.heartbeat_at = None  # as after a 45 s idle stop, but trust still fresh
    assert a.conn.send(b.node.public(), WG, 1.5)
    assert ep.heartbeat_at is not None


def test_two_peers_sharing_a_disco_key() -> None:
    a = Node(1, A_ADDR)
    b, c = Node(2, B_ADDR), Node(3, AddrPort.parse("10.0.0.3:41641"))
    c.disco = b.disco  # upstream allows N node keys per disco key
    a.conn.set_peers([b.cfg(), c.cfg()], 0.0)
    box = disco.DiscoBox(b.disco, a.disco.public())
    src = AddrPort.parse("198.18.0.7:1")
    # Without a node key the source becomes a candidate of both, but binds to neither.
    a.conn.receive_datagram(box.seal(disco.Ping(b"1" * 12), bytes(24)), src, 1.0)
    a.conn.receive_datagram(WG, src, 1.0)
    assert a.conn.received_wireguard()[-1][1].peer is None
    # With c's node key it binds to c only.
    a.conn.receive_datagram(box.seal(disco.Ping(b"2" * 12, c.node.public()), bytes(24)), src, 1.1)
    a.conn.receive_datagram(WG, src, 1.1)
    assert a.conn.received_wireguard()[-1][1].peer == c.node.public()
    # c's pong is matched by TxID across both peers sharing the key.
    a.conn.send(c.node.public(), WG, 2.0)
    tx_to_c = [d for d, to in a.conn.datagrams_to_send() if to == c.addr]
    (ping,) = tx_to_c
    msg = disco.DiscoBox(c.disco, a.disco.public()).open(ping)
    pong = box.seal(disco.Pong(msg.tx_id, A_ADDR), bytes(24))
    a.conn.receive_datagram(pong, c.addr, 2.01)
    assert a.conn.peer_status(c.node.public(), 2.01).best == c.addr
    assert a.conn.peer_status(b.node.public(), 2.01).best is None
    # Removing one keeps the shared key (and its box) for the other.
    a.conn.set_peers([b.cfg()], 3.0)
    a.conn.receive_datagram(box.seal(disco.Ping(b"3" * 12), bytes(24)), src, 3.0)
    assert a.conn.datagrams_to_send()  # still answered


def test_attribution_table_is_bounded(pair) -> None:
    from meshscale.magicsock.conn import MAX_ADDR_BINDINGS

    a, b = pair
    for port in range(MAX_ADDR_BINDINGS + 10):
        a.conn.note_wireguard_source(b.node.public(), AddrPort(A_ADDR.ip, port))
    assert len(a.conn._addr_src) == MAX_ADDR_BINDINGS
    a.conn.receive_datagram(WG, AddrPort(A_ADDR.ip, 0), 1.0)  # the oldest was evicted
    assert a.conn.received_wireguard()[0][1].peer is None


def test_pending_call_me_maybe_for_a_removed_peer_is_dropped() -> None:
    dm = FrozenDERPMap(
        {900: FrozenDERPRegion(900, nodes=(FrozenDERPNode("900a", 900, ipv4="192.0.2.1"),))}
    )
    a, b, c = Node(1, A_ADDR), Node(2, B_ADDR), Node(3, AddrPort.parse("10.0.0.3:41641"))
    a.conn.set_derp_map(dm, 0.0)
    a.conn.set_peers([b.cfg(), c.cfg()], 0.0)
    a.conn.handle_timer(3.0)
    t = 40.0
    a.conn.send(b.node.public(), WG, t)  # stale endpoints: CMM waits, netcheck starts
    a.conn.send(c.node.public(), WG, t)  # netcheck already running: just queued
    a.conn._pending_cmm[NodePrivate(bytes([7]) * 32).public()] = 900  # gone meanwhile
    a.conn.derp_to_send()
    a.conn.handle_timer(t + 3.0)  # report ends (no answers): CMMs flush
    cmms = [k for _, k, d in a.conn.derp_to_send() if disco.looks_like_disco(d)]
    assert sorted(k.raw for k in cmms) == sorted([b.node.public().raw, c.node.public().raw])


def test_no_home_candidates() -> None:
    a = Node(1, A_ADDR)
    dm = FrozenDERPMap(
        {
            900: FrozenDERPRegion(
                900, nodes=(FrozenDERPNode("x", 900, ipv4="192.0.2.1"),), no_measure_no_home=True
            )
        }
    )
    a.conn.set_derp_map(dm, 0.0)
    a.conn.handle_timer(3.0)
    assert a.conn.home_derp == 0


def test_disco_key_announced_in_the_tunnel(pair) -> None:
    from meshscale.packet.tsmp import tsmp_disco_advertisement, tsmp_message

    a, b = pair
    new = DiscoPrivate(bytes([66]) * 32)
    pkt = tsmp_disco_advertisement("100.64.0.2", "100.64.0.1", new.public().raw)
    msg = tsmp_message(pkt)
    assert msg is not None
    assert msg.disco_key == new.public().raw
    a.conn.note_disco_key(b.node.public(), DiscoPublic(msg.disco_key), 1.0)
    a.conn.note_disco_key(b.node.public(), DiscoPublic(msg.disco_key), 1.0)  # same: no-op
    a.conn.note_disco_key(NodePrivate(bytes([9]) * 32).public(), new.public(), 1.0)  # unknown
    # The old key is forgotten; the new one is answered.
    old_ping = disco.seal(b.disco, a.disco.public(), disco.Ping(b"o" * 12), bytes(24))
    a.conn.receive_datagram(old_ping, B_ADDR, 1.1)
    assert a.conn.datagrams_to_send() == []
    new_ping = disco.seal(new, a.disco.public(), disco.Ping(b"n" * 12), bytes(24))
    a.conn.receive_datagram(new_ping, B_ADDR, 1.2)
    ((pong, to),) = a.conn.datagrams_to_send()
    assert to == B_ADDR
    assert disco.open_packet(new, pong)[1] == disco.Pong(b"n" * 12, B_ADDR)
    # Netmap endpoints survive the switch.
    a.conn.send(b.node.public(), WG, 2.0)
    assert B_ADDR in {to for d, to in a.conn.datagrams_to_send() if disco.looks_like_disco(d)}


def test_peer_with_zero_disco_key_is_left_out() -> None:
    a, b = Node(1, A_ADDR), Node(2, B_ADDR)
    a.conn.set_peers([PeerConfig(b.node.public(), DiscoPublic(bytes(32)), (B_ADDR,), 900)], 0.0)
    assert a.conn.peer_status(b.node.public(), 0.0) is None
    assert not a.conn.send(b.node.public(), WG, 1.0)


def test_https_fallback_through_conn() -> None:
    dm = FrozenDERPMap(
        {
            900: FrozenDERPRegion(900, nodes=(FrozenDERPNode("a", 900, ipv4="192.0.2.1"),)),
            901: FrozenDERPRegion(901, nodes=(FrozenDERPNode("b", 901, ipv4="192.0.2.2"),)),
        }
    )
    node = NodePrivate(bytes([1]) * 32)
    conn = Conn(
        node.public(),
        DiscoPrivate(bytes([2]) * 32),
        rand=rand(1),
        local_port=1,
        https_fallback=True,
    )
    conn.set_derp_map(dm, 0.0)
    conn.start(0.0)
    conn.handle_timer(3.0)
    assert conn.https_probes_to_send() == [900, 901]
    conn.receive_https_latency(900, 0.2, 3.1)
    conn.receive_https_latency(901, 0.02, 3.2)
    assert conn.home_derp == 901


def test_unread_events_are_bounded(pair) -> None:
    from meshscale.magicsock.conn import MAX_PENDING_EVENTS

    a, b = pair
    for i in range(MAX_PENDING_EVENTS + 5):
        t = 10.0 * (i + 1)
        a.conn.ping(b.node.public(), t)
        a.conn.datagrams_to_send()
        a.conn.derp_to_send()
        a.conn.handle_timer(t + 6.0)  # every ping times out: one PingResult each
    assert len(_events(a)) == MAX_PENDING_EVENTS
    assert a.conn.statistics().counters["events_dropped"] >= 5
