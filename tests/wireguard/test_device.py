"""Device cores paired in memory: handshake, data, keypair rotation, timers, drops."""

from __future__ import annotations

from meshscale.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)

from .helpers import Pair, ipv4_packet, ipv6_packet


def test_first_packet_triggers_handshake_and_is_delivered() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send(p.a, [pkt])
    assert p.sent_sizes == [148]  # the packet is staged behind an initiation
    p.deliver()
    assert p.b.inbox == [pkt]
    # initiation 148, response 92, then the staged packet (48 bytes padded to 48) + header + tag
    assert p.sent_sizes[:3] == [148, 92, 16 + 48 + 16]
    assert p.pa.current is not None
    assert p.pb.current is not None
    assert p.pb.current.local_index == p.pa.current.remote_index


def test_keepalive_confirms_session_when_nothing_is_staged() -> None:
    p = Pair()
    p.a.dev.send_initiation(p.pa, p.now)
    p.collect(p.a)
    p.deliver()
    assert p.sent_sizes == [148, 92, 32]
    assert p.pb.current is not None
    assert p.pb.next is None


def test_both_directions_ipv4_and_ipv6() -> None:
    p = Pair()
    a2b = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * i) for i in range(1, 60)]
    p.send(p.a, a2b)
    p.deliver()
    assert p.b.inbox == a2b
    b2a = [ipv6_packet("fd00::2", "fd00::1", b"z" * 100)]
    p.send(p.b, b2a)
    p.deliver()
    assert p.a.inbox == b2a


def test_preshared_key_must_match() -> None:
    p = Pair(psk=b"\x07" * 32)
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send(p.a, [pkt])
    p.deliver()
    assert p.b.inbox == [pkt]
    q = Pair(seed=2)
    q.a.dev.set_preshared_key(q.pa, b"\x01" * 32)
    q.send(q.a, [pkt])
    q.deliver()
    assert q.b.inbox == []
    assert q.a.dev.drops["handshake_auth"] == 1


def test_replayed_transport_packet_is_dropped() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send(p.a, [pkt])
    p.deliver()
    ((_ep, msgs),) = p.a.dev.encrypt_packets([pkt], p.now)
    datagram = b"".join(msgs[0])
    assert p.b.dev.receive_datagrams([(datagram, p.a.ep)], p.now) == [pkt]
    assert p.b.dev.receive_datagrams([(datagram, p.a.ep)], p.now) == []
    assert p.b.dev.drops["replay"] == 1


def test_tampered_and_truncated_packets_are_dropped() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send(p.a, [pkt])
    p.deliver()
    ((_, msgs),) = p.a.dev.encrypt_packets([pkt], p.now)
    datagram = bytearray(b"".join(msgs[0]))
    datagram[20] ^= 1
    assert p.b.dev.receive_datagrams([(bytes(datagram), p.a.ep)], p.now) == []
    assert p.b.dev.drops["auth"] == 1
    assert p.b.dev.receive_datagrams([(bytes(datagram[:31]), p.a.ep)], p.now) == []


