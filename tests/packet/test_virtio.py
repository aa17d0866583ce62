from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.packet import VIRTIO_NET_HDR_LEN, ZERO_HDR, ParseError, VirtioNetHdr


@given(st.tuples(st.integers(0, 255), st.integers(0, 255), *[st.integers(0, 65535)] * 4))
def test_pack_unpack_round_trip(fields: tuple[int, int, int, int, int, int]) -> None:
    hdr = VirtioNetHdr(*fields)
    raw = hdr.pack()
    assert len(raw) == VIRTIO_NET_HDR_LEN
    assert VirtioNetHdr.unpack(raw + b"trailing packet") == hdr


def test_zero_header_is_default() -> None:
    assert VirtioNetHdr().pack() == ZERO_HDR == bytes(10)


@given(st.binary(max_size=20))
def test_unpack_only_raises_parse_error(data: bytes) -> None:
    try:
        VirtioNetHdr.unpack(data)
    except ParseError:
        assert len(data) < VIRTIO_NET_HDR_LEN


def test_short_header() -> None:
    with pytest.raises(ParseError):
        VirtioNetHdr.unpack(b"\x01\x01")
