"""The summary of an IP packet that the packet filter reads (tailscale net/packet.Parsed).

Unlike the header views in ``ip``, ``decode`` never raises: it must classify every packet
that comes out of the tunnel, junk included, and is the filter's hot path (one struct unpack
for IPv4). What it cannot vouch for comes back with a pseudo-protocol::

    None            not IPv4/IPv6, or shorter than the fixed header (20 / 40 bytes)
    PROTO_UNKNOWN   a length field past the buffer, a truncated transport header, a
                    fragmented TSMP message, a tiny non-first fragment (RFC 1858), or a
                    literal protocol 0xFF on the wire
    PROTO_FRAGMENT  a non-first fragment (its ports are in the first one)

Addresses are integers (``int(ipaddress.ip_address(...))`` form) so that range checks are
integer comparisons.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .ip import (
    IPPROTO_FRAGMENT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_IGMP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_TSMP,
    IPPROTO_UDP,
    IPV4_MF,
)

__all__ = [
    "MIN_FRAG_BLOCKS",
    "MIN_TSMP_SIZE",
    "PROTO_FRAGMENT",
    "PROTO_UNKNOWN",
    "Parsed",
    "decode",
]

PROTO_FRAGMENT = 0xFF  # upstream's pseudo-protocol for non-first fragments
PROTO_UNKNOWN = 0
# Non-first fragments with an offset below this many 8-byte blocks could overlap the
# transport header (RFC 1858 tiny-fragment attack); they are treated as junk.
MIN_FRAG_BLOCKS = (60 + 20) // 8
MIN_TSMP_SIZE = 7  # bytes of TSMP payload
_MIN_TRANSPORT = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_SCTP: 12}  # header bytes with ports
# version/IHL, total length, flags+offset, protocol, source, destination
_IP4 = struct.Struct("!BxHxxHxBxxII")


class Parsed(NamedTuple):
    """The fields the filter reads from an IP packet (upstream packet.Parsed)."""

    version: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int
    tcp_flags: int
    icmp_type: int = -1  # -1 if not ICMP or shorter than 8 bytes
    icmp_code: int = -1


def decode(b: bytes | memoryview) -> Parsed | None:
    """Decode the headers the filter needs; None if not IPv4/IPv6 or shorter than 20 bytes."""
    n = len(b)
    if n < 20:
        return None
    version = b[0] >> 4
    if version == 4:
        b0, total, frag, proto, src, dst = _IP4.unpack_from(b)
        ihl = (b0 & 0x0F) << 2
        if n < total or ihl < 20 or ihl > total:
            return Parsed(4, PROTO_UNKNOWN, src, dst, 0, 0, 0)
        more, offset = frag & IPV4_MF, frag & 0x1FFF
        if offset:
            proto = PROTO_FRAGMENT if offset >= MIN_FRAG_BLOCKS else PROTO_UNKNOWN
            return Parsed(4, proto, src, dst, 0, 0, 0)
        if proto == IPPROTO_TSMP and more:
            proto = PROTO_UNKNOWN
        return _transport(b, 4, proto, src, dst, ihl, IPPROTO_ICMP)
    if version == 6:
        if n < 40:
            return None
        proto = b[6]
        total = ((b[4] << 8) | b[5]) + 40
        src, dst = int.from_bytes(b[8:24], "big"), int.from_bytes(b[24:40], "big")
        if n < total:
            return Parsed(6, PROTO_UNKNOWN, src, dst, 0, 0, 0)
        off = 40
        if proto == IPPROTO_FRAGMENT:
            if n < 48:
                return Parsed(6, PROTO_UNKNOWN, src, dst, 0, 0, 0)
            offset = ((b[42] << 8) | b[43]) >> 3
            if offset:
                proto = PROTO_FRAGMENT if offset >= MIN_FRAG_BLOCKS else PROTO_UNKNOWN
                return Parsed(6, proto, src, dst, 0, 0, 0)
            proto, off = b[40], 48
        return _transport(b, 6, proto, src, dst, off, IPPROTO_ICMPV6)
    return None


def _transport(
    b: bytes | memoryview, v: int, proto: int, src: int, dst: int, off: int, icmp: int
) -> Parsed:
    sub = len(b) - off
    unknown = Parsed(v, PROTO_UNKNOWN, src, dst, 0, 0, 0)
    if proto == icmp:
        if sub < 4:
            return unknown
        if sub < 8:  # too short for upstream's echo/error tests
            return Parsed(v, proto, src, dst, 0, 0, 0)
        return Parsed(v, proto, src, dst, 0, 0, 0, b[off], b[off + 1])
    if proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        if sub < _MIN_TRANSPORT[proto]:
            return unknown
        sport, dport = (b[off] << 8) | b[off + 1], (b[off + 2] << 8) | b[off + 3]
        flags = b[off + 13] if proto == IPPROTO_TCP else 0
        return Parsed(v, proto, src, dst, sport, dport, flags, -1)
    if proto == IPPROTO_TSMP and sub < MIN_TSMP_SIZE:
        return unknown
    if proto == IPPROTO_IGMP and v == 4 and sub < 8:
        return unknown
    if proto == PROTO_FRAGMENT:
        return unknown  # a literal 0xFF on the wire
    return Parsed(v, proto, src, dst, 0, 0, 0)
