"""MagicBind, the magicsock driver, over real loopback UDP sockets (no engine)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
import time

import pytest

from meshscale.disco import AddrPort
from meshscale.key import DiscoPrivate, NodePrivate
from meshscale.magicsock import PeerConfig, PeerPathChanged
from meshscale.wgengine import BindClosed
from meshscale.wgengine.magicbind import MagicBind, derp_url, endpoint_peer, peer_endpoint


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


class _Side:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.node = NodePrivate(os.urandom(32))
        self.disco = DiscoPrivate(os.urandom(32))
        self.events: list[object] = []
        self.bind = MagicBind(self.node, self.disco, on_event=self.events.append)
        self.bind.start(loop)
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
        a.bind.set_local_addresses([ipaddress.ip_address("127.0.0.1")])
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
