"""Read side of TUN offloads: turn one TUN read into plain IP packets (GSO split).

With IFF_VNET_HDR every TUN read is `virtio_net_hdr + IP packet`. The packet is either plain
(gso_type NONE, perhaps with its L4 checksum left unfinished: F_NEEDS_CSUM) or a TCP/UDP
"super-packet" of up to 64 KB that we must cut into gso_size segments
(docs/protocol/wireguard.md §12 item 3; wireguard-go tun/offload_linux.go gsoSplit and
tun/tun_linux.go handleVirtioRead):

    super-packet:  [IP hdr][TCP hdr][payload ............................................]
    segment i:     [IP hdr: id+i, total len, hdr csum][TCP hdr: seq+i*gso, csum][payload i]

hdr_len from the kernel is not trusted (on forwarded traffic it can cover the whole first
packet); it is recomputed as csum_start + TCP data offset x 4 (or + 8 for UDP). FIN and PSH stay
only on the last TCP segment. Every segment gets a complete IP header checksum and a complete L4
checksum (pseudo-header + header + payload): peers without offloads hand our packets to a
kernel that verifies them.

The segments are rows inside a caller-provided arena, written by `_segment.split_rows` (C,
built at install; GIL released) or, without it, all at once with numpy: one broadcast of the
header template, one strided copy of the payload, one column write per changing field (IPv4 id,
TCP seq) and two row-wise sums for the checksums. Each row's length is rounded up to a multiple of
16 and the tail is zeroed, so a row is also a zero-padded WireGuard plaintext (the padding never
appears in the returned views).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
from typing_extensions import Buffer

from .checksum import ones_sum
from .virtio import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    HDR_STRUCT,
    VIRTIO_NET_HDR_LEN,
)

__all__ = ["MAX_SEGMENTS", "SplitStats", "Splitter", "gso_split", "split_room"]

MAX_SEGMENTS = 128  # per super-packet, as wireguard-go (conn.IdealBatchSize)
_MAX_HEADERS = 60 + 60  # in bytes: IPv4 with options + TCP with options (IPv6: 40 + ext + 60)
_ROW_ALIGN = 16  # in bytes: WireGuard pads plaintext to 16
_M = 0xFFFF
_U32_M = np.uint32(_M)
# Host-order sums are the byte-swapped sum on little-endian hosts: x * 256 mod 0xFFFF.
_SWAP = 8 if np.little_endian else 0

_TCP_FIN_PSH = 0x09
_ZEROS = bytes(_ROW_ALIGN)
_ZERO_ROW = memoryview(bytes(65536 + _ROW_ALIGN))  # zero tail of a short last segment
_SCALAR_MAX_SEGMENTS = 2  # at or below: per-segment Python instead of numpy (see split)

try:  # the rows in C (_segment.c, built at install); the numpy rows below are the fallback
    from ._segment import split_rows as _split_rows
except ImportError:  # built without a compiler
    _split_rows = None  # type: ignore[assignment]


def split_room(frame_len: int, max_segments: int = MAX_SEGMENTS) -> int:
    """Arena bytes that splitting a frame of `frame_len` bytes may need past the out offset."""
    return frame_len + max_segments * (_MAX_HEADERS + 2 * _ROW_ALIGN) + _ROW_ALIGN


@dataclass(slots=True)
class SplitStats:
    super_packets: int = 0  # GSO frames split
    segments: int = 0  # packets produced from them
    dropped: dict[str, int] = field(default_factory=dict)  # by reason


class Splitter:
    """Splits vnet-header frames stored in `arena` into IP packets stored in the same arena.

    The arena is owned by the caller (a TUN reader reads frames into it); views returned by
    `split` stay valid until the caller overwrites that part of the arena. Malformed frames are
    dropped and counted in `stats.dropped`; `split` never raises on packet contents.
    """

    def __init__(self, arena: bytearray, max_segments: int = MAX_SEGMENTS) -> None:
        self.arena = arena
        self.max_segments = max_segments
        self.stats = SplitStats()
        # False selects the numpy/Python rows even when the C ones are built (tests compare).
        self.native = _split_rows is not None
        self._mv = memoryview(arena)
        self._np = np.frombuffer(arena, dtype=np.uint8)
        self._idx = np.arange(max_segments, dtype=np.uint32)

    def _drop(self, reason: str) -> None:
        d = self.stats.dropped
        d[reason] = d.get(reason, 0) + 1

    def split(
        self, start: int, length: int, out_offset: int, out: list[memoryview], pad_mtu: int = 0
    ) -> int:
        """Split the frame at arena[start:start+length] (vnet header included).

        Appends the IP packets to `out`. Plain packets are returned in place (their checksum
        finished if the kernel asked for it); segments are written from `out_offset` (rounded up
        to 16). Returns the next free arena offset; the caller must leave
        `split_room(length)` bytes free from `out_offset`, which must be >= the frame's end.

        pad_mtu: if set, each view is extended with zero bytes to WireGuard's padded length,
        min(roundup16(len), pad_mtu) (docs/protocol/wireguard.md §5.1), so it can be encrypted as it
        is.
        """
        a = self._mv
        if length <= VIRTIO_NET_HDR_LEN:
            self._drop("short")
            return out_offset
        flags, gso_type, _, gso, cstart, coff = HDR_STRUCT.unpack_from(a, start)
        p = start + VIRTIO_NET_HDR_LEN
        n = length - VIRTIO_NET_HDR_LEN
        end = p + n
        gt = gso_type & ~GSO_ECN
        if gt == GSO_NONE:
            if flags & F_NEEDS_CSUM:
                at = p + cstart + coff
                if cstart + coff + 2 > n:
                    self._drop("csum_offset")
                    return out_offset
                # The field holds the folded pseudo-header sum; summing over it adds it in.
                c = _M - ones_sum(a[p + cstart : end])
                a[at] = c >> 8
                a[at + 1] = c & 0xFF
            if pad_mtu and n <= pad_mtu:
                padded = min((n + 15) & -16, pad_mtu)
                if padded > n:
                    a[end : p + padded] = _ZEROS[: padded - n]
                    end = p + padded
                    out.append(a[p:end])
                    return end if end > out_offset else out_offset
            out.append(a[p:end])
            return out_offset

        # Validate the super-packet before touching anything.
        ver = a[p] >> 4
        if gt == GSO_UDP_L4:
            proto, l4len, coff_want = 17, 8, 6
        elif gt in (GSO_TCPV4, GSO_TCPV6):
            proto, l4len, coff_want = 6, 0, 16
            if (gt == GSO_TCPV4) != (ver == 4):
                self._drop("gso_version")
                return out_offset
        else:
            self._drop("gso_type")
            return out_offset
        iph = cstart
        if ver == 4:
            if n < 20 or iph != (a[p] & 0xF) * 4 or iph < 20 or a[p + 9] != proto:
                self._drop("ip_header")
                return out_offset
        elif ver == 6:
            if iph < 40 or n < iph or (iph == 40 and a[p + 6] != proto):
                self._drop("ip_header")
                return out_offset
        else:
            self._drop("ip_version")
            return out_offset
        if coff != coff_want or n < iph + 20 - 12 * (proto == 17):
            self._drop("l4_header")
            return out_offset
        if proto == 6:
            l4len = (a[p + iph + 12] >> 4) * 4
            if l4len < 20:
                self._drop("l4_header")
                return out_offset
        hl = iph + l4len
        plen = n - hl
        if plen <= 0 or gso == 0:
            self._drop("no_payload")
            return out_offset
        nfull, rem = divmod(plen, gso)
        nseg = nfull + (rem > 0)
        if nseg > self.max_segments:
            self._drop("too_many_segments")
            return out_offset
        seg_len = hl + gso
        last_len = hl + rem if rem else seg_len
        stride = (seg_len + _ROW_ALIGN - 1) & -_ROW_ALIGN
        off = (out_offset + _ROW_ALIGN - 1) & -_ROW_ALIGN
        if off + nseg * stride > len(self.arena):
            self._drop("no_room")
            return out_offset

        # Header template for a full-size middle segment.
        h = bytearray(a[p : p + hl])
        if ver == 4:
            struct.pack_into("!H", h, 2, seg_len)
            ip_id = (h[4] << 8) | h[5]
            h[4] = h[5] = h[10] = h[11] = 0  # the id is added per row
        else:
            struct.pack_into("!H", h, 4, seg_len - 40)
        h[iph + coff] = h[iph + coff + 1] = 0
        last_flags = 0
        seq0 = 0
        if proto == 6:
            seq0 = int.from_bytes(h[iph + 4 : iph + 8], "big")
            last_flags = h[iph + 13]
            h[iph + 13] = last_flags & ~_TCP_FIN_PSH
        else:
            struct.pack_into("!H", h, iph + 4, 8 + gso)

        if _split_rows is not None and self.native and hl <= 255:
            _split_rows(
                self.arena, p, off, nseg, stride, hl, iph, gso, rem, proto, gso_type & GSO_ECN
            )
        elif nseg <= _SCALAR_MAX_SEGMENTS:
            # A few segments: plain Python beats numpy's fixed cost (about 20 us per frame).
            pbase = int.from_bytes(a[p + 12 : p + 20] if ver == 4 else a[p + 8 : p + 40], "big")
            ecn = gso_type & GSO_ECN
            r = off
            for i in range(nseg):
                ln = seg_len if i < nfull else last_len
                hh = bytearray(h)
                if ver == 4:
                    struct.pack_into("!HH", hh, 2, ln, (ip_id + i) & 0xFFFF)
                    c = _M - int.from_bytes(hh[:iph], "big") % _M
                    hh[10] = c >> 8
                    hh[11] = c & 0xFF
                else:
                    struct.pack_into("!H", hh, 4, ln - 40)
                if proto == 6:
                    struct.pack_into("!I", hh, iph + 4, (seq0 + i * gso) & 0xFFFFFFFF)
                    if i == nseg - 1:
                        hh[iph + 13] = last_flags
                    if ecn and i:
                        hh[iph + 13] &= 0x7F  # CWR: first segment only
                else:
                    struct.pack_into("!H", hh, iph + 4, ln - iph)
                src = p + hl + i * gso
                a[r : r + hl] = hh
                a[r + hl : r + ln] = a[src : src + ln - hl]
                a[r + ln : r + stride] = _ZERO_ROW[: stride - ln]
                # The zero pad makes an odd length sum as RFC 1071 pads it.
                s = int.from_bytes(a[r + iph : r + ln + ((ln - iph) & 1)], "big")
                c = _M - (s + pbase + proto + ln - iph) % _M
                a[r + iph + coff] = c >> 8
                a[r + iph + coff + 1] = c & 0xFF
                r += stride
        else:
            A = self._np
            rows = A[off : off + nseg * stride].reshape(nseg, stride)
            payload = A[p + hl : end]
            rows[:, :hl] = np.frombuffer(h, dtype=np.uint8)
            rows[:nfull, hl:seg_len] = payload[: nfull * gso].reshape(nfull, gso)
            if stride > seg_len:
                rows[:, seg_len:] = 0
            last = rows[nseg - 1]
            if rem:
                last[hl : hl + rem] = payload[nfull * gso :]
                last[hl + rem : seg_len] = 0
                if ver == 4:
                    last[2] = last_len >> 8
                    last[3] = last_len & 0xFF
                else:
                    last[4] = (last_len - 40) >> 8
                    last[5] = (last_len - 40) & 0xFF
                if proto == 17:
                    last[iph + 4] = (8 + rem) >> 8
                    last[iph + 5] = (8 + rem) & 0xFF
            # Checksums are summed in host order (on little-endian hosts the byte-swapped sum,
            # x -> x * 256 mod 0xFFFF, RFC 1071 section 2(B)) and stored back in host order, so
            # nothing is swapped per row; only the scalar terms are shifted.
            idx = self._idx[:nseg]
            h16 = rows.view(np.uint16)
            if proto == 6:
                rows.view(">u4")[:, (iph + 4) >> 2] = idx * np.uint32(gso) + np.uint32(seq0)
                last[iph + 13] = last_flags
                if gso_type & GSO_ECN and nseg > 1:
                    # CWR belongs to the first segment only (RFC 3168 section 6.1.2; the kernel's
                    # tcp_gso_segment). TUN_F_TSO_ECN stays off, so this is defensive.
                    rows[1:, iph + 13] &= 0x7F
            if ver == 4:
                rows.view(">u2")[:, 2] = idx + np.uint32(ip_id)
                ipsum = h16[:, 2].astype(np.uint32) + np.uint32(
                    (int.from_bytes(h[:iph], "big") << _SWAP) % _M
                )
                if rem:
                    ipsum[nseg - 1] += np.uint32(((last_len - seg_len) << _SWAP) % _M)
                h16[:, 5] = _U32_M - ipsum % _U32_M
                pbase = int.from_bytes(a[p + 12 : p + 20], "big")
            else:
                pbase = int.from_bytes(a[p + 8 : p + 40], "big")
            # Pseudo-header: addresses + protocol + L4 length (RFC 793 / RFC 8200 section 8.1).
            sums = h16[:, iph >> 1 : (seg_len + 1) >> 1].sum(axis=1, dtype=np.uint32)
            sums += np.uint32(((pbase + proto + seg_len - iph) << _SWAP) % _M)
            if rem:
                sums[nseg - 1] += np.uint32(((rem - gso) << _SWAP) % _M)
            h16[:, (iph + coff) >> 1] = _U32_M - sums % _U32_M

        if pad_mtu:  # rows are zero-padded to 16 already; views may show it up to the MTU
            if seg_len <= pad_mtu:
                seg_len = min(stride, pad_mtu)
            if last_len <= pad_mtu:
                last_len = min((last_len + 15) & -16, pad_mtu)
        o: int = off + nfull * stride
        out.extend([a[i : i + seg_len] for i in range(off, o, stride)])
        if rem:
            out.append(a[o : o + last_len])
            o += stride
        st = self.stats
        st.super_packets += 1
        st.segments += nseg
        return o


def gso_split(frame: Buffer, max_segments: int = MAX_SEGMENTS) -> tuple[list[bytes], SplitStats]:
    """Split one vnet-header frame into IP packets (allocating; for tests and tools)."""
    data = bytes(frame)
    arena = bytearray(len(data) + split_room(len(data), max_segments))
    arena[: len(data)] = data
    sp = Splitter(arena, max_segments)
    out: list[memoryview] = []
    sp.split(0, len(data), len(data), out)
    return [bytes(v) for v in out], sp.stats
