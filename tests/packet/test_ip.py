from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.packet import (
    IPv4Header,
    IPv6Header,
    ParseError,
    TCPHeader,
    UDPHeader,
    addresses,
    parse_ip,
)

from .builders import DST4, DST6, SRC4, SRC6, tcp, udp


def test_ipv4_tcp() -> None:
    pkt = tcp(b"hello", seq=42, flags=0x18, ack=7)
    ip = parse_ip(pkt)
    assert isinstance(ip, IPv4Header)
    assert (ip.version, ip.header_length, ip.total_length, ip.protocol) == (4, 20, len(pkt), 6)
    assert (ip.src, ip.dst, ip.ttl, ip.is_fragment) == (SRC4, DST4, 64, False)
    assert ip.payload_length == 25
    th = TCPHeader.parse(pkt[20:])
    assert (th.seq, th.ack, th.flags, th.header_length, th.dst_port) == (42, 7, 0x18, 20, 80)
    assert addresses(pkt) == (SRC4, DST4)


def test_ipv6_udp() -> None:
    pkt = udp(b"x" * 10, v6=True)
    ip = parse_ip(pkt)
    assert isinstance(ip, IPv6Header)
    assert (ip.version, ip.payload_length, ip.protocol, ip.hop_limit) == (6, 18, 17, 64)
    assert (ip.src, ip.dst, ip.total_length) == (SRC6, DST6, len(pkt))
    uh = UDPHeader.parse(pkt[40:])
    assert (uh.length, uh.dst_port) == (18, 53)
    assert addresses(memoryview(pkt)) == (SRC6, DST6)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x45" * 19,
        b"\x75" + bytes(39),
        b"\x41" + bytes(30),
        b"\x45\x00\xff\xff" + bytes(16),
        b"\x60" + bytes(3) + b"\x00\x10" + bytes(34),
    ],
)
def test_malformed_ip(bad: bytes) -> None:
    with pytest.raises(ParseError):
        parse_ip(bad)


@given(st.binary(max_size=80))
def test_parsers_only_raise_parse_error(data: bytes) -> None:
    for parse in (
        parse_ip,
        IPv4Header.parse,
        IPv6Header.parse,
        TCPHeader.parse,
        UDPHeader.parse,
        addresses,
    ):
        with contextlib.suppress(ParseError):
            parse(data)
