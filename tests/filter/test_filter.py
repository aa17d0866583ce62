"""Packet filter: docs/protocol/derp-disco-stun.md §7.2/7.3 behaviours, and the fast matcher against
a slow reference."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.filter import FLOW_CACHE_SIZE, Filter, FilterError
from meshscale.packet.parsed import decode
from meshscale.packet.tsmp import tsmp_ping
from meshscale.tailcfg import FilterRule, NetPortRange, PortRange

from ..packet.builders import ip_packet as packet

ME4, ME6 = "100.64.0.1", "fd7a:115c:a1e0::1"
PEER4, PEER6 = "100.64.0.2", "fd7a:115c:a1e0::2"
LOCAL = [f"{ME4}/32", f"{ME6}/128"]
TCP, UDP, ICMP4, ICMP6, SCTP, TSMP, GRE = 6, 17, 1, 58, 132, 99, 47
SYN, ACK = 0x02, 0x10


def rule(srcs: list[str], dsts: list[tuple[str, int, int]], protos: list[int] | None = None):
    return FilterRule(
        SrcIPs=srcs,
        DstPorts=[NetPortRange(IP=ip, Ports=PortRange(a, b)) for ip, a, b in dsts],
        IPProto=protos or [],
    )


ALLOW_WEB = [rule([PEER4, PEER6], [(ME4, 80, 443), (ME6, 80, 443)])]


def test_allow_all_accepts_new_flows() -> None:
    f = Filter.allow_all(LOCAL)
    assert f.run_in(packet(PEER4, ME4, TCP, dport=22)).accepted
    assert f.run_in(packet(PEER6, ME6, UDP, dport=53)).accepted
    # Empty IPProto means TCP, UDP and ICMP only (docs/protocol/derp-disco-stun.md §7.1), even for
    # the allow-all.
    assert not f.run_in(packet(PEER4, ME4, GRE)).accepted


def test_empty_filter_denies_new_flows_but_not_replies() -> None:
    f = Filter([], LOCAL)
    assert f.run_in(packet(PEER4, ME4, TCP, flags=SYN)).reason == "no rules matched"
    assert f.run_in(packet(PEER4, ME4, TCP, flags=SYN | ACK)).accepted
    assert f.run_in(packet(PEER4, ME4, TCP, flags=ACK)).accepted
    assert not f.run_in(packet(PEER4, ME4, ICMP4, icmp=(8, 0))).accepted
    assert f.run_in(packet(PEER4, ME4, ICMP4, icmp=(0, 0))).accepted  # echo reply
    assert f.run_in(packet(PEER4, ME4, ICMP4, icmp=(3, 1))).accepted  # unreachable
    assert f.run_in(packet(PEER4, ME4, ICMP4, icmp=(11, 0))).accepted  # time exceeded
    # Parameter problem is coded upstream as 0x12 (RFC 792 says 12): reproduced on purpose.
    assert f.run_in(packet(PEER4, ME4, ICMP4, icmp=(0x12, 0))).accepted
    assert not f.run_in(packet(PEER4, ME4, ICMP4, icmp=(12, 0))).accepted
    assert not f.run_in(packet(PEER4, ME4, ICMP4, icmp=(0, 1))).accepted  # reply, bad code
    assert f.run_in(packet(PEER6, ME6, ICMP6, icmp=(129, 0))).accepted
    assert f.run_in(packet(PEER6, ME6, ICMP6, icmp=(2, 0))).accepted  # packet too big
    assert f.run_in(packet(PEER4, ME4, TSMP)).accepted
    assert f.run_in(b"").accepted  # WireGuard keepalive


def test_ports_protocols_and_sources() -> None:
    f = Filter(ALLOW_WEB, LOCAL)
    assert f.run_in(packet(PEER4, ME4, TCP, dport=80)).accepted
    assert f.run_in(packet(PEER4, ME4, UDP, dport=443)).accepted
    assert not f.run_in(packet(PEER4, ME4, TCP, dport=444)).accepted
    assert not f.run_in(packet("100.64.0.3", ME4, TCP, dport=80)).accepted
    assert not f.run_in(packet(PEER4, ME4, SCTP, dport=80)).accepted  # not a default proto
    assert not f.run_in(packet(PEER4, ME4, GRE)).accepted  # not all ports
    # ICMP: any rule with matching IPs allows echo requests, whatever its ports.
    assert f.run_in(packet(PEER4, ME4, ICMP4, icmp=(8, 0))).accepted
    assert f.check(PEER4, ME4, 443, TCP)
    assert not f.check(PEER4, ME4, 22, TCP)


def test_destination_must_be_local() -> None:
    f = Filter.allow_all(LOCAL)
    assert f.run_in(packet(PEER4, "100.64.0.9", TCP)).reason == "destination not allowed"


@pytest.mark.parametrize(
    ("dst", "reason"),
    [
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("169.254.1.1", "link-local-unicast"),
        ("fe80::1", "link-local-unicast"),
    ],
)
def test_prefilter_drops(dst: str, reason: str) -> None:
    src = PEER4 if ":" not in dst else PEER6
    f = Filter.allow_all([*LOCAL, "0.0.0.0/0", "::/0"])
    assert f.run_in(packet(src, dst, UDP)).reason == reason


def test_gcp_metadata_link_local_is_not_prefiltered() -> None:
    f = Filter.allow_all([*LOCAL, "169.254.169.254/32"])
    assert f.run_in(packet(PEER4, "169.254.169.254", TCP)).accepted


def test_fragments() -> None:
    f = Filter([], LOCAL)
    assert f.run_in(packet(PEER4, ME4, UDP, frag=100)).reason == "fragment"
    assert f.run_in(packet(PEER4, ME4, UDP, frag=5)).reason == "unknown proto"  # tiny offset
    assert f.run_in(packet(PEER6, ME6, UDP, frag=100)).reason == "fragment"
    # A first fragment is filtered like any packet.
    assert not f.run_in(packet(PEER4, ME4, UDP, more=True)).accepted
    assert not f.run_in(packet(PEER4, ME4, TSMP, more=True)).accepted  # fragmented TSMP


def test_udp_return_traffic_is_stateful() -> None:
    f = Filter([], LOCAL)
    reply = packet(PEER4, ME4, UDP, sport=53, dport=40000)
    assert not f.run_in(reply).accepted
    assert f.run_out(packet(ME4, PEER4, UDP, sport=40000, dport=53)).accepted
    assert f.run_in(reply).reason == "cached"
    assert not f.run_in(packet(PEER4, ME4, UDP, sport=53, dport=40001)).accepted


def test_flow_cache_is_bounded_lru() -> None:
    f = Filter([], LOCAL)
    f.run_out(packet(ME4, PEER4, UDP, sport=1, dport=53))
    for port in range(2, FLOW_CACHE_SIZE + 1):
        f.run_out(packet(ME4, PEER4, UDP, sport=port, dport=53))
    assert f.run_in(packet(PEER4, ME4, UDP, sport=53, dport=1)).accepted  # refreshes 1
    f.run_out(packet(ME4, PEER4, UDP, sport=9999, dport=53))  # evicts 2, the oldest
    assert f.flows() == FLOW_CACHE_SIZE
    assert f.run_in(packet(PEER4, ME4, UDP, sport=53, dport=1)).accepted
    assert not f.run_in(packet(PEER4, ME4, UDP, sport=53, dport=2)).accepted


def test_other_protocols_need_all_ports() -> None:
    f = Filter([rule([PEER4], [(ME4, 0, 65535)], [GRE])], LOCAL)
    assert f.run_in(packet(PEER4, ME4, GRE)).reason == "other-portless ok"
    f2 = Filter([rule([PEER4], [(ME4, 0, 100)], [GRE])], LOCAL)
    assert f2.run_in(packet(PEER4, ME4, GRE)).reason == f"unknown-protocol-{GRE}"


def test_ranges_cidrs_and_wildcards() -> None:
    f = Filter([rule(["100.64.0.10-100.64.0.20", "fd7a:115c:a1e0::/64"], [("*", 22, 22)])], LOCAL)
    assert f.run_in(packet("100.64.0.15", ME4, TCP, dport=22)).accepted
    assert not f.run_in(packet("100.64.0.21", ME4, TCP, dport=22)).accepted
    assert f.run_in(packet("fd7a:115c:a1e0::77", ME6, TCP, dport=22)).accepted


def test_cap_sources() -> None:
    granted = {(ipaddress.ip_address(PEER4), "tailscale.com/cap/ssh")}

    def has_cap(ip: object, cap: str) -> bool:
        return (ip, cap) in granted

    r = rule(["cap:tailscale.com/cap/ssh"], [(ME4, 22, 22)])
    f = Filter([r], LOCAL, has_cap=has_cap)
    assert f.run_in(packet(PEER4, ME4, TCP, dport=22)).accepted
    assert not f.run_in(packet("100.64.0.3", ME4, TCP, dport=22)).accepted
    assert not Filter([r], LOCAL).run_in(packet(PEER4, ME4, TCP, dport=22)).accepted


@pytest.mark.parametrize(
    "bad",
    [
        FilterRule(SrcIPs=["*"], SrcBits=[32]),
        rule(["100.64.0.1/24"], [("*", 0, 1)]),  # host bits set
        rule(["100.64.0.9-100.64.0.1"], [("*", 0, 1)]),
        rule(["not-an-ip"], [("*", 0, 1)]),
        rule(["*"], [("*", 5, 4)]),
        FilterRule(SrcIPs=["*"], DstPorts=[NetPortRange(IP="*", Bits=32)]),
    ],
)
def test_bad_rules_are_refused(bad: FilterRule) -> None:
    with pytest.raises(FilterError):
        Filter([bad], LOCAL)


def test_short_and_non_ip_packets_drop() -> None:
    f = Filter.allow_all(LOCAL)
    assert f.run_in(bytes(19)).reason == "too short"
    assert f.run_in(b"\x50" + bytes(40)).reason == "not ip"
    assert f.run_in(packet(PEER4, ME4, TCP, truncate=30)).reason == "unknown proto"


# ---- the slow reference ----


@dataclass
class RefPacket:
    version: int
    proto: int  # -1 unknown, -2 fragment (non-first)
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int = 0
    dport: int = 0
    syn_only: bool = False
    icmp: tuple[int, int] | None = None


def ref_parse(b: bytes) -> RefPacket | None:
    if len(b) < 20 or b[0] >> 4 not in (4, 6):
        return None
    if b[0] >> 4 == 4:
        src, dst = ipaddress.IPv4Address(b[12:16]), ipaddress.IPv4Address(b[16:20])
        ihl, total, proto = (b[0] & 15) * 4, int.from_bytes(b[2:4], "big"), b[9]
        fl = int.from_bytes(b[6:8], "big")
        p = RefPacket(4, proto, src, dst)
        if len(b) < total or ihl < 20 or ihl > total:
            p.proto = -1
            return p
        if fl & 0x1FFF:
            p.proto = -2 if fl & 0x1FFF >= 10 else -1
            return p
        if proto == TSMP and fl & 0x2000:
            p.proto = -1
            return p
        body = b[ihl:]
        icmp = ICMP4
    else:
        if len(b) < 40:
            return None
        src, dst = ipaddress.IPv6Address(b[8:24]), ipaddress.IPv6Address(b[24:40])
        proto = b[6]
        p = RefPacket(6, proto, src, dst)
        if len(b) < 40 + int.from_bytes(b[4:6], "big"):
            p.proto = -1
            return p
        body = b[40:]
        if proto == 44:
            if len(body) < 8:
                p.proto = -1
                return p
            off = int.from_bytes(body[2:4], "big") >> 3
            if off:
                p.proto = -2 if off >= 10 else -1
                return p
            p.proto, body = body[0], body[8:]
        icmp = ICMP6
    need = {TCP: 20, UDP: 8, SCTP: 12, TSMP: 7, icmp: 4, 0xFF: 10**9, 0: 10**9}
    if p.version == 4:
        need[2] = 8
    if len(body) < need.get(p.proto, 0):
        p.proto = -1
        return p
    if p.proto in (TCP, UDP, SCTP):
        p.sport, p.dport = struct.unpack("!HH", body[:4])
    if p.proto == TCP:
        p.syn_only = body[13] & (SYN | ACK) == SYN
    if p.proto == icmp and len(body) >= 8:
        p.icmp = (body[0], body[1])
    return p


def in_entry(entry: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if entry == "*":
        return True
    if "-" in entry:
        a, b = (ipaddress.ip_address(x) for x in entry.split("-"))
        return a.version == ip.version and a <= ip <= b  # type: ignore[operator]
    return ip in ipaddress.ip_network(entry)


def ref_allows(rules: list[FilterRule], p: RefPacket, *, ports: str) -> bool:
    for r in rules:
        protos = r.IPProto or [TCP, UDP, ICMP4, ICMP6]
        if ports != "ignore" and p.proto not in protos:
            continue
        if not any(not s.startswith("cap:") and in_entry(s, p.src) for s in r.SrcIPs):
            continue
        for d in r.DstPorts:
            if not in_entry(d.IP, p.dst):
                continue
            if ports == "ignore":
                return True
            if ports == "all" and (d.Ports.First, d.Ports.Last) == (0, 65535):
                return True
            if ports == "match" and d.Ports.First <= p.dport <= d.Ports.Last:
                return True
    return False


def ref_run_in(rules: list[FilterRule], local: list[str], flows: set, b: bytes) -> bool:
    if not b:
        return True
    p = ref_parse(b)
    if p is None or p.proto == -1:
        return False
    if p.dst.is_multicast:
        return False
    if p.dst.is_link_local and str(p.dst) != "169.254.169.254":
        return False
    if p.proto == -2:
        return True
    if not any(p.dst in ipaddress.ip_network(n) for n in local):
        return False
    icmp = ICMP4 if p.version == 4 else ICMP6
    if p.proto == icmp:
        if p.icmp is not None:
            t, c = p.icmp
            if (t, c) == ((0, 0) if p.version == 4 else (129, 0)):
                return True
            if t in ({3, 11, 0x12} if p.version == 4 else {1, 2, 3, 4}):
                return True
        return ref_allows(rules, p, ports="ignore")
    if p.proto == TCP:
        return not p.syn_only or ref_allows(rules, p, ports="match")
    if p.proto in (UDP, SCTP):
        if (p.proto, p.src, p.sport, p.dst, p.dport) in flows:
            return True
        return ref_allows(rules, p, ports="match")
    if p.proto == TSMP:
        return True
    return ref_allows(rules, p, ports="all")


ENTRIES = ["*", ME4, PEER4, "100.64.0.0/24", "100.64.0.2-100.64.0.8", ME6,
           "fd7a:115c:a1e0::/64", "fd7a:115c:a1e0::2-fd7a:115c:a1e0::ff", "10.0.0.0/8",
           "169.254.0.0/16"]  # fmt: skip
PORTS = [(0, 65535), (22, 22), (80, 443), (0, 0), (53, 53)]
LOCALS = [LOCAL, [*LOCAL, "10.0.0.0/8"], ["0.0.0.0/0", "::/0"]]

rules_st = st.lists(
    st.builds(
        rule,
        st.lists(st.sampled_from([*ENTRIES, "cap:x"]), min_size=1, max_size=3),
        st.lists(
            st.tuples(st.sampled_from(ENTRIES), *map(st.just, (0, 0))).flatmap(
                lambda t: st.sampled_from(PORTS).map(lambda p: (t[0], p[0], p[1]))
            ),
            min_size=1,
            max_size=3,
        ),
        st.sampled_from([None, [TCP], [UDP], [GRE], [ICMP4], [TCP, UDP, SCTP], [300, UDP]]),
    ),
    max_size=4,
)


V4 = [ME4, ME4, PEER4, "100.64.0.7", "10.1.2.3", "224.0.0.5", "169.254.169.254", "169.254.3.3"]
V6 = [ME6, ME6, PEER6, "fd7a:115c:a1e0::9", "fe80::5", "ff02::2"]


@st.composite
def packets(draw: st.DrawFn, v6: bool, reply_to: bytes | None = None) -> bytes:
    pool = V6 if v6 else V4
    src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    proto = draw(st.sampled_from([TCP, UDP, UDP, SCTP, ICMP4, ICMP6, TSMP, GRE, 2, 0, 255]))
    sport = draw(st.sampled_from([53, 40000]))
    dport = draw(st.sampled_from([0, 22, 53, 80, 443, 444, 65535, 40000]))
    if reply_to is not None and (p := ref_parse(reply_to)) is not None and p.proto in (UDP, SCTP):
        src, dst, proto, sport, dport = str(p.dst), str(p.src), p.proto, p.dport, p.sport
    raw = packet(
        src,
        dst,
        proto,
        sport=sport,
        dport=dport,
        flags=draw(st.sampled_from([SYN, SYN, ACK, SYN | ACK, 0, 0xFF])),
        icmp=(
            draw(st.sampled_from([0, 3, 8, 11, 12, 18, 1, 2, 4, 128, 129])),
            draw(st.sampled_from([0, 0, 1])),
        ),
        frag=draw(st.sampled_from([0, 0, 0, 0, 3, 10, 200])),
        more=draw(st.booleans()),
        payload=draw(st.binary(max_size=4)),
    )
    cut = draw(st.sampled_from([None] * 6 + [20, 27, 39, 41, 50]))
    return raw if cut is None else raw[:cut]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    v6 = draw(st.booleans())
    outbound = draw(st.lists(packets(v6), max_size=4))
    inbound = [draw(packets(v6, draw(st.sampled_from([None, *outbound])))) for _ in range(4)]
    return outbound, inbound


@pytest.mark.slow
@given(rules_st, st.sampled_from(LOCALS), scenarios())
def test_fast_matcher_agrees_with_reference(
    rules: list[FilterRule], local: list[str], scenario: tuple[list[bytes], list[bytes]]
) -> None:
    outbound, inbound = scenario
    f = Filter(rules, local)
    flows: set = set()
    for out in outbound:
        f.run_out(out)
        p = ref_parse(out)
        # Outbound pre-checks (multicast/link-local) stop flows being recorded too.
        if (
            p is not None
            and p.proto in (UDP, SCTP)
            and not p.dst.is_multicast
            and not (p.dst.is_link_local and str(p.dst) != "169.254.169.254")
        ):
            flows.add((p.proto, p.dst, p.dport, p.src, p.sport))
    for pkt in [*inbound, *outbound]:
        assert f.run_in(pkt).accepted == ref_run_in(rules, local, flows, pkt), pkt.hex()


@given(st.binary(max_size=80))
def test_decode_and_filter_never_raise(data: bytes) -> None:
    decode(data)
    Filter.allow_all(LOCAL).run_in(data)


def test_tsmp_is_accepted_whatever_the_rules() -> None:
    ping = tsmp_ping(PEER4, ME4, b"12345678", ident=0x1234)
    # The filter accepts TSMP whatever the rules; the node answers it before the OS.
    assert Filter([], LOCAL).run_in(ping).reason == "tsmp ok"


def test_shields_up_drops_a_syn_that_allow_all_accepts() -> None:
    f = Filter.allow_all(LOCAL)
    syn = packet(PEER4, ME4, TCP, sport=40000, dport=22)
    assert f.run_in(syn).accepted
    shielded = Filter([], LOCAL, shields_up=True)
    assert not shielded.run_in(syn).accepted


def test_shields_up_ignores_rules() -> None:
    rules = [rule(["*"], [("*", 0, 65535)])]
    assert Filter(rules, LOCAL).run_in(packet(PEER4, ME4, TCP)).accepted
    assert not Filter(rules, LOCAL, shields_up=True).run_in(packet(PEER4, ME4, TCP)).accepted


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (packet(PEER6, ME6, UDP, frag=100)[:44], "unknown proto"),  # cut fragment header
        (packet(PEER4, ME4, ICMP4)[:23], "unknown proto"),  # ICMP shorter than 4 bytes
        (packet(PEER4, ME4, TCP)[:39], "unknown proto"),
        (packet(PEER4, ME4, TSMP)[:26], "unknown proto"),
        (packet(PEER4, ME4, 2)[:27], "unknown proto"),  # IGMP
        (packet(PEER4, ME4, 255), "unknown proto"),  # literal "fragment" protocol
    ],
)
def test_truncated_transport_headers(pkt: bytes, reason: str) -> None:
    # Shorten the IP length fields too, so that only the transport header is short.
    b = bytearray(pkt)
    if b[0] >> 4 == 4:
        b[2:4] = len(b).to_bytes(2, "big")
    else:
        b[4:6] = (len(b) - 40).to_bytes(2, "big")
    assert Filter.allow_all(LOCAL).run_in(bytes(b)).reason == reason


def test_short_icmp_counts_as_a_request() -> None:
    b = bytearray(packet(PEER4, ME4, ICMP4, icmp=(0, 0))[:26])  # 6 bytes: no echo test
    b[2:4] = len(b).to_bytes(2, "big")
    assert not Filter([], LOCAL).run_in(bytes(b)).accepted
    assert Filter.allow_all(LOCAL).run_in(bytes(b)).reason == "icmp ok"


def test_outbound_keepalive_and_cap_icmp() -> None:
    assert Filter([], LOCAL).run_out(b"").reason == "keepalive"
    r = rule(["cap:ping"], [(ME4, 22, 22)])
    f = Filter([r], LOCAL, has_cap=lambda ip, cap: str(ip) == PEER4 and cap == "ping")
    assert f.run_in(packet(PEER4, ME4, ICMP4, icmp=(8, 0))).reason == "icmp ok"
    assert not f.run_in(packet("100.64.0.9", ME4, ICMP4, icmp=(8, 0))).accepted


JAILED4, JAILED6 = "100.64.0.9", "fd7a:115c:a1e0::9"


def test_jailed_peer_cannot_open_flows_the_rules_allow() -> None:
    """A node shared in from another tailnet (IsJailed) meets the shields-up filter: the
    allow-all rules open nothing for it, while another peer is unaffected
    (docs/protocol/policy.md §3.3 step 5, §6: TS-2024-005)."""
    rules = [rule(["*"], [("*", 0, 65535)])]
    f = Filter(rules, LOCAL, jailed=[f"{JAILED4}/32", f"{JAILED6}/128"])
    assert f.run_in(packet(PEER4, ME4, TCP, flags=SYN, dport=8080)).accepted
    for src, dst in ((JAILED4, ME4), (JAILED6, ME6)):
        syn = f.run_in(packet(src, dst, TCP, flags=SYN, dport=8080))
        assert (syn.accepted, syn.reason) == (False, "jailed peer")
        assert not f.run_in(packet(src, dst, UDP, sport=5000, dport=53)).accepted
    assert not f.run_in(packet(JAILED4, ME4, ICMP4, icmp=(8, 0))).accepted  # echo request
    assert not f.run_in(packet(JAILED4, ME4, GRE)).accepted


def test_jailed_peer_still_answers_our_flows() -> None:
    f = Filter([], LOCAL, jailed=[f"{JAILED4}/32"])
    # TCP replies (not a pure SYN), ICMP replies and errors, and UDP replies to a flow we
    # opened pass: the recipient can use the shared node.
    assert f.run_in(packet(JAILED4, ME4, TCP, flags=SYN | ACK, sport=8080)).accepted
    assert f.run_in(packet(JAILED4, ME4, TCP, flags=ACK, sport=8080)).accepted
    assert f.run_in(packet(JAILED4, ME4, ICMP4, icmp=(0, 0))).accepted
    assert f.run_in(packet(JAILED4, ME4, ICMP4, icmp=(3, 1))).accepted
    assert f.run_out(packet(ME4, JAILED4, UDP, sport=4000, dport=53)).accepted
    assert f.run_in(packet(JAILED4, ME4, UDP, sport=53, dport=4000)).accepted
    assert not f.run_in(packet(JAILED4, ME4, UDP, sport=53, dport=4001)).accepted
