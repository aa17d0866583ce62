"""Quad-100 on the TUN: DNS packets to 100.100.100.100 / fd7a:115c:a1e0::53 port 53, UDP and
TCP, turned into queries and the answers back into IP packets (tailscale serves these
through netstack; docs/protocol/dns-oidc-console.md §2.2). Performs no I/O.

    match(packet)              cheap test on the TX path: is this for quad-100?
    parse_udp(packet)          -> UDPQuery (client address, DNS payload) or None
    udp_reply(q, payload)      -> the IP/UDP packet that answers it
    TCPServer                  a minimal TCP responder: SYN/ACK, in-order data, 2-byte framed
                               messages, FIN; one flow per client port, idle timeout.

TCPServer is driven by packets from the TUN (`receive`), answers from the resolver (`send`)
and the timer (`handle_timer`). It never retransmits: its segments go straight into the
local kernel through the TUN, which does not lose them; a client's retransmission of data
already received is re-acknowledged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from meshscale.packet import IPPROTO_TCP, IPPROTO_UDP, ParseError, parse_ip
from meshscale.packet.checksum import checksum, pseudo_header_sum

QUAD100_V4_RAW = bytes((100, 100, 100, 100))
QUAD100_V6_RAW = bytes.fromhex("fd7a115ca1e000000000000000000053")
DNS_PORT = 53
TTL = 64
MAX_TCP_QUERY = 4096  # bytes of one request over TCP; larger closes the connection
TCP_IDLE = 45.0  # seconds
MAX_FLOWS = 256
MSS = 1200  # bytes of payload per segment we send (fits the 1280 MTU with IPv6)
WINDOW = 65535

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def match(p: bytes | memoryview) -> bool:
    """True for an IPv4/IPv6 packet addressed to quad-100 (any protocol or port)."""
    n = len(p)
    if n >= 20 and p[0] >> 4 == 4:
        return p[16:20] == QUAD100_V4_RAW
    return n >= 40 and p[0] >> 4 == 6 and p[24:40] == QUAD100_V6_RAW


@dataclass(frozen=True, slots=True)
class UDPQuery:
    client: bytes  # IP, 4 or 16 bytes
    server: bytes  # quad-100 in the same family
    port: int  # client's UDP port
    payload: bytes


FlowKey = tuple[bytes, int, bytes]  # (client ip, client port, server ip)


def _l4(p: bytes) -> tuple[bytes, bytes, int, bytes] | None:
    """(src, dst, protocol, L4 bytes) of an unfragmented packet, else None."""
    try:
        h = parse_ip(p)
    except ParseError:
        return None
    if h.version == 4:
        if h.is_fragment:  # type: ignore[union-attr]
            return None
        proto = h.protocol
    else:
        proto = h.protocol  # extension headers are not followed: not for us then
    return h.src, h.dst, proto, p[h.header_length : h.total_length]


def parse_udp(p: bytes) -> UDPQuery | None:
    got = _l4(p)
    if got is None or got[2] != IPPROTO_UDP or len(got[3]) < 8:
        return None
    src, dst, _, seg = got
    sport, dport, length, _ = struct.unpack_from("!HHHH", seg)
    if dport != DNS_PORT or not 8 <= length <= len(seg):
        return None
    return UDPQuery(src, dst, sport, seg[8:length])


def _ip(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    if len(src) == 4:
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, TTL,
                                    proto, 0, src, dst))  # fmt: skip
        hdr[10:12] = checksum(hdr).to_bytes(2, "big")
        return bytes(hdr) + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, TTL, src, dst) + l4


def _with_l4_checksum(src: bytes, dst: bytes, proto: int, seg: bytearray, at: int) -> bytes:
    csum = checksum(seg, pseudo_header_sum(src, dst, proto, len(seg)))
    seg[at : at + 2] = csum.to_bytes(2, "big")
    return bytes(seg)


def udp_reply(q: UDPQuery, payload: bytes) -> bytes:
    seg = bytearray(struct.pack("!HHHH", DNS_PORT, q.port, 8 + len(payload), 0) + payload)
    return _ip(q.server, q.client, IPPROTO_UDP, _with_l4_checksum(q.server, q.client,
                                                                  IPPROTO_UDP, seg, 6))  # fmt: skip


@dataclass(slots=True)
class _Flow:
    rcv_nxt: int
    snd_nxt: int
    last: float
    buf: bytearray = field(default_factory=bytearray)
    pending: int = 0  # queries handed out and not yet answered
    client_fin: bool = False
    fin_sent: bool = False


class TCPServer:
    """DNS over TCP on quad-100 (see the module docstring). `rand` gives initial sequence
    numbers; `stats` counts every outcome."""

    def __init__(self, rand: Callable[[int], bytes], max_flows: int = MAX_FLOWS) -> None:
        self._rand = rand
        self.max_flows = max_flows
        self.flows: dict[FlowKey, _Flow] = {}
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def receive(self, p: bytes, now: float) -> tuple[list[bytes], list[tuple[FlowKey, bytes]]]:
        """One packet from the TUN -> (packets to write back, DNS queries to answer)."""
        got = _l4(p)
        if got is None or got[2] != IPPROTO_TCP or len(got[3]) < 20:
            self._count("malformed")
            return [], []
        src, dst, _, seg = got
        sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", seg)
        hl = (doff >> 4) * 4
        if dport != DNS_PORT or hl < 20 or hl > len(seg):
            self._count("malformed")
            return [], []
        key: FlowKey = (src, sport, dst)
        data = seg[hl:]
        flow = self.flows.get(key)
        if flags & RST:
            self.flows.pop(key, None)
            return [], []
        if flags & SYN:
            if flow is None:
                if len(self.flows) >= self.max_flows:
                    self._count("flows_full")
                    return [self._seg(key, ack, (seq + 1) & 0xFFFFFFFF, RST | ACK)], []
                iss = int.from_bytes(self._rand(4), "big")
                flow = _Flow(rcv_nxt=(seq + 1) & 0xFFFFFFFF, snd_nxt=(iss + 1) & 0xFFFFFFFF,
                             last=now)  # fmt: skip
                self.flows[key] = flow
                self._count("accepted")
            mss = struct.pack("!BBH", 2, 4, MSS)
            return [self._seg(key, (flow.snd_nxt - 1) & 0xFFFFFFFF, flow.rcv_nxt, SYN | ACK,
                              options=mss)], []  # fmt: skip
        if flow is None:
            if flags & ACK:
                return [self._seg(key, ack, 0, RST)], []
            return [], []
        flow.last = now
        out: list[bytes] = []
        queries: list[tuple[FlowKey, bytes]] = []
        if flow.fin_sent and flags & ACK and ack == flow.snd_nxt and (flow.client_fin or
                                                                        flags & FIN):  # fmt: skip
            if flags & FIN and not flow.client_fin:
                out.append(self._seg(key, flow.snd_nxt, (seq + len(data) + 1) & 0xFFFFFFFF, ACK))
            del self.flows[key]
            return out, []
        if data or flags & FIN:
            if seq != flow.rcv_nxt:
                self._count("out_of_order")
                return [self._seg(key, flow.snd_nxt, flow.rcv_nxt, ACK)], []
            flow.buf += data
            flow.rcv_nxt = (flow.rcv_nxt + len(data)) & 0xFFFFFFFF
            while len(flow.buf) >= 2:
                (n,) = struct.unpack_from("!H", flow.buf)
                if n > MAX_TCP_QUERY:
                    self._count("oversized")
                    del self.flows[key]
                    return [self._seg(key, flow.snd_nxt, flow.rcv_nxt, RST | ACK)], []
                if len(flow.buf) < 2 + n:
                    break
                queries.append((key, bytes(flow.buf[2 : 2 + n])))
                del flow.buf[: 2 + n]
            flow.pending += len(queries)
            if flags & FIN:
                flow.client_fin = True
                flow.rcv_nxt = (flow.rcv_nxt + 1) & 0xFFFFFFFF
            out.append(self._seg(key, flow.snd_nxt, flow.rcv_nxt, ACK))
            out += self._maybe_fin(key, flow)
        return out, queries

    def send(self, key: FlowKey, reply: bytes | None) -> list[bytes]:
        """The answer to a query from `key` (None: no answer) -> segments to write."""
        flow = self.flows.get(key)
        if flow is None:
            return []
        flow.pending = max(0, flow.pending - 1)
        out: list[bytes] = []
        if reply is not None and not flow.fin_sent:
            stream = struct.pack("!H", len(reply)) + reply
            for i in range(0, len(stream), MSS):
                chunk = stream[i : i + MSS]
                out.append(self._seg(key, flow.snd_nxt, flow.rcv_nxt, PSH | ACK, chunk))
                flow.snd_nxt = (flow.snd_nxt + len(chunk)) & 0xFFFFFFFF
        return out + self._maybe_fin(key, flow)

    def handle_timer(self, now: float) -> list[bytes]:
        """Forget flows idle for TCP_IDLE seconds (with a RST)."""
        out = []
        for key, flow in list(self.flows.items()):
            if now - flow.last >= TCP_IDLE:
                out.append(self._seg(key, flow.snd_nxt, flow.rcv_nxt, RST | ACK))
                del self.flows[key]
                self._count("idle_closed")
        return out

    def _maybe_fin(self, key: FlowKey, flow: _Flow) -> list[bytes]:
        if flow.client_fin and not flow.pending and not flow.fin_sent:
            flow.fin_sent = True
            seg = self._seg(key, flow.snd_nxt, flow.rcv_nxt, FIN | ACK)
            flow.snd_nxt = (flow.snd_nxt + 1) & 0xFFFFFFFF
            return [seg]
        return []

    def _seg(self, key: FlowKey, seq: int, ack: int, flags: int, data: bytes = b"",
             options: bytes = b"") -> bytes:  # fmt: skip
        client, port, server = key
        doff = (20 + len(options)) // 4 << 4
        seg = bytearray(struct.pack("!HHIIBBHHH", DNS_PORT, port, seq, ack, doff, flags, WINDOW,
                                    0, 0))  # fmt: skip
        seg += options + data
        return _ip(server, client, IPPROTO_TCP,
                   _with_l4_checksum(server, client, IPPROTO_TCP, seg, 16))  # fmt: skip


__all__ = ["FlowKey", "TCPServer", "UDPQuery", "match", "parse_udp", "udp_reply"]
