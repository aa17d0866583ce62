"""The forwarding driver over the sans-IO resolver (tailscale net/dns/resolver/forwarder.go).

    fwd = Forwarder(resolver)
    reply = await fwd.query(wire, tcp=False)   # bytes to send back, or None (drop)

Local answers come straight from the core. A `Forward` decision races every upstream of
the route in parallel; the first good answer wins and is cached by the core. Per upstream:
UDP (one retransmission after ``UDP_RETRY`` s), and TCP in parallel once UDP has been silent
for ``UDP_TIMEOUT`` s, or at once when the client itself asked over TCP. A truncated UDP
answer goes back as-is to a UDP client and is retried over TCP for a TCP client. Upstream
SERVFAIL counts as a failure; when every upstream failed the client gets SERVFAIL (so its
resolver moves on instead of waiting). ``BUDGET`` bounds every query; at most
``MAX_INFLIGHT`` forwards run at once, more are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time
from collections.abc import Sequence

import dns.flags
import dns.message
import dns.rcode

from meshscale.dns.resolver import Answer, Drop, Forward, Resolver, fit_udp

UDP_RETRY = 1.0  # seconds before the UDP query is sent once more
UDP_TIMEOUT = 2.0  # seconds of UDP silence before TCP starts beside it
TCP_TIMEOUT = 5.0  # seconds for one TCP exchange
BUDGET = 10.0  # seconds for one forwarded query, all upstreams together
MAX_INFLIGHT = 256
MAX_UDP_REPLY = 65535

Upstream = tuple[str, int]


def parse_upstream(addr: str) -> Upstream | None:
    """ "ip", "ip:port", "[v6]:port" -> (ip, port). DoH and other URLs are not usable."""
    text = addr.strip()
    if "://" in text:
        return None
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        return None


class _Failed(Exception):
    """One upstream attempt gave nothing usable (timeout, refused, garbage, SERVFAIL)."""

    def __init__(self, servfail: bytes | None = None) -> None:
        super().__init__()
        self.servfail = servfail


class Forwarder:
    """Answers DNS queries with a Resolver core, forwarding over UDP/TCP. Runs on one loop."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        udp_timeout: float = UDP_TIMEOUT,
        udp_retry: float = UDP_RETRY,
        tcp_timeout: float = TCP_TIMEOUT,
        budget: float = BUDGET,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.resolver = resolver
        self.udp_timeout = udp_timeout
        self.udp_retry = udp_retry
        self.tcp_timeout = tcp_timeout
        self.budget = budget
        self.max_inflight = max_inflight
        self.inflight = 0
        # Which upstreams the last forwarded queries went to (for `dns query`).
        self.last_upstreams: tuple[str, ...] = ()
        self.latency: list[float] = []  # seconds per forwarded query, last 1000

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.resolver.stats)

    def _count(self, what: str) -> None:
        self.resolver.stats[what] += 1

    async def query(self, wire: bytes, *, tcp: bool = False) -> bytes | None:
        decision = self.resolver.handle(wire)
        if isinstance(decision, Drop):
            return None
        if isinstance(decision, Answer):
            return decision.wire if tcp else fit_udp(wire, decision.wire)
        reply = await self.forward(decision, tcp=tcp)
        if reply is None or tcp:
            return reply
        return fit_udp(wire, reply)

    async def forward(self, fwd: Forward, *, tcp: bool = False) -> bytes | None:
        if self.inflight >= self.max_inflight:
            self._count("dropped_busy")
            return None
        ups = [u for u in (parse_upstream(a) for a in fwd.upstreams) if u is not None]
        if not ups:
            self._count("upstream_unusable")
            return self._servfail(fwd.query)
        self.inflight += 1
        self.last_upstreams = fwd.upstreams
        start = time.monotonic()
        try:
            return await asyncio.wait_for(self._race(fwd, ups, tcp), self.budget)
        except TimeoutError:
            self._count("upstream_timeout")
            return self._servfail(fwd.query)
        finally:
            self.inflight -= 1
            self.latency.append(time.monotonic() - start)
            del self.latency[:-1000]

    async def _race(self, fwd: Forward, ups: Sequence[Upstream], tcp: bool) -> bytes | None:
        tasks = [asyncio.ensure_future(self._one(fwd, u, tcp)) for u in ups]
        servfail: bytes | None = None
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    return await fut
                except _Failed as exc:
                    servfail = servfail or exc.servfail
            self._count("upstream_all_failed")
            return servfail if servfail is not None else self._servfail(fwd.query)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t

    def _check(self, fwd: Forward, reply: bytes) -> bytes:
        ok = self.resolver.accept_reply(fwd, reply)
        if ok is None:
            raise _Failed()
        if ok[3] & 0x0F == dns.rcode.SERVFAIL:
            self._count("upstream_servfail")
            raise _Failed(ok)
        return ok

    async def _one(self, fwd: Forward, up: Upstream, client_tcp: bool) -> bytes:
        """One upstream: UDP (+ TCP after a silence, or at once for a TCP client)."""
        loop = asyncio.get_running_loop()
        udp = asyncio.ensure_future(self._udp(fwd, up))
        tcp: asyncio.Future[bytes] | None = None
        if client_tcp:
            tcp = asyncio.ensure_future(self._tcp(fwd, up))
        deadline = loop.time() + self.udp_timeout
        try:
            pending: set[asyncio.Future[bytes]] = {udp} | ({tcp} if tcp else set())
            failure: _Failed | None = None
            while pending:
                timeout = None if tcp is not None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # UDP silent for udp_timeout: TCP beside it
                    tcp = asyncio.ensure_future(self._tcp(fwd, up))
                    pending.add(tcp)
                    continue
                for fut in done:
                    try:
                        reply = fut.result()
                    except _Failed as exc:
                        failure = exc if failure is None or exc.servfail else failure
                        if fut is udp and tcp is None:
                            return await self._tcp(fwd, up)  # UDP refused/garbage: try TCP
                        continue
                    if fut is udp and reply[2] & 0x02:  # TC
                        self._count("upstream_truncated")
                        if client_tcp:
                            continue  # the TCP exchange is already running
                        return reply
                    return reply
            raise failure or _Failed()
        finally:
            for left in (udp, tcp):
                if left is None:
                    continue
                if not left.done():
                    left.cancel()
                with contextlib.suppress(BaseException):
                    await left  # also marks a finished one's exception as retrieved

    async def _udp(self, fwd: Forward, up: Upstream) -> bytes:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in up[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, up)
                await loop.sock_sendall(sock, fwd.query)
                resend = loop.time() + self.udp_retry
                while True:
                    try:
                        data = await asyncio.wait_for(
                            loop.sock_recv(sock, MAX_UDP_REPLY), max(0.0, resend - loop.time())
                        )
                    except TimeoutError:
                        if resend == float("inf"):
                            raise
                        self._count("upstream_udp_retry")
                        await loop.sock_sendall(sock, fwd.query)
                        resend = float("inf")
                        continue
                    try:
                        return self._check(fwd, data)
                    except _Failed as exc:
                        if exc.servfail is not None:
                            raise
                        continue  # stray or forged datagram: keep listening
            except OSError as exc:  # refused (ICMP port unreachable), no route
                self._count("upstream_udp_error")
                raise _Failed() from exc

    async def _tcp(self, fwd: Forward, up: Upstream) -> bytes:
        self._count("upstream_tcp")
        try:
            async with asyncio.timeout(self.tcp_timeout):
                reader, writer = await asyncio.open_connection(up[0], up[1])
                try:
                    writer.write(struct.pack("!H", len(fwd.query)) + fwd.query)
                    await writer.drain()
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(n)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self._count("upstream_tcp_error")
            raise _Failed() from exc
        return self._check(fwd, data)

    def _servfail(self, query: bytes) -> bytes | None:
        try:
            msg = dns.message.from_wire(query)
        except Exception:  # the core parsed it before; keep the drop path total anyway
            return None
        resp = dns.message.make_response(msg)
        resp.set_rcode(dns.rcode.SERVFAIL)
        resp.flags |= dns.flags.RA
        self._count("rcode_SERVFAIL")
        return resp.to_wire()


__all__ = ["Forwarder", "parse_upstream"]
