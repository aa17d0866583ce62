"""meshscale.stun: vectors, round trips and the parser's only-ParseError invariant."""

from __future__ import annotations

import ipaddress
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale import stun

# docs/protocol/derp-disco-stun.md §3.1: Tailscale's request with an all-zero transaction ID,
# computed from the field description (not from captured traffic).
ZERO_TXID_REQUEST = bytes.fromhex(
    "000100142112a442000000000000000000000000802200087461696c6e6f6465802800042a804712"
)


def test_request_vector() -> None:
    assert stun.request(bytes(12)) == ZERO_TXID_REQUEST
    assert len(stun.request(b"\x01" * 12)) == 40


def test_request_fingerprint_is_crc32_xor_constant() -> None:
    msg = stun.request(b"abcdefghijkl")
    assert struct.unpack("!I", msg[-4:])[0] == zlib.crc32(msg[:-8]) ^ 0x5354554E


def test_parse_request_tailnode_rules() -> None:
    txid = b"0123456789ab"
    assert stun.parse_request(stun.request(txid), require_tailnode=True) == txid
    other = stun.request(txid, software=b"other sw")
    assert stun.parse_request(other) == txid
    with pytest.raises(stun.ParseError):
        stun.parse_request(other, require_tailnode=True)
    bad = bytearray(stun.request(txid))
    bad[-1] ^= 1
    with pytest.raises(stun.ParseError):
        stun.parse_request(bytes(bad))


def test_parse_generic_request_without_attributes() -> None:
    msg = b"\x00\x01\x00\x00" + stun.MAGIC_COOKIE + b"t" * 12
    assert stun.parse_request(msg) == b"t" * 12
    with pytest.raises(stun.ParseError):
        stun.parse_request(msg, require_tailnode=True)


def test_response_ipv4_vector() -> None:
    # Built by hand: port 0x1234 ^ 0x2112 = 0x3326; 192.0.2.1 ^ 21 12 a4 42 = e1 12 a6 43.
    txid = bytes(range(12))
    want = bytes.fromhex("0101000c2112a442") + txid + bytes.fromhex("0020000800013326e112a643")
    assert stun.response(txid, ipaddress.ip_address("192.0.2.1"), 0x1234) == want
    got = stun.parse_response(want)
    assert got == stun.STUNResponse(txid, ipaddress.IPv4Address("192.0.2.1"), 0x1234)


def test_response_ipv6_and_mapped_unmapping() -> None:
    txid = b"\xff" * 12
    a6 = ipaddress.IPv6Address("2001:db8::5")
    msg = stun.response(txid, a6, 41641)
    assert len(msg) == 20 + 4 + 20
    assert stun.parse_response(msg).addr == a6
    mapped = stun.response(txid, ipaddress.IPv6Address("::ffff:10.0.0.1"), 1)
    assert stun.parse_response(mapped).addr == ipaddress.IPv4Address("10.0.0.1")


def test_mapped_address_fallback_and_xor_wins() -> None:
    txid = b"q" * 12
    plain = (
        struct.pack("!HH", 0x0001, 8) + bytes([0, 1]) + struct.pack("!H", 99) + bytes([1, 2, 3, 4])
    )
    only_plain = struct.pack("!HH", 0x0101, len(plain)) + stun.MAGIC_COOKIE + txid + plain
    assert stun.parse_response(only_plain).addr == ipaddress.IPv4Address("1.2.3.4")
    xor = stun.response(txid, ipaddress.IPv4Address("5.6.7.8"), 7)[20:]
    alt = struct.pack("!H", 0x8020) + xor[2:]
    both = (
        struct.pack("!HH", 0x0101, len(plain) + len(alt)) + stun.MAGIC_COOKIE + txid + plain + alt
    )
    got = stun.parse_response(both)
    assert (got.addr, got.port) == (ipaddress.IPv4Address("5.6.7.8"), 7)


def test_is_stun() -> None:
    assert stun.is_stun(ZERO_TXID_REQUEST)
    assert not stun.is_stun(ZERO_TXID_REQUEST[:19])
    assert not stun.is_stun(b"\x80" + ZERO_TXID_REQUEST[1:])


@pytest.mark.slow
@given(
    st.binary(min_size=12, max_size=12),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 65535),
)
def test_response_roundtrip(txid: bytes, addr: stun.IPAddress, port: int) -> None:
    got = stun.parse_response(stun.response(txid, addr, port))
    want = (
        addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped else addr
    )
    assert (got.txid, got.addr, got.port) == (txid, want, port)


@given(st.binary(min_size=12, max_size=12))
def test_request_roundtrip(txid: bytes) -> None:
    assert stun.parse_request(stun.request(txid), require_tailnode=True) == txid


@given(st.binary(max_size=200))
def test_parsers_only_raise_parse_error(data: bytes) -> None:
    for fn in (stun.parse_request, stun.parse_response):
        try:
            fn(data)
        except stun.ParseError:
            pass


@given(st.binary(max_size=60))
def test_parsers_on_stun_shaped_garbage(tail: bytes) -> None:
    for typ in (0x0001, 0x0101):
        data = struct.pack("!HH", typ, len(tail) & ~3) + stun.MAGIC_COOKIE + bytes(12) + tail
        for fn in (stun.parse_request, stun.parse_response):
            try:
                fn(data)
            except stun.ParseError:
                pass


def test_builders_refuse_misuse() -> None:
    with pytest.raises(ValueError):
        stun.request(b"short")
    with pytest.raises(ValueError):
        stun.response(bytes(12), ipaddress.IPv4Address("1.2.3.4"), 70000)


def _msg(typ: int, attrs: bytes, txid: bytes = bytes(12)) -> bytes:
    return struct.pack("!HH", typ, len(attrs)) + stun.MAGIC_COOKIE + txid + attrs


@pytest.mark.parametrize(
    ("data", "fn"),
    [
        (_msg(0x0001, b"")[:20] + b"\x00\x00\x00", stun.parse_request),  # trailing junk is fine
        (b"\x00\x01\x00\x05" + stun.MAGIC_COOKIE + bytes(12) + bytes(8), stun.parse_request),
        (b"\x00\x01\x00\x08" + stun.MAGIC_COOKIE + bytes(12), stun.parse_request),
        (_msg(0x0101, b""), stun.parse_request),
        (_msg(0x0001, b""), stun.parse_response),
        (_msg(0x0101, struct.pack("!HH", 0x0020, 2) + b"\x00\x01\x00\x00"), stun.parse_response),
        (_msg(0x0101, struct.pack("!HH", 0x0020, 8) + b"\x00\x03" + bytes(6)), stun.parse_response),
        (
            _msg(0x0001, struct.pack("!HHI", 0x8028, 4, 0) + struct.pack("!HH", 0x8022, 0)),
            stun.parse_request,
        ),
    ],
)
def test_malformed_messages(data: bytes, fn: object) -> None:
    if data.endswith(b"\x00\x00\x00") and len(data) == 23:
        assert stun.parse_request(data) == bytes(12)
        return
    with pytest.raises(stun.ParseError):
        fn(data)  # type: ignore[operator]


def test_mapped_address_attribute_with_mapped_ipv6_is_unmapped() -> None:
    v6 = ipaddress.IPv6Address("::ffff:9.8.7.6").packed
    attr = struct.pack("!HH", 0x0001, 20) + b"\x00\x02" + struct.pack("!H", 5) + v6
    got = stun.parse_response(_msg(0x0101, attr))
    assert (got.addr, got.port) == (ipaddress.IPv4Address("9.8.7.6"), 5)
