"""The relay routing core against a small model (hypothesis.stateful), plus edge cases."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshscale.derp import frames as F
from meshscale.derp.errors import FrameError, HandshakeError
from meshscale.derp.info import ClientInfo
from meshscale.derp.relay import Relay, SendQueue
from meshscale.key import NodePrivate

KEYS = [bytes([i + 1]) * 32 for i in range(4)]
SERVER = NodePrivate.generate(b"\x63" * 32)


def drain(relay: Relay) -> list[tuple[int, int, bytes]]:
    """(queue id, frame type, payload) of everything queued anywhere."""
    out = []
    for qid in sorted(relay.take_ready()):
        q = relay.queue_of(qid)
        if q is None:
            continue
        fb = F.FrameBuffer(F.MAX_SERVER_FRAME)
        fb.feed(b"".join(q.pop_batch(10_000)))
        out.extend((qid, t, p) for t, p in fb.frames())
    return out


class RelayModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.relay = Relay(SERVER, queue_depth=10_000)
        self.conns: dict[bytes, list[int]] = {}  # key -> conn ids, active last
        self.alive: dict[int, bytes] = {}
        self.fwd: int | None = None
        self.fwd_keys: set[bytes] = set()
        self.sent_to: dict[bytes, dict[bytes, int]] = {}
        self.expected: list[tuple[int, int, bytes]] = []
        self.counter = 0

    def _gone(self, key: bytes) -> None:
        if self.conns.get(key) or key in self.fwd_keys:
            return
        for dcid in self.sent_to.pop(key, {}).values():
            if dcid in self.alive:
                self.expected.append((dcid, F.FrameType.PEER_GONE, key + b"\x00"))

    @rule(k=st.sampled_from(KEYS))
    def connect(self, k: bytes) -> None:
        conn = self.relay.add_conn(k)
        self.conns.setdefault(k, []).append(conn.id)
        self.alive[conn.id] = k

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.alive)))
        key = self.alive.pop(cid)
        self.conns[key].remove(cid)
        self.relay.remove_conn(cid)
        self._gone(key)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), dst=st.sampled_from(KEYS))
    def send(self, data: st.DataObject, dst: bytes) -> None:
        cid = data.draw(st.sampled_from(sorted(self.alive)))
        src = self.alive[cid]
        self.counter += 1
        pkt = b"p%d" % self.counter
        self.relay.handle_frame(cid, F.FrameType.SEND_PACKET, dst + pkt, 0.0)
        ids = self.conns[src]
        ids.remove(cid)
        ids.append(cid)  # last writer becomes active
        if self.conns.get(dst):
            dcid = self.conns[dst][-1]
            self.expected.append((dcid, F.FrameType.RECV_PACKET, src + pkt))
            self.sent_to.setdefault(src, {})[dst] = dcid
        elif dst in self.fwd_keys:
            assert self.fwd is not None
            self.expected.append((self.fwd, F.FrameType.FORWARD_PACKET, src + dst + pkt))

    @precondition(lambda self: self.fwd is None)
    @rule()
    def add_forwarder(self) -> None:
        self.fwd = self.relay.add_forwarder().id

    @precondition(lambda self: self.fwd is not None)
    @rule(k=st.sampled_from(KEYS))
    def present(self, k: bytes) -> None:
        assert self.fwd is not None
        self.relay.forwarder_present(self.fwd, k)
        self.fwd_keys.add(k)

    @precondition(lambda self: self.fwd is not None)
    @rule(k=st.sampled_from(KEYS))
    def gone(self, k: bytes) -> None:
        assert self.fwd is not None
        self.relay.forwarder_gone(self.fwd, k)
        self.fwd_keys.discard(k)
        self._gone(k)

    @precondition(lambda self: self.fwd is not None)
    @rule()
    def remove_forwarder(self) -> None:
        assert self.fwd is not None
        self.relay.remove_forwarder(self.fwd)
        keys, self.fwd_keys, self.fwd = self.fwd_keys, set(), None
        for k in sorted(keys):
            self._gone(k)

    @invariant()
    def frames_match_model(self) -> None:
        got = drain(self.relay)
        want = self.expected
        self.expected = []
        assert sorted(got) == sorted(want)

    @invariant()
    def tables_match_model(self) -> None:
        assert dict(self.relay.by_key.items()) == {k: v for k, v in self.conns.items() if v}
        assert self.relay.client_count == len(self.alive)
        assert set(self.relay.forward_key) == self.fwd_keys


TestRelayModel = pytest.mark.slow(RelayModel.TestCase)
TestRelayModel.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)


def test_mesh_key_checks() -> None:
    mesh = bytes(range(32))
    relay = Relay(SERVER, mesh_key=mesh)
    assert relay.is_mesh_peer(ClientInfo(mesh_key=mesh.hex()))
    assert not relay.is_mesh_peer(ClientInfo(mesh_key="zz" * 32))
    assert not relay.is_mesh_peer(ClientInfo(mesh_key="00" * 31))
    assert not Relay(SERVER).is_mesh_peer(ClientInfo(mesh_key=mesh.hex()))
    assert relay.check_mesh_key(ClientInfo()) is False
    with pytest.raises(ValueError):
        Relay(SERVER, mesh_key=b"short")
    with pytest.raises(HandshakeError):
        relay.add_conn(b"short")


def test_watcher_sees_present_and_gone_with_flags() -> None:
    relay = Relay(SERVER, mesh_key=bytes(32))
    watcher = relay.add_conn(b"\x77" * 32, mesh=True)
    relay.add_conn(KEYS[0], prober=True)
    relay.handle_frame(watcher.id, F.FrameType.WATCH_CONNS, b"", 0.0)
    c2 = relay.add_conn(KEYS[1], not_ideal=True)
    relay.remove_conn(c2.id)
    frames = [(t, p) for qid, t, p in drain(relay) if qid == watcher.id]
    present = [F.decode(t, p) for t, p in frames if t == F.FrameType.PEER_PRESENT]
    flags = {p.key: p.flags for p in present}  # type: ignore[union-attr]
    assert flags[KEYS[0]] == F.PeerPresentFlags.IS_PROBER
    assert flags[KEYS[1]] == F.PeerPresentFlags.NOT_IDEAL
    assert flags[b"\x77" * 32] == F.PeerPresentFlags.IS_MESH_PEER
    assert (F.FrameType.PEER_GONE, KEYS[1] + b"\x00") in frames


def test_self_mesh_watch_is_ignored_and_close_peer_closes_all_duplicates() -> None:
    relay = Relay(SERVER, mesh_key=bytes(32))
    me = relay.add_conn(SERVER.public_raw(), mesh=True)
    relay.handle_frame(me.id, F.FrameType.WATCH_CONNS, b"", 0.0)
    assert relay.watchers == set()
    a1, a2 = relay.add_conn(KEYS[0]), relay.add_conn(KEYS[0])
    relay.handle_frame(me.id, F.FrameType.CLOSE_PEER, KEYS[0], 0.0)
    assert sorted(relay.take_closes()) == sorted([a1.id, a2.id])
    assert relay.take_closes() == []


def test_note_preferred_ping_and_short_send() -> None:
    relay = Relay(SERVER)
    c = relay.add_conn(KEYS[0])
    relay.handle_frame(c.id, F.FrameType.NOTE_PREFERRED, b"\x01", 0.0)
    assert relay.conns[c.id].preferred
    with pytest.raises(FrameError):
        relay.handle_frame(c.id, F.FrameType.SEND_PACKET, b"short", 0.0)
    assert relay.active(KEYS[0]) is relay.conns[c.id]
    assert KEYS[0] in relay
    assert relay.unique_keys == 1
    relay.remove_conn(c.id)
    relay.remove_conn(c.id)  # idempotent
    relay.pong_sent(c.id)
    assert relay.active(KEYS[0]) is None


def test_queues_are_bounded() -> None:
    q = SendQueue(depth=2, ctrl_depth=1)
    assert not q.push_packet((b"a",), False)
    assert not q.push_packet((b"b",), False)
    assert q.push_packet((b"c",), False)  # head drop
    assert q.push_ctrl((b"x",))
    assert not q.push_ctrl((b"y",))
    assert q.drops == 2
    assert q.pop_batch() == [b"x", b"b", b"c"]
    relay = Relay(SERVER, queue_depth=1)
    a, b = relay.add_conn(KEYS[0]), relay.add_conn(KEYS[1])
    for i in range(3):
        relay.handle_frame(a.id, F.FrameType.SEND_PACKET, KEYS[1] + bytes([i]), 0.0)
    assert relay.stats.drops["queue_head"] == 2
    relay.remove_conn(b.id)
    assert relay.stats.drops["conn_closed"] == 1
    for _ in range(300):  # PeerGone(NotHere) flood: only 3 get queued, control queue bounded
        relay.handle_frame(a.id, F.FrameType.SEND_PACKET, KEYS[2] + F.DISCO_MAGIC + bytes(60), 0.0)
    assert len(relay.conns[a.id].queue.ctrl) == 3


def test_forward_packet_from_mesh_peer_delivers_locally_only() -> None:
    relay = Relay(SERVER, mesh_key=bytes(32))
    peer = relay.add_conn(b"\x55" * 32, mesh=True)
    fwd = relay.add_forwarder()
    relay.forwarder_present(fwd.id, KEYS[1])
    relay.forwarder_present(fwd.id, SERVER.public_raw())  # never forward to ourselves
    assert SERVER.public_raw() not in relay.forward_key
    b = relay.add_conn(KEYS[0])
    # For a key only a forwarder knows, a forwarded packet is dropped, never re-forwarded.
    relay.handle_frame(peer.id, F.FrameType.FORWARD_PACKET, KEYS[2] + KEYS[1] + b"x", 0.0)
    relay.handle_frame(peer.id, F.FrameType.FORWARD_PACKET, KEYS[2] + KEYS[0] + b"y", 0.0)
    got = drain(relay)
    assert got == [(b.id, F.FrameType.RECV_PACKET, KEYS[2] + b"y")]
    assert relay.stats.drops["unknown_dest"] == 1
    relay.remove_forwarder(fwd.id)
    relay.remove_forwarder(fwd.id)
    relay.forwarder_present(fwd.id, KEYS[3])  # unknown forwarder: ignored
    relay.forwarder_gone(fwd.id, KEYS[3])
    assert relay.forward_key == {}
