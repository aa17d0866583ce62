"""meshscale.derp.frames: wire vectors, round trips and the FrameBuffer fuzz invariant."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.derp import frames as F
from meshscale.derp.errors import FrameError, LocalDERPError

KEY = bytes(range(32))
KEY2 = bytes(range(32, 64))


def test_wire_vectors_from_spec() -> None:
    # docs/protocol/derp-disco-stun.md §1.5: ServerKey prefix, KeepAlive and NotePreferred(home).
    assert F.server_key(KEY)[:13] == bytes.fromhex("010000002844455250f09f9491")
    assert F.server_key(KEY)[13:] == KEY
    assert F.keep_alive() == bytes.fromhex("0600000000")
    assert F.note_preferred(True) == bytes.fromhex("070000000101")
    assert (
        F.peer_gone(KEY, F.PeerGoneReason.NOT_HERE) == bytes.fromhex("0800000021") + KEY + b"\x01"
    )


def test_peer_present_is_51_bytes_with_mapped_ipv4() -> None:
    addr = (ipaddress.IPv4Address("192.0.2.7"), 4242)
    frame = F.peer_present(KEY, addr, F.PeerPresentFlags.IS_REGULAR)
    assert len(frame) == 5 + 51
    assert frame[5 + 32 : 5 + 48] == ipaddress.IPv6Address("::ffff:192.0.2.7").packed
    got = F.decode(frame[0], frame[5:])
    assert got == F.PeerPresent(KEY, addr, 1)
    # Old servers: key only, or no flags byte.
    assert F.decode(F.FrameType.PEER_PRESENT, KEY) == F.PeerPresent(KEY, None, 0)
    short = F.decode(F.FrameType.PEER_PRESENT, frame[5:-1])
    assert isinstance(short, F.PeerPresent)
    assert short.flags == 0


@pytest.mark.parametrize(
    ("frame", "want"),
    [
        (F.send_packet(KEY, b"hello"), F.SendPacket(KEY, b"hello")),
        (F.recv_packet(KEY, b"x" * 100), F.RecvPacket(KEY, b"x" * 100)),
        (F.forward_packet(KEY, KEY2, b"p"), F.ForwardPacket(KEY, KEY2, b"p")),
        (F.ping(b"12345678"), F.Ping(b"12345678")),
        (F.pong(b"abcdefgh"), F.Pong(b"abcdefgh")),
        (F.watch_conns(), F.WatchConns()),
        (F.close_peer(KEY), F.ClosePeer(KEY)),
        (F.health("bad"), F.Health("bad")),
        (F.restarting(1000, 2000), F.Restarting(1000, 2000)),
        (F.encode(0x0B, b"future"), F.Unknown(0x0B, b"future")),
        (F.peer_gone(KEY), F.PeerGone(KEY, 0)),
        (F.encode(F.FrameType.PEER_GONE, KEY), F.PeerGone(KEY, 0)),
    ],
)
def test_encode_decode(frame: bytes, want: F.Frame) -> None:
    fb = F.FrameBuffer(F.MAX_CLIENT_FRAME)
    fb.feed(frame)
    [(ftype, payload)] = list(fb.frames())
    assert F.decode(ftype, payload) == want


@pytest.mark.parametrize(
    ("ftype", "payload"),
    [
        (F.FrameType.SEND_PACKET, b"short"),
        (F.FrameType.SEND_PACKET, KEY + bytes(F.MAX_PACKET_SIZE + 1)),
        (F.FrameType.NOTE_PREFERRED, b""),
        (F.FrameType.NOTE_PREFERRED, b"\x01\x01"),
        (F.FrameType.PING, b"1234567"),
        (F.FrameType.PING, bytes(1001)),
        (F.FrameType.WATCH_CONNS, b"x"),
        (F.FrameType.CLOSE_PEER, KEY + b"x"),
        (F.FrameType.SERVER_KEY, b"DERP" + bytes(36)),
        (F.FrameType.CLIENT_INFO, bytes(55)),
        (F.FrameType.PEER_PRESENT, bytes(40)),
    ],
)
def test_decode_rejects(ftype: int, payload: bytes) -> None:
    with pytest.raises(FrameError):
        F.decode(ftype, payload)


def test_ping_accepts_up_to_1000_bytes_uses_first_8() -> None:
    assert F.decode(F.FrameType.PING, b"abcdefgh" + bytes(992)) == F.Ping(b"abcdefgh")


def test_encoders_refuse_misuse() -> None:
    with pytest.raises(LocalDERPError):
        F.send_packet(KEY, bytes(F.MAX_PACKET_SIZE + 1))
    with pytest.raises(LocalDERPError):
        F.send_packet(b"short", b"")
    with pytest.raises(LocalDERPError):
        F.ping(b"123")


def test_frame_buffer_refuses_oversized_header_before_buffering() -> None:
    fb = F.FrameBuffer(max_frame=100)
    fb.feed(F.header(F.FrameType.SEND_PACKET, 0xFFFFFFFF))
    with pytest.raises(FrameError):
        list(fb.frames())


def test_frame_buffer_byte_by_byte() -> None:
    stream = F.send_packet(KEY, b"abc") + F.keep_alive() + F.ping(b"12345678")
    fb = F.FrameBuffer(F.MAX_SERVER_FRAME)
    got = []
    for i in range(len(stream)):
        fb.feed(stream[i : i + 1])
        got.extend(fb.frames())
    assert [t for t, _ in got] == [
        F.FrameType.SEND_PACKET,
        F.FrameType.KEEP_ALIVE,
        F.FrameType.PING,
    ]
    assert len(fb) == 0


def test_looks_like_disco() -> None:
    assert F.looks_like_disco(F.DISCO_MAGIC + bytes(56))
    assert not F.looks_like_disco(F.DISCO_MAGIC + bytes(55))
    assert not F.looks_like_disco(bytes(100))


@given(st.binary(max_size=4096))
def test_frame_buffer_only_raises_frame_error(data: bytes) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):  # whole, then byte by byte
        fb = F.FrameBuffer(max_frame=1024)
        with contextlib.suppress(FrameError):
            for c in chunks:
                fb.feed(c)
                for ftype, payload in fb.frames():
                    with contextlib.suppress(FrameError):
                        F.decode(ftype, payload)


@given(st.integers(0, 255), st.binary(max_size=2000))
def test_decode_only_raises_frame_error(ftype: int, payload: bytes) -> None:
    with contextlib.suppress(FrameError):
        F.decode(ftype, payload)


@pytest.mark.slow
@given(
    st.lists(st.tuples(st.sampled_from(list(F.FrameType)), st.binary(max_size=300)), max_size=20)
)
def test_frame_stream_roundtrip(items: list[tuple[F.FrameType, bytes]]) -> None:
    stream = b"".join(F.encode(t, p) for t, p in items)
    fb = F.FrameBuffer(F.MAX_SERVER_FRAME)
    fb.feed(stream)
    assert list(fb.frames()) == [(int(t), p) for t, p in items]
