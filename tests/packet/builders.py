"""Packet builders and a slow, independent checksum reference for the packet tests."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from meshscale.packet import parse_ip
from meshscale.packet.virtio import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VirtioNetHdr

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")


def ref_sum(data: bytes) -> int:
    """RFC 1071 end-around-carry sum, word by word (deliberately naive)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (w,) in struct.iter_unpack("!H", data):
        total += w
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def l4_ok(pkt: bytes) -> bool:
    """True if the packet's IPv4 header checksum and TCP/UDP checksum verify (slow path)."""
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0xF) * 4
        if ref_sum(pkt[:ihl]) != 0xFFFF:
            return False
        src, dst, proto, l4 = pkt[12:16], pkt[16:20], pkt[9], pkt[ihl:]
    else:
        src, dst, proto, l4 = pkt[8:24], pkt[24:40], pkt[6], pkt[40:]
    if proto == 17 and struct.unpack("!H", l4[6:8])[0] == 0:
        return False  # we always send UDP checksums
    return ref_sum(ref_pseudo(src, dst, proto, len(l4)) + l4) == 0xFFFF


def ip4(payload: bytes, proto: int, *, ident: int = 7, ttl: int = 64, tos: int = 0) -> bytes:
    hdr = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, 0x4000, ttl, proto, 0, SRC4, DST4
        )
    )
    c = 0xFFFF - ref_sum(bytes(hdr))
    struct.pack_into("!H", hdr, 10, c)
    return bytes(hdr) + payload


def ip6(payload: bytes, proto: int, *, hop: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, hop, SRC6, DST6) + payload


def tcp(
    payload: bytes,
    *,
    seq: int,
    flags: int = 0x10,
    ack: int = 1000,
    options: bytes = b"",
    v6: bool = False,
    csum: bool = True,
    sport: int = 5000,
    dport: int = 80,
) -> bytes:
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    h = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 500, 0, 0))
    seg = bytes(h) + options + payload
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    if csum:
        c = 0xFFFF - ref_sum(ref_pseudo(src, dst, 6, len(seg)) + seg)
        seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    return ip6(seg, 6) if v6 else ip4(seg, 6)


def udp(payload: bytes, *, v6: bool = False, sport: int = 5000, dport: int = 53) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    c = 0xFFFF - ref_sum(ref_pseudo(src, dst, 17, len(seg)) + seg)
    seg = seg[:6] + struct.pack("!H", c or 0xFFFF) + seg[8:]
    return ip6(seg, 17) if v6 else ip4(seg, 17)


def partial(pkt: bytes) -> bytes:
    """Put the folded pseudo-header sum (not complemented) in the L4 checksum field."""
    b = bytearray(pkt)
    if b[0] >> 4 == 4:
        ihl = (b[0] & 0xF) * 4
        src, dst, proto = b[12:16], b[16:20], b[9]
    else:
        ihl, src, dst, proto = 40, b[8:24], b[24:40], b[6]
    at = ihl + (16 if proto == 6 else 6)
    ps = ref_sum(ref_pseudo(bytes(src), bytes(dst), proto, len(b) - ihl))
    struct.pack_into("!H", b, at, ps)
    return bytes(b)


def super_tcp(
    payload: bytes,
    gso: int,
    *,
    v6: bool = False,
    seq: int = 1,
    flags: int = 0x18,
    options: bytes = b"",
) -> bytes:
    """A TSO frame as the kernel hands it over: vnet header + one big packet, CHECKSUM_PARTIAL."""
    pkt = partial(tcp(payload, seq=seq, flags=flags, options=options, v6=v6))
    iph = 40 if v6 else 20
    hdr = VirtioNetHdr(
        F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, iph + 20 + len(options), gso, iph, 16
    )
    return hdr.pack() + pkt


def super_udp(payload: bytes, gso: int, *, v6: bool = False) -> bytes:
    pkt = partial(udp(payload, v6=v6))
    iph = 40 if v6 else 20
    return VirtioNetHdr(F_NEEDS_CSUM, GSO_UDP_L4, iph + 8, gso, iph, 6).pack() + pkt


def kernel_receive(entry: list[Any]) -> bytes:
    """What the kernel makes of one TUN write: finish CHECKSUM_PARTIAL, then it must verify."""
    frame = bytearray(b"".join(bytes(b) for b in entry))
    hdr = VirtioNetHdr.unpack(frame)
    pkt = frame[10:]
    if hdr.flags & F_NEEDS_CSUM:
        at = hdr.csum_start + hdr.csum_offset
        c = 0xFFFF - ref_sum(bytes(pkt[hdr.csum_start :]))
        struct.pack_into("!H", pkt, at, c or 0xFFFF)
    else:
        assert hdr == VirtioNetHdr()
    assert l4_ok(bytes(pkt))
    ip = parse_ip(pkt)
    assert ip.total_length == len(pkt)
    return bytes(pkt)


# IP protocol numbers and TCP flags, written out here rather than taken from the code.
TCP, UDP, ICMP4, ICMP6, SCTP, TSMP = 6, 17, 1, 58, 132, 99
SYN, ACK = 0x02, 0x10


def ip_packet(
    src: str,
    dst: str,
    proto: int,
    *,
    sport: int = 40000,
    dport: int = 80,
    flags: int = SYN,
    icmp: tuple[int, int] = (8, 0),
    frag: int = 0,
    more: bool = False,
    payload: bytes = b"",
    truncate: int | None = None,
) -> bytes:
    """An IPv4/IPv6 packet of ``proto`` with a minimal transport header (fragments: ``frag``
    in 8-byte blocks, ``more`` = MF; IPv6 fragments get a fragment extension header)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if proto == TCP:
        body = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 0, 0, 0)
    elif proto == UDP:
        body = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    elif proto == SCTP:
        body = struct.pack("!HHII", sport, dport, 0, 0)
    elif proto in (ICMP4, ICMP6):
        body = struct.pack("!BBHHH", icmp[0], icmp[1], 0, 0, 0)
    elif proto == TSMP:
        body = b"p" + bytes(8)
    else:
        body = bytes(8)
    body += payload
    if s.version == 4:
        fl = (0x2000 if more else 0) | frag
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, fl, 64, proto, 0,
                          s.packed, d.packed)  # fmt: skip
    else:
        nh = proto
        if frag or more:
            body = struct.pack("!BBHI", proto, 0, (frag << 3) | int(more), 0) + body
            nh = 44
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), nh, 64, s.packed, d.packed)
    out = hdr + body
    return out[:truncate] if truncate is not None else out
