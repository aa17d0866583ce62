from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from meshscale.packet import checksum, fold, ones_sum, pseudo_header_sum, segment_sums, verify

from .builders import ref_pseudo, ref_sum


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


@given(st.binary(max_size=3000))
def test_ones_sum_matches_reference(data: bytes) -> None:
    assert ones_sum(data) == ref_sum(data) % 0xFFFF
    assert ones_sum(memoryview(data)) == ones_sum(bytearray(data))


@given(
    st.binary(min_size=2, max_size=600).map(lambda b: b if len(b) % 2 == 0 else b + b"\0"),
    st.integers(0, 0xFFFE),
)
def test_checksum_then_verify(data: bytes, initial: int) -> None:
    c = checksum(data, initial)
    assert 1 <= c <= 0xFFFF  # never 0: UDP's "no checksum" value is never produced
    assert verify(data + c.to_bytes(2, "big"), initial)


@given(
    st.sampled_from([4, 16]).flatmap(
        lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
    ),
    st.sampled_from([6, 17]),
    st.integers(0, 65535),
)
def test_pseudo_header_sum_matches_reference(
    addrs: tuple[bytes, bytes], proto: int, length: int
) -> None:
    src, dst = addrs
    assert (
        pseudo_header_sum(src, dst, proto, length)
        == ref_sum(ref_pseudo(src, dst, proto, length)) % 0xFFFF
    )


def test_fold() -> None:
    assert fold(0x1FFFE) == 0
    assert fold(0x12345) == (0x2345 + 1) % 0xFFFF


@given(st.integers(1, 8), st.integers(1, 200).map(lambda n: n * 2), st.data())
def test_segment_sums_match_reference(nrows: int, stride: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, stride // 2 - 1)) * 2
    stop = data.draw(st.integers(start, stride - 1))
    raw = bytearray(data.draw(st.binary(min_size=nrows * stride, max_size=nrows * stride)))
    for r in range(nrows):  # the byte after an odd stop must be zero
        if stop % 2:
            raw[r * stride + stop] = 0
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(nrows, stride)
    got = segment_sums(rows, start, stop)
    for r in range(nrows):
        assert int(got[r]) == ref_sum(bytes(raw[r * stride + start : r * stride + stop])) % 0xFFFF
