"""The packet filter: compiled rules matched against raw IP packets, plus the flow cache.

Inbound evaluation (docs/protocol/derp-disco-stun.md §7.2, tailscale wgengine/filter)::

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
allow-all sentinel. Packets from a *jailed* peer's addresses (tailcfg ``Node.IsJailed``: a
node shared in from another tailnet) are judged as under shields up, whatever the rules say,
so that peer can answer our flows but never open one (docs/protocol/policy.md §3.3 step 5,
§6). Rules are compiled by ``rules``; packets are read by
``meshscale.packet.parsed``; TSMP lives in ``meshscale.packet.tsmp``.

Performs no I/O; the flow cache is the only state.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from meshscale.packet.ip import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_TSMP,
    IPPROTO_UDP,
    TCP_ACK,
    TCP_SYN,
)
from meshscale.packet.parsed import PROTO_FRAGMENT, PROTO_UNKNOWN, Parsed, decode
from meshscale.tailcfg import PORT_RANGE_ANY, FilterRule, NetPortRange

from .rules import ALL_PORTS, Match, Range, compile_rules

# Reverse flows remembered for UDP/SCTP return traffic (docs/protocol/derp-disco-stun.md §7.3); an
# LRU so that a flood of outbound flows only evicts the oldest.
FLOW_CACHE_SIZE = 512
ICMP4_ERRORS = frozenset({3, 11, 0x12})  # 0x12 as coded upstream (RFC 792 says 12)
ICMP6_ERRORS = frozenset({1, 2, 3, 4})
_GCP_METADATA = int(ipaddress.IPv4Address("169.254.169.254"))


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


_NO_MATCHES: list[Match] = []


def _ranges(
    nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str],
) -> dict[int, list[Range]]:
    out: dict[int, list[Range]] = {4: [], 6: []}
    for n in nets:
        net = ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
        out[net.version].append((int(net.network_address), int(net.broadcast_address)))
    return out


CapTest = Callable[[object, str], bool]  # (source ip_address, capability) -> granted


class Filter:
    """Inbound packet filter plus the outbound flow cache. Performs no I/O.

    Driven by: ``run_in`` for packets decrypted from WireGuard, ``run_out`` for
    packets from the local OS headed into the tunnel.

    :param rules: control's PacketFilter; an empty list denies every new flow.
    :param local_nets: our Tailscale addresses and advertised routes (as networks).
    :param has_cap: optional test for ``cap:`` sources.
    :param shields_up: refuse every new inbound flow whatever the rules say.
    :param jailed: addresses of jailed peers: no new inbound flow from them, whatever the
        rules say (replies to our flows still pass).
    """

    def __init__(
        self,
        rules: Sequence[FilterRule],
        local_nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str],
        *,
        has_cap: CapTest | None = None,
        shields_up: bool = False,
        jailed: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str] = (),
    ) -> None:
        self.shields_up = shields_up
        if shields_up:
            # shields up: no new inbound flows at all (docs/protocol/derp-disco-stun.md §7.2 step 5)
            rules = []
        self._m = {4: compile_rules(rules, 4), 6: compile_rules(rules, 6)}
        self._local = _ranges(local_nets)
        self._jailed = _ranges(jailed)
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
        q = decode(packet)
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
        jailed = self._jailed[q.version]
        jail = bool(jailed) and any(lo <= q.src <= hi for lo, hi in jailed)
        # A jailed source meets the shields-up filter: no rules at all (§3.3 step 5).
        ms = _NO_MATCHES if jail else self._m[q.version]
        p = q.proto
        if p == (IPPROTO_ICMP if q.version == 4 else IPPROTO_ICMPV6):
            errors = ICMP4_ERRORS if p == IPPROTO_ICMP else ICMP6_ERRORS
            reply = 0 if p == IPPROTO_ICMP else 129
            if (q.icmp_type == reply and q.icmp_code == 0) or q.icmp_type in errors:
                return _decide(Response.ACCEPT, "icmp response ok")
            if self._match_ips_only(ms, q):
                return _decide(Response.ACCEPT, "icmp ok")
        elif p == IPPROTO_TCP:
            if q.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                return _decide(Response.ACCEPT, "tcp non-syn")
            if self._match(ms, q):
                return _decide(Response.ACCEPT, "tcp ok")
        elif p in (IPPROTO_UDP, IPPROTO_SCTP):
            key = (p, q.src, q.sport, q.dst, q.dport)
            if key in self._flows:
                self._flows.move_to_end(key)
                return _decide(Response.ACCEPT, "cached")
            if self._match(ms, q):
                return _decide(Response.ACCEPT, "ok")
        elif p == IPPROTO_TSMP:
            return _decide(Response.ACCEPT, "tsmp ok")
        else:
            if self._match_all_ports(ms, q):
                return _decide(Response.ACCEPT, "other-portless ok")
            return _decide(Response.DROP, f"unknown-protocol-{p}")
        return _decide(Response.DROP, "jailed peer" if jail else "no rules matched")

    def run_out(self, packet: bytes | memoryview) -> Decision:
        """Decide on a packet we are sending; UDP/SCTP flows are remembered for replies."""
        if len(packet) == 0:
            return _decide(Response.ACCEPT, "keepalive")
        q = decode(packet)
        if q is None:
            return _decide(Response.DROP, "too short" if len(packet) < 20 else "not ip")
        pre = self._pre(q)
        if pre is not None:
            return pre
        if q.proto in (IPPROTO_UDP, IPPROTO_SCTP):
            key = (q.proto, q.dst, q.dport, q.src, q.sport)  # reversed: the reply's tuple
            self._flows[key] = None
            self._flows.move_to_end(key)
            while len(self._flows) > FLOW_CACHE_SIZE:
                self._flows.popitem(last=False)
        return _decide(Response.ACCEPT, "ok out")

    def check(self, src: str, dst: str, dst_port: int, proto: int) -> bool:
        """Whether rules alone allow a new flow (tailscale Filter.Check, for whois/tests)."""
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        q = Parsed(s.version, proto, int(s), int(d), 0, dst_port, TCP_SYN)
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
