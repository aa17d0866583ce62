"""Write side of TUN offloads: coalesce decrypted packets into TCP/UDP super-packets (GRO).

One TUN write per coalesced packet instead of one per packet (docs/protocol/wireguard.md §12 item 4;
wireguard-go tun/offload_linux.go handleGRO). Over one batch, per flow, a packet is appended to
the flow's newest item when:

- TCP flow = addresses, ports, ACK number and TCP option bytes (so the TCP header length and
  options are equal); UDP flow = addresses and ports;
- IPv4 TOS, TTL and DF (IPv6 traffic class and hop limit) equal the item's; no IPv4 options or
  fragments, no IPv6 extension headers; the IP length field is not beyond the buffer (bytes past
  it, such as WireGuard padding, are trimmed);
- TCP flags are exactly ACK or ACK|PSH, the payload is non-empty, the sequence number follows
  the item's last byte, the item has no PSH yet (PSH may only end a group);
- the payload is not larger than the item's first payload (gso_size), and a smaller one closes
  the item (only the last segment may be short); the result stays within 65535 bytes;
- both the item's first packet and the candidate have valid L4 checksums (checked only when a
  merge is about to happen, and optional: WireGuard's Poly1305 already authenticates them,
  which is why the kernel implementation marks decrypted packets CHECKSUM_UNNECESSARY).

Items only ever grow at the end (no prepend): a WireGuard peer's packets arrive in order from the
per-peer receive path, and appending keeps UDP datagram order by construction.

Output, one entry per packet to write, in order of each item's first packet:

    single:     [ZERO_HDR, packet]
    coalesced:  [vnet hdr {NEEDS_CSUM, TCPV4/TCPV6/UDP_L4, hdr_len, gso_size, csum_start = IP
                 header length, csum_offset 16/6}, rebuilt IP+L4 header, payload 1, payload 2...]

A rebuilt header has the new IPv4 total length and header checksum (or IPv6 payload length), the
UDP length, PSH if the last segment had it, and in the L4 checksum field the folded pseudo-header
sum, not complemented (CHECKSUM_PARTIAL: the kernel finishes it). Each entry is one os.writev.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from typing_extensions import Buffer

from .virtio import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, HDR_STRUCT, ZERO_HDR

__all__ = ["Coalescer", "GROStats", "Packet", "coalesce", "trim_padding"]

# Byte-indexable packet buffers (memoryviews must have format "B").
Packet = bytes | bytearray | memoryview

_M = 0xFFFF
# IPv4 + TCP: ver/ihl, tos, total length, (id), flags/frag, ttl, protocol, (csum),
# addresses + ports, seq, ack, data offset, flags.
_V4 = struct.Struct("!BBHxxHBBxx12sIIBB")
# IPv6 + TCP: ver/tc/flow, payload length, next header, hop limit, addresses + ports, seq,
# ack, data offset, flags.
_V6 = struct.Struct("!IHBB36sIIBB")
_SWAP = 8 if np.little_endian else 0
MAX_IP_PACKET = 65535  # in bytes: IPv4 total length / IPv6 payload length field limit


@dataclass(slots=True)
class GROStats:
    packets: int = 0  # packets seen
    writes: int = 0  # entries produced
    coalesced: int = 0  # packets merged into a super-packet (excluding each group's first)
    bad_checksum: int = 0  # candidates left uncoalesced because a checksum did not verify


class _Item:
    __slots__ = (
        "ack",
        "closed",
        "first",
        "gso",
        "hl",
        "iov",
        "iph",
        "ipkey",
        "next_seq",
        "opts",
        "pkts",
        "psh",
        "size",
        "tcp",
        "unchecked",
    )

    def __init__(
        self,
        first: Packet,
        iov: list[Buffer],
        iph: int,
        hl: int,
        gso: int,
        tcp: bool,
        ipkey: int,
        ack: int,
        opts: Packet,
    ) -> None:
        self.first = first
        self.ipkey = ipkey
        self.ack = ack
        self.opts = opts
        self.pkts = [first]
        self.iov = iov
        self.iph = iph
        self.hl = hl
        self.gso = gso
        self.tcp = tcp
        self.size = gso  # payload bytes so far
        self.next_seq = 0
        self.psh = False
        self.closed = False
        self.unchecked = True


def _l4_valid(p: Packet, iph: int, proto: int) -> bool:
    # Addresses and L4 are contiguous from offset 12 (IPv4) or 8 (IPv6): one big-int sum.
    mv = memoryview(p)
    start = 12 if iph == 20 else 8
    n = mv.nbytes
    v = int.from_bytes(mv[start:], "big")
    if (n - start) & 1:
        v <<= 8
    return (v + proto + n - iph) % _M == 0


class Coalescer:
    """TCP (and optionally UDP) GRO over batches of IP packets. Performs no I/O.

    `udp` should only be on when the TUN accepts UDP_L4 GSO writes (TUN_F_USO4/6 enabled).
    """

    def __init__(self, *, udp: bool = False, verify_checksums: bool = True) -> None:
        self.udp = udp
        self.verify_checksums = verify_checksums
        self.stats = GROStats()

    def coalesce(self, packets: Sequence[Packet]) -> list[list[Buffer]]:
        """Group `packets` into write entries (see the module docstring). Never raises."""
        outs, merged = self._group(packets, False)
        if merged and self.verify_checksums and not _all_valid(merged):
            # Rare: some checksum is wrong. Redo the batch deciding packet by packet, which
            # keeps the good packets coalescing around the bad ones (as wireguard-go does).
            outs, merged = self._group(packets, True)
        for item in merged:
            _finish(item)
        st = self.stats
        st.packets += len(packets)
        st.writes += len(outs)
        st.coalesced += len(packets) - len(outs)
        return outs

    def _group(
        self, packets: Sequence[Packet], check: bool
    ) -> tuple[list[list[Buffer]], list[_Item]]:
        outs: list[list[Buffer]] = []
        # Flow = addresses + ports (one bytes key); the ACK number, TCP options and IP fields
        # are compared against the flow's newest item, and a mismatch starts a new item.
        flows: dict[bytes, _Item] = {}
        merged: list[_Item] = []
        udp = self.udp
        v4, v6 = _V4.unpack_from, _V6.unpack_from
        bad = 0
        for p in packets:
            n = len(p)
            if n < 40:
                outs.append([ZERO_HDR, p])
                continue
            b0 = p[0]
            if b0 == 0x45:
                _, tos, tot, ff, ttl, proto, ap, seq, ack, doff, fl = v4(p)
                # WireGuard padding left on: trim it (docs/protocol/wireguard.md §5.2 step 8)
                if tot != n:
                    if not 40 <= tot < n:
                        outs.append([ZERO_HDR, p])
                        continue
                    p = p[:tot]
                    n = tot
                # No fragments (MF or offset); DF, TOS and TTL must match within a flow.
                if ff & 0x3FFF:
                    outs.append([ZERO_HDR, p])
                    continue
                iph = 20
                ipkey = (tos << 16) | (ff & 0xE000) | ttl
            elif b0 >> 4 == 6 and n >= 60:
                vtf, plen6, proto, hop, ap, seq, ack, doff, fl = v6(p)
                if plen6 + 40 != n:
                    if not 20 <= plen6 < n - 40:
                        outs.append([ZERO_HDR, p])
                        continue
                    p = p[: plen6 + 40]
                    n = plen6 + 40
                iph = 40
                ipkey = ((vtf >> 20) << 8) | hop  # version + traffic class, hop limit
            else:
                outs.append([ZERO_HDR, p])
                continue

            if proto == 6:
                hl = iph + (doff >> 4) * 4
                if hl < iph + 20 or n <= hl or (fl != 0x10 and fl != 0x18):
                    outs.append([ZERO_HDR, p])
                    continue
                opts = p[iph + 20 : hl] if hl > iph + 20 else b""
                tcp = True
            elif proto == 17 and udp:
                hl = iph + 8
                seq = ack = fl = 0
                opts = b""
                tcp = False
            else:
                outs.append([ZERO_HDR, p])
                continue

            plen = n - hl
            item = flows.get(ap)
            if (
                item is not None
                and item.next_seq == seq
                and not item.closed
                and plen <= item.gso
                and item.size + plen <= MAX_IP_PACKET - hl
                and item.ack == ack
                and item.ipkey == ipkey
                and item.hl == hl
                and item.tcp is tcp
                and item.opts == opts
            ):
                ok = True
                if check:
                    if item.unchecked:
                        item.unchecked = False
                        if not _l4_valid(item.first, iph, proto):
                            item.closed = True
                            ok = False
                    if ok and not _l4_valid(p, iph, proto):
                        bad += 1
                        outs.append([ZERO_HDR, p])
                        continue
                if ok:
                    pk = item.pkts
                    if len(pk) == 1:
                        merged.append(item)
                    pk.append(p)
                    item.size += plen
                    if tcp:
                        item.next_seq = (seq + plen) & 0xFFFFFFFF
                    if plen < item.gso or fl == 0x18:
                        item.closed = True
                        item.psh = fl == 0x18
                    continue
                bad += 1

            iov: list[Buffer] = [ZERO_HDR, p]
            outs.append(iov)
            item = _Item(p, iov, iph, hl, plen, tcp, ipkey, ack, opts)
            if tcp:
                item.next_seq = (seq + plen) & 0xFFFFFFFF
                item.closed = fl == 0x18
            flows[ap] = item
        self.stats.bad_checksum += bad
        return outs, merged


def _all_valid(merged: list[_Item]) -> bool:
    """Verify the L4 checksum of every packet in `merged` with one numpy pass.

    The packets are joined into one buffer; np.add.reduceat sums each packet's addresses + L4
    bytes (contiguous from offset 12 in IPv4, 8 in IPv6) as 16-bit words.
    """
    pkts: list[Packet] = []
    starts: list[int] = []
    adds: list[int] = []
    for item in merged:
        k = len(item.pkts)
        pkts += item.pkts
        starts += [12 if item.iph == 20 else 8] * k
        adds += [(6 if item.tcp else 17) - item.iph] * k
    lens = np.fromiter(map(len, pkts), dtype=np.intp, count=len(pkts))
    if (lens & 1).any():  # an odd packet would misalign the words after it: pad each one
        parts: list[Packet] = []
        for p in pkts:
            parts.append(p)
            if len(p) & 1:
                parts.append(b"\0")
        padded = lens + (lens & 1)
    else:
        parts, padded = pkts, lens
    arr = np.frombuffer(b"".join(parts) + b"\0\0", dtype=np.uint16)
    ends = np.cumsum(padded)
    idx = np.empty(2 * len(pkts), dtype=np.intp)
    idx[0::2] = (ends - padded + np.array(starts)) >> 1
    idx[1::2] = ends >> 1
    sums = np.add.reduceat(arr, idx, dtype=np.uint32)[0::2]
    # Host-order words give the sum times 256 on little-endian hosts (see tso.py).
    sums += ((lens + np.array(adds)) << _SWAP).astype(np.uint32)
    return not (sums % np.uint32(_M)).any()


def _finish(item: _Item) -> None:
    """Turn a merged item's iov into [vnet hdr, rebuilt headers, payloads...]."""
    iph, hl = item.iph, item.hl
    first = memoryview(item.first)
    h = bytearray(first[:hl])
    l4_total = hl - iph + item.size
    if iph == 20:
        tot = hl + item.size
        h[2] = tot >> 8
        h[3] = tot & 0xFF
        h[10] = h[11] = 0
        c = _M - int.from_bytes(h[:20], "big") % _M
        h[10] = c >> 8
        h[11] = c & 0xFF
        addr_sum = int.from_bytes(h[12:20], "big")
    else:
        h[4] = l4_total >> 8
        h[5] = l4_total & 0xFF
        addr_sum = int.from_bytes(h[8:40], "big")
    if item.tcp:
        if item.psh:
            h[iph + 13] |= 0x08
        ps = (addr_sum + 6 + l4_total) % _M
        h[iph + 16] = ps >> 8
        h[iph + 17] = ps & 0xFF
        gso_type = GSO_TCPV4 if iph == 20 else GSO_TCPV6
        coff = 16
    else:
        h[iph + 4] = l4_total >> 8
        h[iph + 5] = l4_total & 0xFF
        ps = (addr_sum + 17 + l4_total) % _M
        h[iph + 6] = ps >> 8
        h[iph + 7] = ps & 0xFF
        gso_type = GSO_UDP_L4
        coff = 6
    # Payload slices: a copy for bytes (cheaper than creating a view), a view for memoryviews.
    item.iov[:] = [HDR_STRUCT.pack(F_NEEDS_CSUM, gso_type, hl, item.gso, iph, coff), h]
    item.iov += [p[hl:] for p in item.pkts]


def trim_padding(p: Packet) -> Packet:
    """The packet without bytes past its IP length (WireGuard padding): the rule
    Coalescer._group applies inline, with the header fields it has already unpacked, for a
    packet written alone (io/tun.py's lone write)."""
    n = len(p)
    if n >= 40:
        if p[0] == 0x45:
            tot = (p[2] << 8) | p[3]
            if 40 <= tot < n:
                return p[:tot]
        elif p[0] >> 4 == 6 and n >= 60:
            tot = ((p[4] << 8) | p[5]) + 40
            if 60 <= tot < n:
                return p[:tot]
    return p


def coalesce(
    packets: Sequence[Packet], *, udp: bool = False, verify_checksums: bool = True
) -> list[list[Buffer]]:
    """One-shot GRO over `packets` (see Coalescer)."""
    return Coalescer(udp=udp, verify_checksums=verify_checksums).coalesce(packets)
