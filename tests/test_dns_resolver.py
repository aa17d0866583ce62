"""MagicDNS resolver core: local answers, PTR, split DNS, cache, hostile input."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.dns.cache import AnswerCache
from meshscale.dns.config import from_netmap
from meshscale.dns.resolver import Answer, Drop, Forward, Resolver, fit_udp
from meshscale.tailcfg.dns import DNSConfig, DNSRecord
from meshscale.tailcfg.dns import Resolver as Upstream
from meshscale.tailcfg.node import Node


def make_resolver(cache: AnswerCache | None = None, *, aaaa: bool = False) -> Resolver:
    cfg = DNSConfig(
        Routes={"lab.example": [], "corp.test": [Upstream(Addr="10.9.0.53")]},
        Resolvers=[Upstream(Addr="10.9.0.1")],
        ExtraRecords=[DNSRecord(Name="extra.lab.example", Value="100.64.0.99")],
    )
    me = Node(Name="n1.lab.example.", Addresses=["100.64.0.1/32", "fd7a:115c:a1e0::1/128"])
    if aaaa:
        me.CapMap["magicdns-aaaa"] = None
    web = Node(Name="web.lab.example.", Addresses=["100.64.0.2/32"])
    return Resolver(from_netmap(cfg, me, [web]), cache)


def ask(r: Resolver, name: str, rdtype: str = "A") -> dns.message.Message:
    out = r.handle(dns.message.make_query(name, rdtype).to_wire())
    assert isinstance(out, Answer)
    return dns.message.from_wire(out.wire)


def test_local_a_aaaa_and_nodata() -> None:
    r = make_resolver()
    a = ask(r, "N1.lab.example")
    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
    assert [rr.to_text() for rr in a.answer[0]] == ["100.64.0.1"]
    # A node with an IPv4 address has no AAAA unless self has cap magicdns-aaaa (ts#1152).
    assert not ask(r, "n1.lab.example", "AAAA").answer
    aaaa = ask(make_resolver(aaaa=True), "n1.lab.example", "AAAA")
    assert [rr.to_text() for rr in aaaa.answer[0]] == ["fd7a:115c:a1e0::1"]
    nodata = ask(r, "web.lab.example", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_extra_record_and_ptr() -> None:
    r = make_resolver()
    assert [rr.to_text() for rr in ask(r, "extra.lab.example").answer[0]] == ["100.64.0.99"]
    ptr = ask(r, "2.0.64.100.in-addr.arpa", "PTR")
    assert [rr.to_text() for rr in ptr.answer[0]] == ["web.lab.example."]


def test_unknown_name_in_magicdns_domain_is_nxdomain() -> None:
    assert ask(make_resolver(), "nope.lab.example").rcode() == dns.rcode.NXDOMAIN


def test_split_dns_and_fallback_forward() -> None:
    r = make_resolver()
    corp = r.handle(dns.message.make_query("a.corp.test", "A").to_wire())
    assert isinstance(corp, Forward) and corp.upstreams == ("10.9.0.53",)
    other = r.handle(dns.message.make_query("example.org", "A").to_wire())
    assert isinstance(other, Forward) and other.upstreams == ("10.9.0.1",)


def test_no_upstream_is_servfail() -> None:
    r = Resolver()
    assert ask(r, "example.org").rcode() == dns.rcode.SERVFAIL


def test_forwarded_reply_is_cached_until_ttl() -> None:
    now = [0.0]
    r = make_resolver(AnswerCache(clock=lambda: now[0]))
    q = dns.message.make_query("a.corp.test", "A")
    fwd = r.handle(q.to_wire())
    assert isinstance(fwd, Forward)
    rep = dns.message.make_response(q)
    rep.answer.append(dns.rrset.from_text("a.corp.test.", 30, "IN", "A", "10.1.1.1"))
    assert r.accept_reply(fwd, rep.to_wire()) is not None
    q2 = dns.message.make_query("a.corp.test", "A")
    hit = r.handle(q2.to_wire())
    assert isinstance(hit, Answer)
    assert dns.message.from_wire(hit.wire).id == q2.id
    now[0] = 31.0
    assert isinstance(r.handle(q2.to_wire()), Forward)


def test_mismatched_upstream_reply_is_ignored() -> None:
    r = make_resolver()
    fwd = r.handle(dns.message.make_query("a.corp.test", "A").to_wire())
    assert isinstance(fwd, Forward)
    other = dns.message.make_response(dns.message.make_query("b.corp.test", "A"))
    assert r.accept_reply(fwd, other.to_wire()) is None
    assert r.accept_reply(fwd, b"\x00garbage") is None


def test_cache_is_bounded() -> None:
    c = AnswerCache(max_entries=2, clock=lambda: 0.0)
    for i in range(5):
        c.put((f"n{i}.", 1, 1), b"x" * 12, 60)
    assert len(c) == 2 and c.get(("n0.", 1, 1)) is None and c.get(("n4.", 1, 1)) is not None


def test_hostile_inputs_are_dropped_or_formerr() -> None:
    r = make_resolver()
    assert isinstance(r.handle(b"\x00\x01"), Drop)
    assert isinstance(r.handle(b"\x00" * 70000), Drop)
    resp = dns.message.make_response(dns.message.make_query("n1.lab.example", "A")).to_wire()
    assert isinstance(r.handle(resp), Drop)  # never answer a response
    # A compression pointer that points at itself (offset 12).
    loop = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    out = r.handle(loop)
    assert isinstance(out, Answer)
    m = dns.message.from_wire(out.wire)
    assert m.id == 7 and m.rcode() == dns.rcode.FORMERR
    truncated = dns.message.make_query("n1.lab.example", "A").to_wire()[:-3]
    assert dns.message.from_wire(r.handle(truncated).wire).rcode() == dns.rcode.FORMERR  # type: ignore[union-attr]
    assert r.stats["malformed"] == 2 and r.stats["dropped_oversized"] == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    out = make_resolver().handle(data)
    if isinstance(out, Answer):
        dns.message.from_wire(out.wire)  # whatever we send back must itself parse


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_queries_never_crash(data: st.DataObject) -> None:
    wire = bytearray(dns.message.make_query("web.lab.example", "A").to_wire())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    out = make_resolver().handle(bytes(wire[:cut]))
    assert isinstance(out, Answer | Drop | Forward)


def test_tailscaled_special_names() -> None:
    r = make_resolver()
    assert ask(r, "x.onion").rcode() == dns.rcode.NXDOMAIN
    assert ask(r, "b._dns-sd._udp.local", "PTR").rcode() == dns.rcode.NXDOMAIN
    assert r.stats["forward"] == 0
    q100 = ask(r, "magicdns.localhost-tailscale-daemon")
    assert [rr.to_text() for rr in q100.answer[0]] == ["100.100.100.100"]
    ptr = ask(r, "100.100.100.100.in-addr.arpa", "PTR")
    assert [rr.to_text() for rr in ptr.answer[0]] == ["magicdns.localhost-tailscale-daemon."]
    assert ask(r, "web.lab.example", "SOA").rcode() == dns.rcode.NOTIMP
    mx = ask(r, "web.lab.example", "MX")
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer


def test_proxied_adds_local_suffix_and_reverse_zones() -> None:
    me = Node(Name="n1.tn.example.", Addresses=["100.64.0.1/32"])
    cfg = from_netmap(DNSConfig(Proxied=True), me, [], os_resolvers=["192.0.2.53"])
    assert cfg.routes["tn.example."] == [] and cfg.routes["64.100.in-addr.arpa."] == []
    assert cfg.fallback == ["192.0.2.53"]  # no override: the OS's own nameservers
    r = Resolver(cfg)
    assert ask(r, "nope.tn.example").rcode() == dns.rcode.NXDOMAIN
    assert ask(r, "9.9.70.100.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    fwd = r.handle(dns.message.make_query("example.org", "A").to_wire())
    assert isinstance(fwd, Forward) and fwd.upstreams == ("192.0.2.53",)


def test_override_wins_over_os_resolvers_and_fallbacks_need_exit_node() -> None:
    over = DNSConfig(Resolvers=[Upstream(Addr="10.9.0.1")])
    assert from_netmap(over, None, [], os_resolvers=["192.0.2.53"]).fallback == ["10.9.0.1"]
    fb = DNSConfig(FallbackResolvers=[Upstream(Addr="10.9.0.2")])
    assert from_netmap(fb, None, []).fallback == []
    assert from_netmap(fb, None, [], exit_node=True).fallback == ["10.9.0.2"]


def test_large_local_answer_to_plain_udp_gets_tc() -> None:
    q = dns.message.make_query("big.example", "A").to_wire()
    big = dns.message.make_response(dns.message.make_query("big.example", "A"))
    big.answer.append(
        dns.rrset.from_text_list(
            "big.example.", 60, "IN", "A", [f"10.0.{i // 256}.{i % 256}" for i in range(60)]
        )
    )
    wire = big.to_wire()
    assert len(wire) > 512
    assert fit_udp(q, wire)[2] & 0x02
    edns = dns.message.make_query("big.example", "A", use_edns=0, payload=4096).to_wire()
    assert fit_udp(edns, wire) == wire