def test_source_address_check() -> None:
    p = Pair()
    p.send(p.a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    p.deliver()
    spoofed = ipv4_packet("10.0.0.99", "10.0.0.2")
    kp = p.pa.current
    assert kp is not None
    msgs = p.a.dev.seal_for_peer(p.pa, kp, [spoofed], p.now)
    assert p.b.dev.receive_datagrams([(b"".join(msgs[0]), p.a.ep)], p.now) == []
    assert p.b.dev.drops["source_check"] == 1


def test_roaming_updates_endpoint() -> None:
    p = Pair()
    p.send(p.a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    p.deliver()
    ((_, msgs),) = p.a.dev.encrypt_packets([ipv4_packet("10.0.0.1", "10.0.0.2")], p.now)
    p.b.dev.receive_datagrams([(b"".join(msgs[0]), ("198.51.100.7", 4444))], p.now)
    assert p.pb.endpoint == ("198.51.100.7", 4444)


def test_rekey_after_time_keeps_the_flow() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send(p.a, [pkt])
    p.deliver()
    first = p.pa.current
    delivered = 0
    # Keep traffic flowing both ways past REKEY_AFTER_TIME: a new session must replace the old
    # one and no packet may be lost across the switch.
    for _ in range(int((REKEY_AFTER_TIME + 20) / 2)):
        p.advance(2.0)
        p.send(p.a, [pkt])
        p.send(p.b, [ipv4_packet("10.0.0.2", "10.0.0.1")])
        p.deliver()
        delivered += 1
    assert p.pa.current is not first
    assert len(p.b.inbox) == delivered + 1
    assert len(p.a.inbox) == delivered


def test_session_expires_without_handshake_and_restarts() -> None:
    p = Pair()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2")
    p.send(p.a, [pkt])
    p.deliver()
    p.now += REJECT_AFTER_TIME + 1
    p.send(p.a, [pkt])  # the old keypair is too old: stage and handshake again
    assert p.sent_sizes[-1] == 148
    p.deliver()
    assert p.b.inbox == [pkt, pkt]


def test_passive_keepalive_after_receiving_data() -> None:
    p = Pair()
    p.send(p.a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    p.deliver()
    n = len(p.sent_sizes)
    p.advance(KEEPALIVE_TIMEOUT + 1)
    assert 32 in p.sent_sizes[n:]  # B answered A's data with a keepalive


def test_retransmit_then_give_up() -> None:
    p = Pair()
    p.b.ep = ("192.0.2.99", 1)  # B unreachable: A's initiations go nowhere
    p.a.dev.set_endpoint(p.pa, ("203.0.113.9", 9))
    p.send(p.a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    p.advance(200.0, step=1.0)
    initiations = [s for s in p.sent_sizes if s == 148]
    assert len(initiations) == 20  # first + 19 retries (timers.go)
    assert not p.pa.staged


def test_persistent_keepalive() -> None:
    p = Pair()
    p.a.dev.set_persistent_keepalive(p.pa, 1, p.now)
    p.collect(p.a)
    p.deliver()
    n = len(p.sent_sizes)
    p.advance(5.0, step=0.25)
    assert p.sent_sizes[n:].count(32) >= 4


def test_initiation_replay_is_rejected() -> None:
    p = Pair()
    p.a.dev.send_initiation(p.pa, p.now)
    ((_ep, init),) = p.a.dev.datagrams_to_send()
    p.b.dev.receive_handshake(init, p.a.ep, p.now)
    p.now += 1
    p.b.dev.receive_handshake(init, p.a.ep, p.now)
    assert p.b.dev.drops["handshake_replay"] == 1


def test_bad_mac1_dropped_before_dh() -> None:
    p = Pair()
    p.a.dev.send_initiation(p.pa, p.now)
    ((_, init),) = p.a.dev.datagrams_to_send()
    bad = bytearray(init)
    bad[120] ^= 0xFF
    p.b.dev.receive_handshake(bytes(bad), p.a.ep, p.now)
    assert p.b.dev.drops["bad_mac1"] == 1


def test_cookie_under_load() -> None:
    p = Pair()
    p.a.dev.send_initiation(p.pa, p.now)
    ((_, init),) = p.a.dev.datagrams_to_send()
    p.b.dev.receive_handshake(init, p.a.ep, p.now, under_load=True)
    ((ep, reply),) = p.b.dev.datagrams_to_send()
    assert len(reply) == 64
    assert ep == p.a.ep
    p.a.dev.receive_handshake(reply, p.b.ep, p.now)
    assert p.a.dev.drops.total() == 0
    # The retransmission carries mac2 and gets through under load.
    p.now += REKEY_TIMEOUT + 0.5
    p.a.dev.handle_timer(p.now)
    for _ep2, data in p.a.dev.datagrams_to_send():
        p.b.dev.receive_handshake(data, p.a.ep, p.now, under_load=True)
    out = p.b.dev.datagrams_to_send()
    assert [len(d) for _, d in out] == [92]


def test_padding_sizes_match_wireguard_go() -> None:
    from meshscale.wireguard.transport import padding

    assert [n + padding(n, 1420) for n in (0, 84, 128, 1420, 1419, 1417)] == [
        0,
        96,
        128,
        1420,
        1420,
        1420,
    ]
    assert 1505 + padding(1505, 1420) == 1505 + 11  # applied to 1505 mod 1420 = 85
