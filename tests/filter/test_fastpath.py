"""The fast path must decide exactly like meshscale.filter.Filter."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from meshscale.filter import Filter, filter_inbound, note_outbound
from meshscale.tailcfg import FilterRule, NetPortRange, PortRange

ME4, ME6 = "100.64.0.2", "fd7a:115c:a1e0::2"
LOCAL4 = frozenset({ipaddress.ip_address(ME4).packed})
LOCAL6 = frozenset({ipaddress.ip_address(ME6).packed})
NETS = [ipaddress.ip_network(ME4), ipaddress.ip_network(ME6)]
SSH = NetPortRange(IP="*", Ports=PortRange(22, 22))
RULES = [FilterRule(SrcIPs=["100.64.0.1"], DstPorts=[SSH])]


def _v4(src: str, dst: str, proto: int, flags: int, frag: int, payload: bytes) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", 1234, 22, 1, 1, 0x50, flags, 65535, 0, 0) + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, frag, 64, proto, 0, s, d) + l4


def _v6(src: str, dst: str, nh: int, flags: int, payload: bytes) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", 1234, 22, 1, 1, 0x50, flags, 65535, 0, 0) + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, 64, s, d) + l4


@given(
    st.sampled_from(["100.64.0.1", "100.64.0.9"]),
    st.sampled_from([ME4, "100.64.0.7", "224.0.0.1"]),
    st.sampled_from([6, 17, 1]), st.integers(0, 255), st.sampled_from([0, 0x2000, 0x4000, 0x0010]),
    st.binary(max_size=30),
)  # fmt: skip
def test_v4_same_decisions_as_the_filter(src, dst, proto, flags, frag, payload):
    pkt = _v4(src, dst, proto, flags, frag, payload)
    for rules in (RULES, []):
        want = Filter(rules, NETS).run_in(pkt).accepted
        assert (filter_inbound(Filter(rules, NETS), LOCAL4, LOCAL6, [pkt]) == [pkt]) == want


@given(
    st.sampled_from(["fd7a:115c:a1e0::1", "fd7a:115c:a1e0::9"]),
    st.sampled_from([ME6, "fd7a:115c:a1e0::7"]), st.sampled_from([6, 17]), st.integers(0, 255),
    st.binary(max_size=30),
)  # fmt: skip
def test_v6_same_decisions_as_the_filter(src, dst, nh, flags, payload):
    pkt = _v6(src, dst, nh, flags, payload)
    for rules in (RULES, []):
        want = Filter(rules, NETS).run_in(pkt).accepted
        assert (filter_inbound(Filter(rules, NETS), LOCAL4, LOCAL6, [pkt]) == [pkt]) == want


@given(st.binary(max_size=80))
def test_garbage_goes_to_the_filter(data):
    f = Filter(RULES, NETS)
    assert filter_inbound(f, LOCAL4, LOCAL6, [data]) == ([data] if f.run_in(data).accepted else [])


def test_outbound_udp_opens_the_reply_path_but_tcp_is_skipped():
    f = Filter([], NETS)
    udp_out = _v4(ME4, "100.64.0.1", 17, 0, 0, b"")
    udp_back = _v4("100.64.0.1", ME4, 17, 0, 0, b"")
    assert filter_inbound(f, LOCAL4, LOCAL6, [udp_back]) == []
    note_outbound(f, [udp_out, _v4(ME4, "100.64.0.1", 6, 0x10, 0, b"")])
    assert f.flows() == 1


def test_drops_are_counted_per_reason():
    f = Filter([], NETS)
    drops: dict[str, int] = {}
    udp_in = _v4("100.64.0.1", ME4, 17, 0, 0, b"")
    assert filter_inbound(f, LOCAL4, LOCAL6, [udp_in, udp_in], drops) == []
    assert sum(drops.values()) == 2 and len(drops) == 1
