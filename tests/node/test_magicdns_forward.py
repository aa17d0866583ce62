"""The forwarding driver against real UDP/TCP upstream servers on the loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from meshscale.dns.cache import AnswerCache
from meshscale.dns.config import from_netmap
from meshscale.dns.resolver import Resolver
from meshscale.node.magicdns.forward import Forwarder, parse_upstream
from meshscale.tailcfg.dns import DNSConfig
from meshscale.tailcfg.dns import Resolver as Up
from meshscale.tailcfg.node import Node

Behaviour = Callable[[dns.message.Message, bool], bytes | None]


def answer(ip: str, n: int = 1) -> Behaviour:
    def reply(q: dns.message.Message, tcp: bool) -> bytes:
        r = dns.message.make_response(q)
        name = q.question[0].name
        more = [f"10.7.{i // 250}.{i % 250 + 1}" for i in range(n - 1)]
        r.answer.append(dns.rrset.from_text_list(name, 30, "IN", "A", [ip, *more]))
        return r.to_wire()

    return reply


class Upstream:
    """A real DNS server on 127.0.0.1 (UDP and TCP on one port) run by `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.udp_queries = 0
        self.tcp_queries = 0
        self.port = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        tcp = await asyncio.start_server(self._tcp, "127.0.0.1", 0)
        self.port = tcp.sockets[0].getsockname()[1]
        udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_sock.bind(("127.0.0.1", self.port))
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                up.udp_queries += 1
                out = up.behaviour(dns.message.from_wire(data), False)
                if out is not None:
                    self.t.sendto(out, addr)  # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(Proto, sock=udp_sock)
        try:
            yield f"127.0.0.1:{self.port}"
        finally:
            transport.close()
            tcp.close()
            await tcp.wait_closed()

    async def _tcp(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            (n,) = struct.unpack("!H", await r.readexactly(2))
            self.tcp_queries += 1
            out = self.behaviour(dns.message.from_wire(await r.readexactly(n)), True)
            if out is not None:
                w.write(struct.pack("!H", len(out)) + out)
                await w.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            w.close()


def forwarder(default: str, split: str | None = None, **kw: float) -> Forwarder:
    routes = {"corp.test": [Up(Addr=split)]} if split else {}
    cfg = DNSConfig(Resolvers=[Up(Addr=default)], Routes=routes, Proxied=True)
    me = Node(Name="n1.lab.example.", Addresses=["100.64.0.1/32"])
    res = Resolver(from_netmap(cfg, me, []), AnswerCache(clock=time.monotonic))
    return Forwarder(res, **kw)  # type: ignore[arg-type]


def q(name: str, rdtype: str = "A", **kw: int) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]


def test_parse_upstream() -> None:
    assert parse_upstream("10.0.0.53") == ("10.0.0.53", 53)
    assert parse_upstream("10.0.0.53:5353") == ("10.0.0.53", 5353)
    assert parse_upstream("[fd00::1]:54") == ("fd00::1", 54)
    assert parse_upstream("fd00::1") == ("fd00::1", 53)
    for bad in ("https://dns.google/dns-query", "dns.google", "1.2.3.4:0", "1.2.3.4:x", ""):
        assert parse_upstream(bad) is None


def test_forward_local_split_and_cache() -> None:
    async def main() -> None:
        glob, corp = Upstream(answer("192.0.2.1")), Upstream(answer("10.1.1.1"))
        async with glob.running() as g, corp.running() as c:
            f = forwarder(g, c)
            local = dns.message.from_wire(await f.query(q("n1.lab.example")) or b"")
            assert local.answer[0][0].to_text() == "100.64.0.1"
            out = dns.message.from_wire(await f.query(q("www.outside.test")) or b"")
            assert out.answer[0][0].to_text() == "192.0.2.1"
            sp = dns.message.from_wire(await f.query(q("a.b.corp.test")) or b"")
            assert sp.answer[0][0].to_text() == "10.1.1.1"
            assert (glob.udp_queries, corp.udp_queries) == (1, 1)  # split: only corp asked
            again = dns.message.from_wire(await f.query(q("www.outside.test")) or b"")
            assert again.answer[0][0].to_text() == "192.0.2.1" and glob.udp_queries == 1
            assert f.stats["cache_hit"] == 1

    asyncio.run(main())


def test_truncation_tcp_client_retries_over_tcp_udp_client_gets_tc() -> None:
    full = answer("192.0.2.1", 80)

    def tc_over_udp(qm: dns.message.Message, tcp: bool) -> bytes | None:
        if tcp:
            return full(qm, True)
        r = dns.message.make_response(qm)
        r.flags |= dns.flags.TC
        return r.to_wire()

    async def main() -> None:
        up = Upstream(tc_over_udp)
        async with up.running() as u:
            f = forwarder(u)
            udp = dns.message.from_wire(await f.query(q("big.test")) or b"")
            assert udp.flags & dns.flags.TC and not udp.answer
            tcp = dns.message.from_wire(await f.query(q("big.test"), tcp=True) or b"")
            assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 80
            assert up.tcp_queries >= 1

    asyncio.run(main())


def test_silent_upstream_falls_back_to_tcp_then_servfail_within_budget() -> None:
    def udp_silent(qm: dns.message.Message, tcp: bool) -> bytes | None:
        return answer("192.0.2.9")(qm, tcp) if tcp else None

    async def main() -> None:
        up = Upstream(udp_silent)
        async with up.running() as u:
            f = forwarder(u, udp_timeout=0.2, udp_retry=0.1)
            t0 = time.monotonic()
            m = dns.message.from_wire(await f.query(q("slow.test")) or b"")
            assert m.answer[0][0].to_text() == "192.0.2.9" and up.udp_queries == 2
            assert time.monotonic() - t0 < 2
        never = Upstream(lambda qm, tcp: None)
        async with never.running() as u:
            f = forwarder(u, udp_timeout=0.1, udp_retry=0.05, tcp_timeout=0.2, budget=0.5)
            t0 = time.monotonic()
            m = dns.message.from_wire(await f.query(q("never.test")) or b"")
            assert m.rcode() == dns.rcode.SERVFAIL and time.monotonic() - t0 < 1.5

    asyncio.run(main())


def test_garbage_servfail_and_refused_upstreams() -> None:
    async def main() -> None:
        garbage = Upstream(lambda qm, tcp: b"\xff" * 40)
        async with garbage.running() as u:
            f = forwarder(u, udp_timeout=0.1, udp_retry=0.05, tcp_timeout=0.2, budget=0.5)
            m = dns.message.from_wire(await f.query(q("g.test")) or b"")
            assert m.rcode() == dns.rcode.SERVFAIL
            assert f.stats["upstream_malformed"] >= 1

        def servfail(qm: dns.message.Message, tcp: bool) -> bytes:
            r = dns.message.make_response(qm)
            r.set_rcode(dns.rcode.SERVFAIL)
            return r.to_wire()

        sf, good = Upstream(servfail), Upstream(answer("192.0.2.7"))
        async with sf.running() as s, good.running() as g:
            cfg = DNSConfig(Resolvers=[Up(Addr=s), Up(Addr=g)])
            f = Forwarder(Resolver(from_netmap(cfg, None, [])))
            m = dns.message.from_wire(await f.query(q("race.test")) or b"")
            assert m.answer[0][0].to_text() == "192.0.2.7"  # SERVFAIL loses the race
        # Nothing listens on this port: refused at once over UDP and TCP.
        s2 = socket.socket()
        s2.bind(("127.0.0.1", 0))
        port = s2.getsockname()[1]
        s2.close()
        f = forwarder(f"127.0.0.1:{port}", budget=2.0)
        t0 = time.monotonic()
        m = dns.message.from_wire(await f.query(q("refused.test")) or b"")
        assert m.rcode() == dns.rcode.SERVFAIL and time.monotonic() - t0 < 1.0

    asyncio.run(main())


def test_inflight_bound_drops_excess() -> None:
    async def main() -> None:
        never = Upstream(lambda qm, tcp: None)
        async with never.running() as u:
            f = forwarder(u, max_inflight=4, udp_timeout=0.3, tcp_timeout=0.3, budget=0.6)
            outs = await asyncio.gather(*(f.query(q(f"n{i}.test")) for i in range(10)))
            assert sum(o is None for o in outs) == 6 and f.stats["dropped_busy"] == 6
            assert f.inflight == 0

    asyncio.run(main())
