"""DERP client session and relay cores paired in memory (no sockets)."""

from __future__ import annotations

import itertools
import random

import pytest

from meshscale.derp import frames as F
from meshscale.derp.client import ClientSession, ClientState, Connected
from meshscale.derp.errors import AdmissionError, FrameError, HandshakeError
from meshscale.derp.info import ClientInfo
from meshscale.derp.relay import Relay
from meshscale.key import NodePrivate, NodePublic

MESH_KEY = bytes(range(32))


def key(n: int) -> NodePrivate:
    return NodePrivate.generate(bytes([n]) * 32)


class Harness:
    """A relay core plus client sessions; the harness plays the driver's part."""

    def __init__(self, relay: Relay, seed: int = 0) -> None:
        self.relay = relay
        self.rng = random.Random(seed)
        self.sessions: dict[int, ClientSession] = {}
        self.now = 0.0

    def rand(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def connect(
        self, priv: NodePrivate, info: ClientInfo | None = None
    ) -> tuple[int, ClientSession]:
        s = ClientSession(priv, self.rand, info=info)
        s.receive_data(self.relay.server_key_frame())
        fb = F.FrameBuffer(F.MAX_LOGIN_FRAME)
        fb.feed(s.data_to_send())
        [(ftype, payload)] = list(fb.frames())
        assert ftype == F.FrameType.CLIENT_INFO
        ckey, cinfo = self.relay.open_client_info(payload)
        mesh = self.relay.check_mesh_key(cinfo)
        conn = self.relay.add_conn(ckey, mesh=mesh)
        s.receive_data(self.relay.server_info_frame(ckey, self.rand(24)))
        ev = s.next_event()
        assert isinstance(ev, Connected)
        assert ev.server_key.raw == self.relay.public
        self.sessions[conn.id] = s
        return conn.id, s

    def pump(self, cid: int) -> None:
        """Move one session's outgoing frames into the relay."""
        fb = F.FrameBuffer(F.MAX_SERVER_FRAME)
        fb.feed(self.sessions[cid].data_to_send())
        for ftype, payload in fb.frames():
            self.relay.handle_frame(cid, ftype, payload, self.now)

    def deliver(self) -> None:
        """Drain every ready queue into its session."""
        for cid in self.relay.take_ready():
            q = self.relay.queue_of(cid)
            if q is None or cid not in self.sessions:
                continue
            while len(q):
                self.sessions[cid].receive_data(b"".join(q.pop_batch()))
            self.relay.pong_sent(cid)

    def events(self, s: ClientSession) -> list[object]:
        return list(iter(s.next_event, None))


def test_login_and_exchange() -> None:
    h = Harness(Relay(key(99)))
    a, b = key(1), key(2)
    ca, sa = h.connect(a)
    cb, sb = h.connect(b)
    assert sa.state is ClientState.CONNECTED
    sa.send_packet(b.public(), b"hello b")
    sb.send_packet(a.public(), b"hello a")
    h.pump(ca)
    h.pump(cb)
    h.deliver()
    assert h.events(sb) == [F.RecvPacket(a.public_raw(), b"hello b")]
    assert h.events(sa) == [F.RecvPacket(b.public_raw(), b"hello a")]
    assert h.relay.stats.packets_relayed == 2


def test_client_sends_before_server_key_waits_for_client_info() -> None:
    h = Harness(Relay(key(99)))
    s = ClientSession(key(1), h.rand)
    s.send_packet(key(2).public(), b"early")
    assert s.data_to_send() == b""
    s.receive_data(h.relay.server_key_frame())
    out = s.data_to_send()
    assert out[0] == F.FrameType.CLIENT_INFO
    assert out.endswith(F.send_packet(key(2).public_raw(), b"early"))


def test_fast_start_ignores_server_key_frame() -> None:
    relay = Relay(key(99))
    h = Harness(relay)
    s = ClientSession(key(1), h.rand, server_key=NodePublic(relay.public))
    first = s.data_to_send()
    assert first[0] == F.FrameType.CLIENT_INFO
    ckey, _ = relay.open_client_info(first[5:])
    s.receive_data(relay.server_key_frame() + relay.server_info_frame(ckey, bytes(24)))
    assert isinstance(s.next_event(), Connected)


def test_bad_server_key_and_wrong_box_rejected() -> None:
    s = ClientSession(key(1), random.Random(0).randbytes)
    with pytest.raises(HandshakeError):
        s.receive_data(F.keep_alive())
    relay, other = Relay(key(99)), Relay(key(98))
    s = ClientSession(key(1), random.Random(0).randbytes)
    s.receive_data(relay.server_key_frame())
    with pytest.raises(HandshakeError):
        s.receive_data(other.server_info_frame(key(1).public_raw(), bytes(24)))
    assert s.state is ClientState.CLOSED


def test_client_info_json_is_what_tailscaled_sends() -> None:
    assert ClientInfo().to_json() == b'{"version":2,"CanAckPings":true}'
    lenient = ClientInfo.from_json(b'{"VERSION":2,"canackpings":true,"Extra":[1]}')
    assert lenient == ClientInfo(version=2, can_ack_pings=True)
    with pytest.raises(HandshakeError):
        ClientInfo.from_json(b'{"version":"2"}')
    with pytest.raises(HandshakeError):
        ClientInfo.from_json(b"[]")


def test_relay_rejects_forged_client_info() -> None:
    relay = Relay(key(99))
    s = ClientSession(key(1), random.Random(0).randbytes)
    s.receive_data(relay.server_key_frame())
    payload = bytearray(s.data_to_send()[5:])
    payload[0] ^= 1  # claim a different key than the one that sealed the box
    with pytest.raises(HandshakeError):
        relay.open_client_info(bytes(payload))


def test_server_ping_answered_and_client_ping_ponged_once() -> None:
    h = Harness(Relay(key(99)))
    ca, sa = h.connect(key(1))
    sa.receive_data(F.ping(b"srvping!"))
    assert sa.data_to_send() == F.pong(b"srvping!")
    sa.ping(b"12345678")
    sa.ping(b"abcdefgh")  # arrives while the first pong is pending: dropped, as derper
    h.pump(ca)
    h.deliver()
    assert h.events(sa) == [F.Pong(b"12345678")]
    assert h.relay.stats.drops["pong_pending"] == 1


def test_unknown_dest_not_here_for_disco_rate_limited() -> None:
    h = Harness(Relay(key(99)))
    ca, sa = h.connect(key(1))
    ghost = key(7).public()
    disco = F.DISCO_MAGIC + bytes(60)
    for _ in range(5):
        sa.send_packet(ghost, disco)
    sa.send_packet(ghost, b"not disco")
    h.pump(ca)
    h.deliver()
    gone = h.events(sa)
    assert gone == [F.PeerGone(ghost.raw, F.PeerGoneReason.NOT_HERE)] * 3
    assert h.relay.stats.drops["unknown_dest"] == 6
    h.now = 2.0  # two more tokens
    for _ in range(3):
        sa.send_packet(ghost, disco)
    h.pump(ca)
    h.deliver()
    assert len(h.events(sa)) == 2


def test_peer_gone_disconnected_to_those_who_heard() -> None:
    h = Harness(Relay(key(99)))
    ca, sa = h.connect(key(1))
    _cb, sb = h.connect(key(2))
    _cc, sc = h.connect(key(3))
    sa.send_packet(key(2).public(), b"x")
    h.pump(ca)
    h.deliver()
    h.events(sb)
    h.relay.remove_conn(ca)
    h.deliver()
    assert h.events(sb) == [F.PeerGone(key(1).public_raw(), 0)]
    assert h.events(sc) == []


def test_duplicate_keys_last_writer_wins() -> None:
    h = Harness(Relay(key(99)))
    a = key(1)
    c1, s1 = h.connect(a)
    _c2, s2 = h.connect(a)
    cb, sb = h.connect(key(2))
    sb.send_packet(a.public(), b"to newest")
    h.pump(cb)
    h.deliver()
    assert h.events(s2) == [F.RecvPacket(key(2).public_raw(), b"to newest")]
    s1.send_packet(key(2).public(), b"i am back")
    h.pump(c1)
    sb.send_packet(a.public(), b"to writer")
    h.pump(cb)
    h.deliver()
    assert h.events(s1) == [F.RecvPacket(key(2).public_raw(), b"to writer")]
    h.relay.remove_conn(c1)
    h.deliver()
    assert h.events(sb) == [F.RecvPacket(a.public_raw(), b"i am back")]  # no PeerGone: c2 left


def test_slow_reader_head_drops_only_its_own_queue() -> None:
    relay = Relay(key(99), queue_depth=4)
    h = Harness(relay)
    ca, sa = h.connect(key(1))
    cb, sb = h.connect(key(2))
    _cc, sc = h.connect(key(3))
    for i in range(10):
        sa.send_packet(key(2).public(), b"slow%d" % i)
    sa.send_packet(key(3).public(), b"fast")
    h.pump(ca)
    assert len(relay.conns[cb].queue) == 4
    assert relay.stats.drops["queue_head"] == 6
    h.deliver()
    assert [e.packet for e in h.events(sb)] == [b"slow6", b"slow7", b"slow8", b"slow9"]  # type: ignore[attr-defined]
    assert h.events(sc) == [F.RecvPacket(key(1).public_raw(), b"fast")]


def test_mesh_only_frames_need_mesh_key() -> None:
    h = Harness(Relay(key(99), mesh_key=MESH_KEY))
    ca, _sa = h.connect(key(1))
    for frame in (
        F.watch_conns(),
        F.close_peer(key(2).public_raw()),
        F.forward_packet(bytes(32), bytes(32), b""),
    ):
        with pytest.raises(AdmissionError):
            h.relay.handle_frame(ca, frame[0], frame[5:], 0.0)
    with pytest.raises(AdmissionError):
        h.connect(key(5), ClientInfo(mesh_key="00" * 32))


def test_bad_note_preferred_closes() -> None:
    h = Harness(Relay(key(99)))
    ca, _ = h.connect(key(1))
    with pytest.raises(FrameError):
        h.relay.handle_frame(ca, F.FrameType.NOTE_PREFERRED, b"\x01\x01", 0.0)
    h.relay.handle_frame(ca, 0x0E, b"unknown types are skipped", 0.0)


def test_two_meshed_relays_forward() -> None:
    """Relay 1 and 2 of one region; each watches the other through a mesh client session."""
    r1 = Relay(key(91), mesh_key=MESH_KEY)
    r2 = Relay(key(92), mesh_key=MESH_KEY)
    h1, h2 = Harness(r1, 1), Harness(r2, 2)
    mesh_info = ClientInfo(mesh_key=MESH_KEY.hex())
    # r1's link into r2 (r1 uses its own server key as client key) and vice versa.
    m12_cid, m12 = h2.connect(r1.private, mesh_info)
    m21_cid, m21 = h1.connect(r2.private, mesh_info)
    fwd_on_1 = r1.add_forwarder()  # forwards into r2 via m12
    fwd_on_2 = r2.add_forwarder()
    m12.watch_conns()
    m21.watch_conns()
    h2.pump(m12_cid)
    h1.pump(m21_cid)
    ca, sa = h1.connect(key(1))
    cb, sb = h2.connect(key(2))

    def mesh_sync() -> None:
        h1.deliver()
        h2.deliver()
        for sess, relay, fid in ((m12, r1, fwd_on_1.id), (m21, r2, fwd_on_2.id)):
            for ev in iter(sess.next_event, None):
                if isinstance(ev, F.PeerPresent):
                    relay.forwarder_present(fid, ev.key)
                elif isinstance(ev, F.PeerGone):
                    relay.forwarder_gone(fid, ev.key)
        for relay, fid, _sess, h, cid in (
            (r1, fwd_on_1.id, m12, h2, m12_cid),
            (r2, fwd_on_2.id, m21, h1, m21_cid),
        ):
            q = relay.queue_of(fid)
            assert q is not None
            if len(q):
                sess_bytes = b"".join(q.pop_batch(1000))
                fb = F.FrameBuffer(F.MAX_SERVER_FRAME)
                fb.feed(sess_bytes)
                for ftype, payload in fb.frames():
                    h.relay.handle_frame(cid, ftype, payload, 0.0)

    mesh_sync()
    assert key(2).public_raw() in r1.forward_key
    assert key(1).public_raw() in r2.forward_key
    sa.send_packet(key(2).public(), b"across the mesh")
    h1.pump(ca)
    mesh_sync()
    h2.deliver()
    assert h2.events(sb) == [F.RecvPacket(key(1).public_raw(), b"across the mesh")]
    assert r1.stats.packets_forwarded == 1
    # b leaves r2: r2's watcher link tells r1, which forgets the key and tells a.
    r2.remove_conn(cb)
    mesh_sync()
    assert key(2).public_raw() not in r1.forward_key
    # a never received from b, so no PeerGone(Disconnected) to a.
    assert h1.events(sa) == []


def test_many_clients_random_routing_matches_model() -> None:
    """Against a small model: every packet to a present key arrives exactly once, in order."""
    rng = random.Random(5)
    h = Harness(Relay(key(99), queue_depth=1000))
    privs = [key(i + 1) for i in range(6)]
    ids = {}
    for p in privs:
        ids[p.public_raw()] = h.connect(p)
    expected: dict[bytes, list[tuple[bytes, bytes]]] = {k: [] for k in ids}
    counter = itertools.count()
    for _ in range(300):
        src, dst = rng.choice(privs), rng.choice(privs)
        pkt = b"p%d" % next(counter)
        ids[src.public_raw()][1].send_packet(dst.public(), pkt)
        h.pump(ids[src.public_raw()][0])
        expected[dst.public_raw()].append((src.public_raw(), pkt))
    h.deliver()
    for k, (_, s) in ids.items():
        got = [(e.src, e.packet) for e in h.events(s)]  # type: ignore[attr-defined]
        assert got == expected[k]
