"""derp.runs: the in-place SendPacket -> RecvPacket walk, C and Python alike, against a
reference built from frames.py's parser and encoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.derp import frames as F
from meshscale.derp import runs

DST, OTHER, SRC = (bytes([i]) * 32 for i in (2, 3, 1))
WALKS = [runs.rewrite_run_py] + ([runs.rewrite_run] if runs.HAVE_C else [])

frame_st = st.one_of(
    st.tuples(st.sampled_from([DST, DST, OTHER]), st.binary(max_size=300)).map(
        lambda t: F.send_packet(t[0], t[1])
    ),
    st.binary(max_size=40).map(lambda b: F.encode(0x7E, b)),
    st.binary(min_size=8, max_size=8).map(F.ping),
    # A SendPacket too short to hold a key: never part of a run.
    st.binary(max_size=31).map(lambda b: F.encode(F.FrameType.SEND_PACKET, b)),
)


def reference(stream: bytes, pos: int, end: int, max_len: int) -> tuple[bytes, int, int, int]:
    """(rewritten stream, end of run, frames, packet bytes) by parsing frame by frame."""
    out = bytearray(stream)
    frames = nbytes = 0
    while end - pos >= 5:
        ftype, length = F.HEADER.unpack_from(stream, pos)
        fend = pos + 5 + length
        if ftype != F.FrameType.SEND_PACKET or not 32 <= length <= max_len or fend > end:
            break
        if stream[pos + 5 : pos + 37] != DST:
            break
        pkt = stream[pos + 37 : fend]
        assert F.recv_packet(SRC, pkt) == bytes([5]) + stream[pos + 1 : pos + 5] + SRC + pkt
        out[pos:fend] = F.recv_packet(SRC, pkt)
        frames += 1
        nbytes += len(pkt)
        pos = fend
    return bytes(out), pos, frames, nbytes


@pytest.mark.parametrize("walk", WALKS, ids=lambda w: w.__name__)
@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(frame_st, max_size=10),
    start=st.integers(0, 400),
    cut=st.integers(0, 400),
    max_len=st.sampled_from([32, 100, 332, F.MAX_SERVER_FRAME]),
)
def test_walk_matches_reference(
    walk: runs.RewriteRun, frames: list[bytes], start: int, cut: int, max_len: int
) -> None:
    stream = b"".join(frames)
    pos = min(start, len(stream))
    end = max(pos, len(stream) - cut)
    buf = memoryview(bytearray(stream))
    got = walk(buf, pos, end, DST, SRC, max_len)
    want, wpos, wframes, wbytes = reference(stream, pos, end, max_len)
    assert got == (wpos, wframes, wbytes)
    assert bytes(buf) == want  # nothing outside the run was touched


@pytest.mark.parametrize("walk", WALKS, ids=lambda w: w.__name__)
def test_walk_refuses_bad_arguments(walk: runs.RewriteRun) -> None:
    buf = memoryview(bytearray(F.send_packet(DST, b"x")))
    with pytest.raises(ValueError):
        walk(buf, 0, len(buf), DST[:31], SRC, 100)
    with pytest.raises((TypeError, BufferError)):
        walk(memoryview(bytes(buf)), 0, len(buf), DST, SRC, 100)  # read-only


def test_c_walk_checks_the_range() -> None:
    if not runs.HAVE_C:
        pytest.skip("built without a compiler")
    buf = memoryview(bytearray(10))
    with pytest.raises(ValueError):
        runs.rewrite_run(buf, 0, 11, DST, SRC, 100)
    with pytest.raises(ValueError):
        runs.rewrite_run(buf, 5, 4, DST, SRC, 100)


@pytest.mark.parametrize("n", [0, 1, 4096, 256 * 1024])
def test_read_buffer_is_a_writable_bytearray_of_the_size_asked(n: int) -> None:
    buf = runs.read_buffer(n)
    assert type(buf) is bytearray
    assert len(buf) == n
    view = memoryview(buf)
    view[:] = b"\x07" * n  # recv_into writes through a view like this
    assert buf == b"\x07" * n


@pytest.mark.skipif(not runs.HAVE_C, reason="the C module was not built")
def test_c_read_buffer_refuses_a_negative_size() -> None:
    with pytest.raises(ValueError, match="negative"):
        runs.read_buffer(-1)
