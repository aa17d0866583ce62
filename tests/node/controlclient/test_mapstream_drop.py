"""MapStream.drop_messages: whole messages are discarded in the reader and the framing
survives every switch, wherever the chunks split the messages."""

from __future__ import annotations

import asyncio
import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.controlhttp import ClientError, Reply
from meshscale.node.controlclient.direct import MapStream


def _msg(i: int) -> bytes:
    body = f'{{"n":{i}}}'.encode() * (1 + i % 5)
    return struct.pack("<I", len(body)) + body


def _feed(reply: Reply, chunk: bytes) -> None:
    """What H2Client._feed does with one DATA frame's payload."""
    if reply.sink is not None:
        reply.sink(chunk)
    else:
        reply.data.put_nowait(chunk)


async def _read_ready(s: MapStream) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            out.append(await s.next_frame(wait=0.001))
        except TimeoutError:
            return out


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 400), max_size=20),
    modes=st.lists(st.sampled_from(["on", "off", "read"]), min_size=1, max_size=20),
)
def test_dropped_and_read_messages_partition_the_stream(
    count: int, cuts: list[int], modes: list[str]
) -> None:
    msgs = [_msg(i) for i in range(count)]
    wire = b"".join(msgs)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]

    async def body() -> tuple[list[bytes], int]:
        reply = Reply()
        s = MapStream(reply, compressed=False)
        read: list[bytes] = []
        for i, chunk in enumerate(chunks):
            _feed(reply, chunk)
            mode = modes[i % len(modes)]
            if mode == "read" and reply.sink is None:
                read += await _read_ready(s)
            else:
                s.drop_messages(mode == "on")
        s.drop_messages(False)
        reply.data.put_nowait(None)  # the stream ends
        while True:
            try:
                read.append(await s.next_frame(wait=1))
            except ClientError:
                return read, s.dropped

    read, dropped = asyncio.run(body())
    bodies = [m[4:] for m in msgs]
    assert len(read) + dropped == count
    it = iter(bodies)
    assert all(any(r == b for b in it) for r in read)  # intact, in order


def test_switching_on_consumes_what_was_queued_and_keeps_a_split_message() -> None:
    async def body() -> None:
        reply = Reply()
        s = MapStream(reply, compressed=False)
        a, b, c = _msg(1), _msg(2), _msg(3)
        reply.data.put_nowait(a + b[:3])  # queued before the switch
        s.drop_messages(True)
        assert s.dropped == 1 and reply.data.empty()
        _feed(reply, b[3:] + c[:5])
        assert s.dropped == 2
        s.drop_messages(False)
        _feed(reply, c[5:])
        assert await s.next_frame(wait=1) == c[4:]

    asyncio.run(body())
