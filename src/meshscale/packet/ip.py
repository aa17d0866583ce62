"""Tiny IPv4, IPv6, TCP and UDP header views.

Each `parse` reads the fixed part of one header from the start of a buffer and raises
ParseError if it is malformed; nothing here copies the payload. Offsets used across the package:

    IPv4 (RFC 791)   0 ver/ihl  1 tos  2 total length  4 id  6 flags/frag  8 ttl  9 protocol
                     10 header checksum  12 src  16 dst  20 options...
    IPv6 (RFC 8200)  0 ver/tc/flow  4 payload length  6 next header  7 hop limit  8 src  24 dst
    TCP (RFC 9293)   0 sport  2 dport  4 seq  8 ack  12 data offset  13 flags  14 window
                     16 checksum  18 urgent  20 options...
    UDP (RFC 768)    0 sport  2 dport  4 length  6 checksum
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from typing_extensions import Buffer

from .errors import ParseError

__all__ = [
    "IPPROTO_FRAGMENT",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_IGMP",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_TSMP",
    "IPPROTO_UDP",
    "IPv4Header",
    "IPv6Header",
    "TCPHeader",
    "UDPHeader",
    "addresses",
    "parse_ip",
]

# IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
IPPROTO_ICMP = 1
IPPROTO_IGMP = 2
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44  # the IPv6 fragment extension header (RFC 8200 section 4.5)
IPPROTO_ICMPV6 = 58
IPPROTO_TSMP = 99  # IANA "any private encryption scheme"; Tailscale runs TSMP on it (tsmp.py)
IPPROTO_SCTP = 132

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

IPV4_MF = 0x2000  # "more fragments" in the flags/fragment-offset word
IPV4_DF = 0x4000

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class IPv4Header:
    header_length: int  # in bytes (IHL x 4)
    tos: int
    total_length: int  # in bytes, header included
    identification: int
    flags_fragment: int
    ttl: int
    protocol: int
    checksum: int
    src: bytes
    dst: bytes

    version = 4

    @property
    def payload_length(self) -> int:
        return self.total_length - self.header_length

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_fragment & (IPV4_MF | 0x1FFF))

    @classmethod
    def parse(cls, data: Buffer) -> IPv4Header:
        mv = memoryview(data)
        if mv.nbytes < 20:
            raise ParseError("IPv4 header shorter than 20 bytes")
        vihl, tos, total, ident, ff, ttl, proto, csum, src, dst = _V4.unpack_from(mv)
        if vihl >> 4 != 4:
            raise ParseError(f"not IPv4 (version {vihl >> 4})")
        hl = (vihl & 0xF) * 4
        if hl < 20:
            raise ParseError(f"IPv4 header length {hl} < 20")
        if total < hl or total > mv.nbytes:
            raise ParseError(f"IPv4 total length {total} outside [{hl}, {mv.nbytes}]")
        return cls(hl, tos, total, ident, ff, ttl, proto, csum, src, dst)


@dataclass(frozen=True, slots=True)
class IPv6Header:
    traffic_class: int
    flow_label: int
    payload_length: int  # in bytes, after the 40-byte fixed header
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    version = 6
    header_length = 40

    @property
    def protocol(self) -> int:
        return self.next_header

    @property
    def total_length(self) -> int:
        return 40 + self.payload_length

    @classmethod
    def parse(cls, data: Buffer) -> IPv6Header:
        mv = memoryview(data)
        if mv.nbytes < 40:
            raise ParseError("IPv6 header shorter than 40 bytes")
        vtf, plen, nh, hop, src, dst = _V6.unpack_from(mv)
        if vtf >> 28 != 6:
            raise ParseError(f"not IPv6 (version {vtf >> 28})")
        if 40 + plen > mv.nbytes:
            raise ParseError(f"IPv6 payload length {plen} exceeds the buffer")
        return cls((vtf >> 20) & 0xFF, vtf & 0xFFFFF, plen, nh, hop, src, dst)


@dataclass(frozen=True, slots=True)
class TCPHeader:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    header_length: int  # in bytes (data offset x 4)
    flags: int
    window: int
    checksum: int
    urgent: int

    @classmethod
    def parse(cls, data: Buffer) -> TCPHeader:
        mv = memoryview(data)
        if mv.nbytes < 20:
            raise ParseError("TCP header shorter than 20 bytes")
        sp, dp, seq, ack, doff, flags, win, csum, urg = _TCP.unpack_from(mv)
        hl = (doff >> 4) * 4
        if hl < 20 or hl > mv.nbytes:
            raise ParseError(f"TCP data offset {hl} outside [20, {mv.nbytes}]")
        return cls(sp, dp, seq, ack, hl, flags, win, csum, urg)


@dataclass(frozen=True, slots=True)
class UDPHeader:
    src_port: int
    dst_port: int
    length: int  # in bytes, header included
    checksum: int

    @classmethod
    def parse(cls, data: Buffer) -> UDPHeader:
        mv = memoryview(data)
        if mv.nbytes < 8:
            raise ParseError("UDP header shorter than 8 bytes")
        sp, dp, length, csum = _UDP.unpack_from(mv)
        if length < 8 or length > mv.nbytes:
            raise ParseError(f"UDP length {length} outside [8, {mv.nbytes}]")
        return cls(sp, dp, length, csum)


def parse_ip(data: Buffer) -> IPv4Header | IPv6Header:
    """Parse an IPv4 or IPv6 header by its version nibble."""
    mv = memoryview(data)
    if mv.nbytes < 1:
        raise ParseError("empty packet")
    version = mv[0] >> 4
    if version == 4:
        return IPv4Header.parse(mv)
    if version == 6:
        return IPv6Header.parse(mv)
    raise ParseError(f"unknown IP version {version}")


def addresses(data: Buffer) -> tuple[bytes, bytes]:
    """(src, dst) of an IP packet as 4- or 16-byte strings, for routing on the hot path."""
    mv = memoryview(data)
    n = mv.nbytes
    if n >= 20 and mv[0] >> 4 == 4:
        return bytes(mv[12:16]), bytes(mv[16:20])
    if n >= 40 and mv[0] >> 4 == 6:
        return bytes(mv[8:24]), bytes(mv[24:40])
    raise ParseError("not an IPv4 or IPv6 packet")
