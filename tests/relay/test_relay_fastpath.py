"""The relay's read fast path: Relay.handle_buffer against handle_frame, and DERPReader's
buffers under every way of splitting a byte stream into reads (views must never be
overwritten once handed out)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshscale.derp import frames as F
from meshscale.derp.errors import DERPError, FrameError
from meshscale.derp.relay import VIEW_MIN, Relay
from meshscale.key import NodePrivate
from meshscale.relay.fastpath import MAX_READ, DERPReader

SERVER = NodePrivate.generate(b"\x42" * 32)
A, B, C, GONE = (bytes([i]) * 32 for i in (1, 2, 3, 9))

# A frame stream from client A: packets of every size class to B and C, to a key that is
# not here, pings, keep-alives and unknown frame types.
packet_st = st.one_of(
    st.tuples(
        st.sampled_from([B, C, GONE]),
        st.one_of(
            st.binary(max_size=80),
            st.integers(VIEW_MIN - 2, 8192).map(lambda n: bytes([n % 253]) * n),
            st.integers(1, F.MAX_PACKET_SIZE).map(lambda n: bytes([n % 251]) * n),
        ),
    ).map(lambda t: F.send_packet(t[0], t[1])),
    st.just(F.keep_alive()),
    st.binary(max_size=40).map(lambda b: F.encode(0x7E, b)),
)
# Pings too: one pong is outstanding at a time, so a second ping before the driver
# flushed is dropped; where the flushes fall then matters (see the reference).
frame_st = st.one_of(packet_st, st.binary(min_size=8, max_size=8).map(F.ping))


def relay_with_conns(direct: bool) -> tuple[Relay, dict[bytes, int]]:
    relay = Relay(SERVER, queue_depth=100_000)
    ids = {k: relay.add_conn(k).id for k in (A, B, C)}
    for cid in ids.values():
        relay.set_direct(cid, direct)
    return relay, ids


def collect(relay: Relay, sink: dict[int, list[bytes | memoryview]]) -> None:
    """What a driver does after each read: take direct output and queued frames."""
    for cid in relay.take_ready():
        parts = sink.setdefault(cid, [])
        out = relay.take_out(cid)
        if out:
            parts.extend(out)
        q = relay.queue_of(cid)
        if q is not None:
            while len(q):
                parts.extend(q.pop_batch(1000))
        relay.pong_sent(cid)


def reference(stream: bytes, flush_each: bool = True) -> dict[int, bytes]:
    """The bytes each connection gets when the stream goes through FrameBuffer and
    handle_frame, one frame at a time, queues only (the path the fast one replaces); the
    driver flushes after every frame, or once at the end."""
    relay, ids = relay_with_conns(direct=False)
    fb = F.FrameBuffer(F.MAX_SERVER_FRAME)
    fb.feed(stream)
    sink: dict[int, list[bytes | memoryview]] = {}
    for ftype, payload in fb.frames():
        relay.handle_frame(ids[A], ftype, payload, 0.0)
        if flush_each:
            collect(relay, sink)
    collect(relay, sink)
    return {cid: b"".join(p) for cid, p in sink.items()}


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(frame_st, max_size=12), direct=st.booleans())
def test_handle_buffer_routes_like_handle_frame(frames: list[bytes], direct: bool) -> None:
    stream = b"".join(frames)
    relay, ids = relay_with_conns(direct)
    sink: dict[int, list[bytes | memoryview]] = {}
    buf = memoryview(bytearray(stream))
    pos, _, _ = relay.handle_buffer(ids[A], buf, 0, len(buf), 0.0, F.MAX_SERVER_FRAME)
    collect(relay, sink)
    assert pos == len(stream)
    assert {cid: b"".join(p) for cid, p in sink.items()} == reference(stream, False)
    sent = sum(f[0] == F.FrameType.SEND_PACKET and f[5:37] != GONE for f in frames)
    assert relay.stats.packets_relayed == sent


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(packet_st, max_size=12),
    cuts=st.lists(st.one_of(st.integers(1, 3000), st.integers(1, 1 << 17)), max_size=24),
    direct=st.booleans(),
)
@example([F.send_packet(B, b"\1" * 1024), F.send_packet(B, b"\2" * 1024)], [1061], True)
@example([F.send_packet(B, bytes([i]) * 3000) for i in range(3)], [4096, 8192], True)
def test_reader_gives_the_same_bytes_however_reads_split(
    frames: list[bytes], cuts: list[int], direct: bool
) -> None:
    stream = b"".join(frames)
    relay, ids = relay_with_conns(direct)
    sink: dict[int, list[bytes | memoryview]] = {}

    async def main() -> None:
        reader = DERPReader(asyncio.Protocol(), relay, ids[A], lambda: collect(relay, sink))
        done = reader.done
        # Reads of the sizes the transport would do, capped at what was drawn.
        i = 0
        sizes = iter(cuts)
        while i < len(stream):
            dst = reader.get_buffer(-1)
            assert len(dst) >= 1
            n = min(len(dst), len(stream) - i, next(sizes, len(stream)) or 1)
            dst[:n] = stream[i : i + n]
            i += n
            reader.buffer_updated(n)
            assert reader._view is None or len(reader._view) <= max(
                MAX_READ, F.MAX_SERVER_FRAME + 5
            )
        assert not done.done()

    asyncio.run(main())
    # Every part, views included, still holds what was routed: no buffer was reused.
    assert {cid: b"".join(p) for cid, p in sink.items()} == reference(stream)


def test_oversized_frame_closes_before_its_payload_arrives() -> None:
    relay, ids = relay_with_conns(True)

    async def main() -> DERPError | None:
        reader = DERPReader(asyncio.Protocol(), relay, ids[A], lambda: None)
        done = reader.done
        reader.feed(F.send_packet(B, b"ok") + F.header(F.FrameType.SEND_PACKET, 1 << 30))
        return await asyncio.wait_for(done, 1)

    assert isinstance(asyncio.run(main()), FrameError)
    assert relay.stats.packets_relayed == 1  # the frame before the bad one was routed


def test_short_send_packet_is_a_frame_error() -> None:
    relay, ids = relay_with_conns(True)
    buf = memoryview(bytearray(F.encode(F.FrameType.SEND_PACKET, b"short")))
    with pytest.raises(FrameError):
        relay.handle_buffer(ids[A], buf, 0, len(buf), 0.0, F.MAX_SERVER_FRAME)


def test_idle_reader_drops_its_buffer_and_small_runs_are_copies() -> None:
    relay, ids = relay_with_conns(True)
    sink: dict[int, list[bytes | memoryview]] = {}
    stream = (
        F.send_packet(B, b"x" * 100)
        + F.send_packet(C, b"z" * 10)
        + F.send_packet(B, b"y" * VIEW_MIN)
        + F.send_packet(B, b"w" * 10)
    )

    async def main() -> DERPReader:
        reader = DERPReader(asyncio.Protocol(), relay, ids[A], lambda: collect(relay, sink))
        reader.feed(stream)
        return reader

    reader = asyncio.run(main())
    assert reader._view is None  # nothing pending: an idle client holds no read buffer
    # One part per run of frames to one destination: a short run is a copy (it never pins
    # the read buffer), a long one a view of the frames rewritten in place.
    parts = sink[ids[B]]
    assert [type(p) for p in parts] == [bytes, memoryview]
    assert b"".join(parts) == (
        F.recv_packet(A, b"x" * 100)
        + F.recv_packet(A, b"y" * VIEW_MIN)
        + F.recv_packet(A, b"w" * 10)
    )
    assert sink[ids[C]] == [F.recv_packet(A, b"z" * 10)]
