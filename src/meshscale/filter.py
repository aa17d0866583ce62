"""The packet filter: control's FilterRules compiled to fast matches over raw IP packets.

Inbound evaluation (spec derp-disco-stun.md 7.2, tailscale wgengine/filter)::

    pre:   empty -> accept (WireGuard keepalive); < 20 bytes, unknown protocol,
           multicast or link-local destination (but 169.254.169.254) -> drop;
           non-first fragment -> accept
    dst must be one of our local nets, else drop
    ICMP:  echo reply / error -> accept; else any rule with src and dst -> accept
    TCP:   not a pure SYN -> accept; SYN -> rule with proto, src, dst IP and port
    UDP, SCTP: reverse of an outbound flow (LRU of 512) -> accept; else as TCP SYN
    TSMP (99) -> accept
    other: rule with proto, src and a dst entry covering every port

Outbound packets are never filtered by rules; UDP/SCTP ones record their reverse
5-tuple so that replies come back (section 7.3). A Filter with no rules denies
every new inbound flow (shields up is the same); ``Filter.allow_all`` is the
allow-all sentinel.

TSMP (section 7.4), IP protocol 99, lives inside the tunnel and never reaches the OS::

    '!' rejected   proto(1) reason(1) src_port(2) dst_port(2) [flags(1)]
    'p' ping       data(8)                  -> answered with 'o' data(8) peerapi_port(2)
    'a' disco key  key(32)  [newer, capability version >= 144]

``tsmp_pong`` builds the answer to a ping (header copied with source and destination
swapped and the IPv4 ID / IPv6 flow label inverted); ``tsmp_rejected`` builds the
notice for a dropped IPv4 TCP SYN.

Errors::

    FilterError (ValueError)   a FilterRule that cannot be compiled (the whole filter
                               is refused, as the official client does)

Performs no I/O; the flow cache is the only state.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from meshscale.tailcfg import PORT_RANGE_ANY, FilterRule, NetPortRange

PROTO_ICMP4 = 1
PROTO_IGMP = 2
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58
PROTO_SCTP = 132
PROTO_TSMP = 99
PROTO_FRAGMENT = 0xFF  # upstream's pseudo-protocol for non-first fragments
PROTO_UNKNOWN = 0
IP6_FRAG_HEADER = 44
DEFAULT_PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_ICMP4, PROTO_ICMP6)
ALL_PORTS = (0, 65535)

# Non-first fragments with an offset below this many 8-byte blocks could overlap the
# transport header (RFC 1858 tiny-fragment attack); they are treated as junk.
MIN_FRAG_BLOCKS = (60 + 20) // 8
MIN_TSMP_SIZE = 7  # bytes of TSMP payload
# Reverse flows remembered for UDP/SCTP return traffic (spec 7.3); an LRU so that a
# flood of outbound flows only evicts the oldest.
FLOW_CACHE_SIZE = 512
_TCP_SYN, _TCP_ACK = 0x02, 0x10
ICMP4_ERRORS = frozenset({3, 11, 0x12})  # 0x12 as coded upstream (RFC 792 says 12)
ICMP6_ERRORS = frozenset({1, 2, 3, 4})
_GCP_METADATA = int(ipaddress.IPv4Address("169.254.169.254"))
_MIN_TRANSPORT = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_SCTP: 12}  # header bytes with ports
# version/IHL, total length, flags+offset, protocol, source, destination
_IP4 = struct.Struct("!BxHxxHxBxxII")


class FilterError(ValueError):
    """A FilterRule that cannot be compiled."""


class Response(Enum):
    ACCEPT = "accept"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Decision:
    response: Response
    reason: str

    @property
    def accepted(self) -> bool:
        return self.response is Response.ACCEPT


_DECISIONS: dict[tuple[Response, str], Decision] = {}


def _decide(response: Response, reason: str) -> Decision:
    """Decisions are immutable, so the hot path shares one object per (response, reason)."""
    d = _DECISIONS.get((response, reason))
    if d is None:
        d = _DECISIONS.setdefault((response, reason), Decision(response, reason))
    return d


_Range = tuple[int, int]  # inclusive integer address range


@dataclass(frozen=True, slots=True)
class Match:
    """One compiled rule for one address family (tailscale filtertype.Match)."""

    protos: frozenset[int]
    srcs: tuple[_Range, ...]
    src_caps: tuple[str, ...]
    dsts: tuple[tuple[int, int, int, int], ...]  # (ip_lo, ip_hi, port_lo, port_hi)


CapTest = Callable[[object, str], bool]  # (source ip_address, capability) -> granted


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


def _ip_range(text: str, family: int) -> _Range | None:
    """Parse one IP entry for ``family``; None if the entry is of the other family."""
    bits = 32 if family == 4 else 128
    if text == "*":
        return (0, (1 << bits) - 1)
    try:
        if "-" in text:
            a_text, b_text = text.split("-", 1)
            a, b = ipaddress.ip_address(a_text), ipaddress.ip_address(b_text)
            if a.version != b.version or int(a) > int(b):
                raise FilterError(f"bad IP range {text!r}")
            return (int(a), int(b)) if a.version == family else None
        if "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            if net.version != family:
                return None
            return (int(net.network_address), int(net.broadcast_address))
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise FilterError(f"bad IP {text!r}: {exc}") from exc
    return (int(ip), int(ip)) if ip.version == family else None


def compile_rules(rules: Iterable[FilterRule], family: int) -> list[Match]:
    """Compile FilterRules to matches for one family. Raises FilterError."""
    out: list[Match] = []
    for rule in rules:
        if rule.SrcBits:
            raise FilterError("SrcBits is deprecated and refused")
        protos = frozenset(p for p in rule.IPProto if 0 <= p <= 255) or frozenset(DEFAULT_PROTOS)
        srcs: list[_Range] = []
        caps: list[str] = []
        for s in rule.SrcIPs:
            if s.startswith("cap:"):
                caps.append(s[4:])
            elif (r := _ip_range(s, family)) is not None:
                srcs.append(r)
        dsts: list[tuple[int, int, int, int]] = []
        for d in rule.DstPorts:
            if d.Bits is not None:
                raise FilterError("DstPorts.Bits is deprecated and refused")
            first, last = d.Ports.First, d.Ports.Last
            if not 0 <= first <= last <= 65535:
                raise FilterError(f"bad port range {first}-{last}")
            if (r := _ip_range(d.IP, family)) is not None:
                dsts.append((r[0], r[1], first, last))
        if (srcs or caps) and dsts:
            out.append(Match(protos, tuple(srcs), tuple(caps), tuple(dsts)))
    return out


def parse(b: bytes | memoryview) -> Parsed | None:
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
        more, offset = frag & 0x2000, frag & 0x1FFF
        if offset:
            proto = PROTO_FRAGMENT if offset >= MIN_FRAG_BLOCKS else PROTO_UNKNOWN
            return Parsed(4, proto, src, dst, 0, 0, 0)
        if proto == PROTO_TSMP and more:
            proto = PROTO_UNKNOWN
        return _transport(b, 4, proto, src, dst, ihl, PROTO_ICMP4)
    if version == 6:
        if n < 40:
            return None
        proto = b[6]
        total = ((b[4] << 8) | b[5]) + 40
        src, dst = int.from_bytes(b[8:24], "big"), int.from_bytes(b[24:40], "big")
        if n < total:
            return Parsed(6, PROTO_UNKNOWN, src, dst, 0, 0, 0)
        off = 40
        if proto == IP6_FRAG_HEADER:
            if n < 48:
                return Parsed(6, PROTO_UNKNOWN, src, dst, 0, 0, 0)
            offset = ((b[42] << 8) | b[43]) >> 3
            if offset:
                proto = PROTO_FRAGMENT if offset >= MIN_FRAG_BLOCKS else PROTO_UNKNOWN
                return Parsed(6, proto, src, dst, 0, 0, 0)
            proto, off = b[40], 48
        return _transport(b, 6, proto, src, dst, off, PROTO_ICMP6)
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
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        if sub < _MIN_TRANSPORT[proto]:
            return unknown
        sport, dport = (b[off] << 8) | b[off + 1], (b[off + 2] << 8) | b[off + 3]
        flags = b[off + 13] if proto == PROTO_TCP else 0
        return Parsed(v, proto, src, dst, sport, dport, flags, -1)
    if proto == PROTO_TSMP and sub < MIN_TSMP_SIZE:
        return unknown
    if proto == PROTO_IGMP and v == 4 and sub < 8:
        return unknown
    if proto == PROTO_FRAGMENT:
        return unknown  # a literal 0xFF on the wire
    return Parsed(v, proto, src, dst, 0, 0, 0)


# ---- TSMP ----

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
        hdr[0], hdr[8], hdr[9] = 0x45, _TTL, PROTO_TSMP
        hdr[2:4] = (20 + payload_len).to_bytes(2, "big")
        hdr[4:6] = (ident & 0xFFFF).to_bytes(2, "big")
        hdr[12:16], hdr[16:20] = src, dst
        total = sum(int.from_bytes(hdr[i : i + 2], "big") for i in range(0, 20, 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        hdr[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
        return bytes(hdr)
    first = (6 << 28) | (ident & 0xFFFFF)
    return (
        first.to_bytes(4, "big")
        + payload_len.to_bytes(2, "big")
        + bytes((PROTO_TSMP, _TTL))
        + src
        + dst
    )


def _tsmp_payload(b: bytes | memoryview) -> tuple[int, bytes, bytes, int, bytes] | None:
    """(version, src, dst, ident, payload) of an unfragmented TSMP packet, else None."""
    q = parse(b)
    if q is None or q.proto != PROTO_TSMP:
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
    """The TSMP notice for a dropped IPv4 TCP SYN (spec 7.2 step 7), else None.

    IP source is the rejecting node (the SYN's destination); the ports are the
    initiator's source port and the refused destination port.
    """
    q = parse(packet)
    if q is None or q.version != 4 or q.proto != PROTO_TCP:
        return None
    if q.tcp_flags & (_TCP_SYN | _TCP_ACK) != _TCP_SYN:
        return None
    raw = bytes(packet)
    body = bytes((TSMP_REJECTED, PROTO_TCP, reason)) + struct.pack(">HH", q.sport, q.dport)
    return _ip_header(raw[16:20], raw[12:16], len(body), 0) + body


class Filter:
    """Inbound packet filter plus the outbound flow cache. Performs no I/O.

    Driven by: ``run_in`` for packets decrypted from WireGuard, ``run_out`` for
    packets from the local OS headed into the tunnel.

    :param rules: control's PacketFilter; an empty list denies every new flow.
    :param local_nets: our Tailscale addresses and advertised routes (as networks).
    :param has_cap: optional test for ``cap:`` sources.
    :param shields_up: refuse every new inbound flow whatever the rules say.
    """

    def __init__(
        self,
        rules: Sequence[FilterRule],
        local_nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str],
        *,
        has_cap: CapTest | None = None,
        shields_up: bool = False,
    ) -> None:
        self.shields_up = shields_up
        if shields_up:
            rules = []  # shields up: no new inbound flows at all (spec 7.2 step 5)
        self._m = {4: compile_rules(rules, 4), 6: compile_rules(rules, 6)}
        self._local: dict[int, list[_Range]] = {4: [], 6: []}
        for n in local_nets:
            net = ipaddress.ip_network(n) if isinstance(n, str) else n
            self._local[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._has_cap = has_cap
        self._flows: OrderedDict[tuple[int, int, int, int, int], None] = OrderedDict()

    @classmethod
    def allow_all(
        cls, local_nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str]
    ) -> Filter:
        rule = FilterRule(SrcIPs=["*"], DstPorts=[NetPortRange(IP="*", Ports=PORT_RANGE_ANY)])
        return cls([rule], local_nets)

    # ---- decisions ----

    def run_in(self, packet: bytes | memoryview) -> Decision:
        """Decide on a packet arriving from a peer."""
        if len(packet) == 0:
            return _decide(Response.ACCEPT, "keepalive")
        q = parse(packet)
        if q is None:
            return _decide(Response.DROP, "too short" if len(packet) < 20 else "not ip")
        pre = self._pre(q)
        if pre is not None:
            return pre
        dst = q.dst
        for lo, hi in self._local[q.version]:
            if lo <= dst <= hi:
                break
        else:
            return _decide(Response.DROP, "destination not allowed")
        ms = self._m[q.version]
        p = q.proto
        if p == (PROTO_ICMP4 if q.version == 4 else PROTO_ICMP6):
            errors = ICMP4_ERRORS if p == PROTO_ICMP4 else ICMP6_ERRORS
            reply = 0 if p == PROTO_ICMP4 else 129
            if (q.icmp_type == reply and q.icmp_code == 0) or q.icmp_type in errors:
                return _decide(Response.ACCEPT, "icmp response ok")
            if self._match_ips_only(ms, q):
                return _decide(Response.ACCEPT, "icmp ok")
        elif p == PROTO_TCP:
            if q.tcp_flags & (_TCP_SYN | _TCP_ACK) != _TCP_SYN:
                return _decide(Response.ACCEPT, "tcp non-syn")
            if self._match(ms, q):
                return _decide(Response.ACCEPT, "tcp ok")
        elif p in (PROTO_UDP, PROTO_SCTP):
            key = (p, q.src, q.sport, q.dst, q.dport)
            if key in self._flows:
                self._flows.move_to_end(key)
                return _decide(Response.ACCEPT, "cached")
            if self._match(ms, q):
                return _decide(Response.ACCEPT, "ok")
        elif p == PROTO_TSMP:
            return _decide(Response.ACCEPT, "tsmp ok")
        else:
            if self._match_all_ports(ms, q):
                return _decide(Response.ACCEPT, "other-portless ok")
            return _decide(Response.DROP, f"unknown-protocol-{p}")
        return _decide(Response.DROP, "no rules matched")

    def run_out(self, packet: bytes | memoryview) -> Decision:
        """Decide on a packet we are sending; UDP/SCTP flows are remembered for replies."""
        if len(packet) == 0:
            return _decide(Response.ACCEPT, "keepalive")
        q = parse(packet)
        if q is None:
            return _decide(Response.DROP, "too short" if len(packet) < 20 else "not ip")
        pre = self._pre(q)
        if pre is not None:
            return pre
        if q.proto in (PROTO_UDP, PROTO_SCTP):
            key = (q.proto, q.dst, q.dport, q.src, q.sport)  # reversed: the reply's tuple
            self._flows[key] = None
            self._flows.move_to_end(key)
            while len(self._flows) > FLOW_CACHE_SIZE:
                self._flows.popitem(last=False)
        return _decide(Response.ACCEPT, "ok out")

    def check(self, src: str, dst: str, dst_port: int, proto: int) -> bool:
        """Whether rules alone allow a new flow (tailscale Filter.Check, for whois/tests)."""
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        q = Parsed(s.version, proto, int(s), int(d), 0, dst_port, _TCP_SYN)
        return self._match(self._m[s.version], q)

    def flows(self) -> int:
        return len(self._flows)

    # ---- internals ----

    @staticmethod
    def _pre(q: Parsed) -> Decision | None:
        if q.proto == PROTO_UNKNOWN:
            return _decide(Response.DROP, "unknown proto")
        if q.version == 4:
            if q.dst >> 28 == 0xE:
                return _decide(Response.DROP, "multicast")
            if q.dst >> 16 == 0xA9FE and q.dst != _GCP_METADATA:
                return _decide(Response.DROP, "link-local-unicast")
        else:
            if q.dst >> 120 == 0xFF:
                return _decide(Response.DROP, "multicast")
            if q.dst >> 118 == 0x3FA:  # fe80::/10
                return _decide(Response.DROP, "link-local-unicast")
        if q.proto == PROTO_FRAGMENT:
            return _decide(Response.ACCEPT, "fragment")
        return None

    def _cap_ok(self, q: Parsed, caps: Iterable[str]) -> bool:
        has_cap = self._has_cap
        if has_cap is None:
            return False
        ip = ipaddress.IPv4Address(q.src) if q.version == 4 else ipaddress.IPv6Address(q.src)
        return any(has_cap(ip, c) for c in caps)

    def _match(self, ms: list[Match], q: Parsed) -> bool:
        proto, src, dst, dport = q.proto, q.src, q.dst, q.dport
        for m in ms:
            if proto not in m.protos:
                continue
            for lo, hi in m.srcs:
                if lo <= src <= hi:
                    break
            else:
                if not (m.src_caps and self._cap_ok(q, m.src_caps)):
                    continue
            for lo, hi, plo, phi in m.dsts:
                if lo <= dst <= hi and plo <= dport <= phi:
                    return True
        return False

    def _match_ips_only(self, ms: list[Match], q: Parsed) -> bool:
        src, dst = q.src, q.dst
        for m in ms:
            if any(lo <= src <= hi for lo, hi in m.srcs) and any(
                lo <= dst <= hi for lo, hi, _, _ in m.dsts
            ):
                return True
        return self._cap_ok(q, [c for m in ms for c in m.src_caps])

    def _match_all_ports(self, ms: list[Match], q: Parsed) -> bool:
        for m in ms:
            if q.proto not in m.protos or not any(lo <= q.src <= hi for lo, hi in m.srcs):
                continue
            for lo, hi, plo, phi in m.dsts:
                if (plo, phi) == ALL_PORTS and lo <= q.dst <= hi:
                    return True
        return False
