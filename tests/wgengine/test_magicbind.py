"""MagicBind, the magicsock driver, over real loopback UDP sockets (no engine)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import select
import socket
import threading
import time

import pytest

from meshscale import disco
from meshscale.disco import AddrPort
from meshscale.key import DiscoPrivate, NodePrivate
from meshscale.magicsock import PeerConfig, PeerPathChanged
from meshscale.magicsock.conn import RESTUN_MIN, RESTUN_SPREAD
from meshscale.magicsock.endpoint import HEARTBEAT_INTERVAL
from meshscale.wgengine import BindClosed
from meshscale.wgengine.magicbind import MagicBind, derp_url, endpoint_peer, peer_endpoint

from ..io.fakeloop import FakeLoop


def test_synthetic_endpoints_round_trip():
    k = NodePrivate(b"\x01" * 32).public()
    ep = peer_endpoint(k)
    assert endpoint_peer(ep) == k
    assert endpoint_peer(("203.0.113.1", 41641)) is None


def test_derp_url(monkeypatch):
    monkeypatch.delenv("TS_DEBUG_USE_DERP_HTTP", raising=False)
    assert derp_url({"HostName": "d.lab", "IPv4": "203.0.113.9"}) == "https://203.0.113.9:443/derp"
    assert derp_url({"HostName": "d.lab", "DERPPort": 8443}) == "https://d.lab:8443/derp"
    assert derp_url({"HostName": "x", "IPv4": "2001:db8::1"}) == "https://[2001:db8::1]:443/derp"
    monkeypatch.setenv("TS_DEBUG_USE_DERP_HTTP", "1")
    assert derp_url({"HostName": "d.lab"}) == "http://d.lab:80/derp"


def on_loop(loop: asyncio.AbstractEventLoop, fn, *args):
    """Run ``fn(*args)`` on the loop's thread (MagicBind's loop-side methods must be)."""

    async def call():
        return fn(*args)

    return asyncio.run_coroutine_threadsafe(call(), loop).result(5)


class _Side:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.node = NodePrivate(os.urandom(32))
        self.disco = DiscoPrivate(os.urandom(32))
        self.events: list[object] = []
        self.bind = MagicBind(self.node, self.disco, on_event=self.events.append)
        on_loop(loop, self.bind.start, loop)
        self.port = self.bind.open(0)
        self.got: list[tuple[bytes, tuple[str, int]]] = []
        self.thread = threading.Thread(target=self._rx, daemon=True)
        self.thread.start()

    def _rx(self) -> None:
        while True:
            try:
                for data, ep in self.bind.receive():
                    self.got.append((bytes(data), ep))
            except BindClosed:
                return

    def config(self, other: _Side) -> PeerConfig:
        ap = AddrPort(ipaddress.ip_address("127.0.0.1"), other.port)
        return PeerConfig(other.node.public(), other.disco.public(), (ap,), 0)


@pytest.mark.slow
def test_two_binds_find_the_direct_path_and_carry_datagrams():
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    a = b = None
    try:
        a, b = _Side(loop), _Side(loop)
        on_loop(loop, a.bind.set_local_addresses, [ipaddress.ip_address("127.0.0.1")])
        loop.call_soon_threadsafe(a.bind.set_peers, [a.config(b)])
        loop.call_soon_threadsafe(b.bind.set_peers, [b.config(a)])
        time.sleep(0.05)
        payload = b"\x04\x00\x00\x00" + b"x" * 60  # looks like WireGuard transport
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not b.got:
            a.bind.send(peer_endpoint(b.node.public()), [[payload[:10], payload[10:]]])
            time.sleep(0.05)
        assert b.got, a.bind.core.statistics()
        data, ep = b.got[0]
        assert data == payload
        assert ep == peer_endpoint(a.node.public())
        assert any(isinstance(e, PeerPathChanged) and e.addr is not None for e in a.events)
        fut = asyncio.run_coroutine_threadsafe(a.bind.ping(b.node.public(), 2.0), loop)
        latency, via, region = fut.result(5)
        assert via == f"127.0.0.1:{b.port}" and region == 0 and 0 <= latency < 1
        timeout = asyncio.run_coroutine_threadsafe(
            a.bind.ping(NodePrivate(os.urandom(32)).public(), 0.2), loop
        )
        with pytest.raises(TimeoutError):
            timeout.result(5)
    finally:
        for s in (a, b):
            if s is not None:
                asyncio.run_coroutine_threadsafe(s.bind.stop(), loop).result(5)
                s.bind.close()
                s.thread.join(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


@pytest.mark.slow
def test_two_binds_talk_through_derp_when_there_is_no_udp_path(monkeypatch):
    """No endpoints at all: WireGuard datagrams and user pings go through a real DERP
    server (in process, plain HTTP on loopback)."""
    from meshscale.io.http import HTTPServer, Router
    from meshscale.relay.app import mount_derp
    from meshscale.relay.server import DERPServer
    from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion

    monkeypatch.setenv("TS_DEBUG_USE_DERP_HTTP", "1")
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    a = b = None
    relay = DERPServer(NodePrivate(os.urandom(32)))
    router = Router()
    mount_derp(router, relay)
    server = HTTPServer(router)
    try:
        srv = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(5)
        port = srv.sockets[0].getsockname()[1]
        node = DERPNode("900a", 900, "127.0.0.1", IPv4="127.0.0.1", DERPPort=port, STUNPort=-1)
        dm = DERPMap(Regions={900: DERPRegion(900, "lab", Nodes=[node])})
        a, b = _Side(loop), _Side(loop)
        for me, other in ((a, b), (b, a)):
            cfg = PeerConfig(other.node.public(), other.disco.public(), (), 900)
            loop.call_soon_threadsafe(me.bind.set_derp_map, dm)
            loop.call_soon_threadsafe(me.bind.set_peers, [cfg])
        payload = b"\x04\x00\x00\x00" + b"y" * 60
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not b.got:
            a.bind.send(peer_endpoint(b.node.public()), [[payload]])
            time.sleep(0.1)
        regions = {r: rc.client is not None and rc.client.connected
                   for r, rc in (a.bind.derp.regions.items() if a.bind.derp else [])}  # fmt: skip
        assert b.got, (a.bind.core.statistics(), b.bind.core.statistics(), regions)
        assert b.got[0] == (payload, peer_endpoint(a.node.public()))
        fut = asyncio.run_coroutine_threadsafe(a.bind.ping(b.node.public(), 3.0), loop)
        _latency, via, region = fut.result(5)
        assert (via, region) == ("", 900)
    finally:
        for s in (a, b):
            if s is not None:
                asyncio.run_coroutine_threadsafe(s.bind.stop(), loop).result(5)
                s.bind.close()
                s.thread.join(5)
        asyncio.run_coroutine_threadsafe(server.close(0.5), loop).result(5)
        asyncio.run_coroutine_threadsafe(relay.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


# ---- the timer (a fake loop and clock; no real waiting but loopback delivery) ----


def _timed_bind(loop: FakeLoop) -> tuple[MagicBind, list[tuple[float, float | None]]]:
    """A started MagicBind on ``loop`` whose timer callbacks record (now, core deadline)."""
    bind = MagicBind(
        NodePrivate(os.urandom(32)), DiscoPrivate(os.urandom(32)), on_event=lambda ev: None,
        clock=loop.time,
    )  # fmt: skip
    fired: list[tuple[float, float | None]] = []
    on_timer = bind._on_timer

    def recording(now: float) -> None:
        fired.append((now, bind.core.get_timer()))
        on_timer(now)

    bind._on_timer = recording  # type: ignore[method-assign]
    bind.start(loop)  # type: ignore[arg-type]
    return bind, fired


def test_idle_bind_wakes_only_when_the_core_has_a_deadline():
    loop = FakeLoop()
    bind, fired = _timed_bind(loop)
    loop.run_until(loop.now + 3600)
    assert bind._timer is not None
    # Only the core's re-STUN schedule (every 20-26 s) is due; the 100 ms tick this replaces
    # woke 36000 times in this hour.
    assert 3600 / (RESTUN_MIN + RESTUN_SPREAD) - 1 <= len(fired) <= 3600 / RESTUN_MIN + 1
    assert all(deadline == now for now, deadline in fired)  # never early, never late
    assert bind._timer.wakeups == len(fired)
    assert loop.ran == [now for now, _ in fired]


def test_disco_pings_go_out_when_their_timers_are_due():
    loop = FakeLoop()
    peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bind = None
    try:
        peer_sock.bind(("127.0.0.1", 0))
        bind, fired = _timed_bind(loop)
        bind.open(0)  # an engine thread's call: pokes the timer
        loop.run_until(loop.now + 1)
        peer = PeerConfig(
            NodePrivate(os.urandom(32)).public(), DiscoPrivate(os.urandom(32)).public(),
            (AddrPort(ipaddress.ip_address("127.0.0.1"), peer_sock.getsockname()[1]),), 0,
        )  # fmt: skip
        bind.set_peers([peer])
        start = loop.now
        bind.send(peer_endpoint(peer.node_key), [[b"\x04\x00\x00\x00" + bytes(40)]])

        def pings_until(t: float) -> int:
            loop.run_until(t)
            n = 0
            while select.select([peer_sock], [], [], 0.05)[0]:
                data = peer_sock.recv(2048)
                n += disco.looks_like_disco(data)
            return n

        # A send on an untrusted path pings at once; the heartbeat every 3 s re-pings a
        # candidate at most every DISCO_PING_INTERVAL, so the next ping is due at 6 s.
        assert pings_until(start + 0.5) == 1
        assert pings_until(start + 2 * HEARTBEAT_INTERVAL - 0.01) == 0
        assert pings_until(start + 2 * HEARTBEAT_INTERVAL) == 1
        assert pings_until(start + 4 * HEARTBEAT_INTERVAL) == 1
        assert all(deadline is not None and deadline <= now for now, deadline in fired)
    finally:
        if bind is not None:
            bind.close()
        peer_sock.close()
