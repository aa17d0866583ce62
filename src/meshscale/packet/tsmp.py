"""TSMP, Tailscale's in-tunnel message protocol: IP protocol 99, never handed to the OS.

Payloads (docs/protocol/derp-disco-stun.md §7.4; tailscale net/packet/tsmp.go)::

    '!' rejected   proto(1) reason(1) src_port(2) dst_port(2) [flags(1)]
    'p' ping       data(8)                  -> answered with 'o' data(8) peerapi_port(2)
    'a' disco key  key(32)  [newer, capability version >= 144]

``tsmp_pong`` builds the answer to a ping (header copied with source and destination
swapped and the IPv4 ID / IPv6 flow label inverted); ``tsmp_rejected`` builds the notice
for a dropped IPv4 TCP SYN. Builders raise ValueError on bad arguments; readers return None
for anything that is not (well-formed) TSMP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .checksum import checksum
from .ip import IPPROTO_TCP, IPPROTO_TSMP, TCP_ACK, TCP_SYN
from .parsed import decode

__all__ = [
    "REJECT_ACL",
    "REJECT_SHIELDS_UP",
    "TSMP_DISCO_KEY",
    "TSMP_PING",
    "TSMP_PONG",
    "TSMP_REJECTED",
    "TSMPMessage",
    "tsmp_disco_advertisement",
    "tsmp_message",
    "tsmp_ping",
    "tsmp_pong",
    "tsmp_rejected",
]

TSMP_REJECTED, TSMP_PING, TSMP_PONG, TSMP_DISCO_KEY = 0x21, 0x70, 0x6F, 0x61  # ! p o a
REJECT_ACL, REJECT_SHIELDS_UP = ord("A"), ord("S")
_TTL = 64


@dataclass(frozen=True, slots=True)
class TSMPMessage:
    """A parsed TSMP payload; ``body`` is everything after the type byte."""

    type: int
    body: bytes

    @property
    def ping_data(self) -> bytes:
        return self.body[:8]

    @property
    def disco_key(self) -> bytes | None:
        """The announced disco key of an 'a' message, else None."""
        if self.type != TSMP_DISCO_KEY or len(self.body) < 32:
            return None
        return self.body[:32]

    @property
    def peerapi_port(self) -> int:
        """The PeerAPI port of a pong (0 when the 9-byte form omits it)."""
        return int.from_bytes(self.body[8:10], "big") if len(self.body) >= 10 else 0


def _ip_header(src: bytes, dst: bytes, payload_len: int, ident: int) -> bytes:
    if len(src) == 4:
        hdr = bytearray(20)
        hdr[0], hdr[8], hdr[9] = 0x45, _TTL, IPPROTO_TSMP
        hdr[2:4] = (20 + payload_len).to_bytes(2, "big")
        hdr[4:6] = (ident & 0xFFFF).to_bytes(2, "big")
        hdr[12:16], hdr[16:20] = src, dst
        hdr[10:12] = checksum(hdr).to_bytes(2, "big")
        return bytes(hdr)
    first = (6 << 28) | (ident & 0xFFFFF)
    return (
        first.to_bytes(4, "big")
        + payload_len.to_bytes(2, "big")
        + bytes((IPPROTO_TSMP, _TTL))
        + src
        + dst
    )


def _tsmp_payload(b: bytes | memoryview) -> tuple[int, bytes, bytes, int, bytes] | None:
    """(version, src, dst, ident, payload) of an unfragmented TSMP packet, else None."""
    q = decode(b)
    if q is None or q.proto != IPPROTO_TSMP:
        return None
    raw = bytes(b)
    if q.version == 4:
        ihl = (raw[0] & 0x0F) << 2
        total = int.from_bytes(raw[2:4], "big")
        return 4, raw[12:16], raw[16:20], int.from_bytes(raw[4:6], "big"), raw[ihl:total]
    total = 40 + int.from_bytes(raw[4:6], "big")
    label = int.from_bytes(raw[0:4], "big") & 0xFFFFF
    return 6, raw[8:24], raw[24:40], label, raw[40:total]


def tsmp_message(packet: bytes | memoryview) -> TSMPMessage | None:
    """The TSMP message in an IP packet, or None if it is not (well-formed) TSMP."""
    parts = _tsmp_payload(packet)
    if parts is None or not parts[4]:
        return None
    payload = parts[4]
    return TSMPMessage(payload[0], payload[1:])


def tsmp_pong(packet: bytes | memoryview, peerapi_port: int = 0) -> bytes | None:
    """The pong answering a TSMP ping packet, or None if ``packet`` is not a TSMP ping."""
    parts = _tsmp_payload(packet)
    if parts is None or len(parts[4]) < 9 or parts[4][0] != TSMP_PING:
        return None
    _, src, dst, ident, payload = parts
    body = bytes((TSMP_PONG,)) + payload[1:9] + peerapi_port.to_bytes(2, "big")
    return _ip_header(dst, src, len(body), ~ident) + body


def tsmp_ping(src: str, dst: str, data: bytes, ident: int = 0) -> bytes:
    """A TSMP ping packet from ``src`` to ``dst`` (both Tailscale addresses, one family)."""
    if len(data) != 8:
        raise ValueError("TSMP ping data is 8 bytes")
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = bytes((TSMP_PING,)) + data
    return _ip_header(s.packed, d.packed, len(body), ident) + body


def tsmp_disco_advertisement(src: str, dst: str, disco_key: bytes) -> bytes:
    """A TSMP 'a' packet announcing our 32-byte disco key (capability version >= 144)."""
    if len(disco_key) != 32:
        raise ValueError("disco key is 32 bytes")
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = bytes((TSMP_DISCO_KEY,)) + disco_key
    return _ip_header(s.packed, d.packed, len(body), 0) + body


def tsmp_rejected(packet: bytes | memoryview, reason: int = REJECT_ACL) -> bytes | None:
    """The TSMP notice for a dropped IPv4 TCP SYN (docs/protocol/derp-disco-stun.md §7.2 step 7),
    else None.

    IP source is the rejecting node (the SYN's destination); the ports are the
    initiator's source port and the refused destination port.
    """
    q = decode(packet)
    if q is None or q.version != 4 or q.proto != IPPROTO_TCP:
        return None
    if q.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
        return None
    raw = bytes(packet)
    body = bytes((TSMP_REJECTED, IPPROTO_TCP, reason)) + struct.pack(">HH", q.sport, q.dport)
    return _ip_header(raw[16:20], raw[12:16], len(body), 0) + body
