"""DERP client drivers: back-off, reconnect, home-region switching (real loopback relays)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable

from meshscale.derp import frames as F
from meshscale.derp.client import ClientEvent
from meshscale.derphttp import BACKOFF_MAX, DERPRegions, RegionClient, backoff_delay
from meshscale.io.http import HTTPServer, Router
from meshscale.key import NodePrivate
from meshscale.relay.app import mount_derp
from meshscale.relay.server import DERPServer


def key(n: int) -> NodePrivate:
    return NodePrivate.generate(bytes([n]) * 32)


async def until(cond: Callable[[], bool], limit: int = 500) -> None:
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def start(derp: DERPServer) -> tuple[HTTPServer, str]:
    router = Router()
    mount_derp(router, derp)
    http = HTTPServer(router)
    srv = await http.start("127.0.0.1", 0)
    return http, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/derp"


def test_backoff_grows_quadratically_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, rng) for n in range(1, 40)]
    assert 0.005 <= delays[0] < 0.015
    assert all(d < BACKOFF_MAX * 1.5 for d in delays)
    assert delays[-1] >= BACKOFF_MAX * 0.5
    assert backoff_delay(3, random.Random(0)) == backoff_delay(3, random.Random(0))


def test_region_client_reconnects_after_server_drops_it() -> None:
    async def main() -> None:
        derp = DERPServer(key(99))
        http, url = await start(derp)
        got: list[ClientEvent] = []
        rc = RegionClient(key(1), url, got.append, preferred=True, rng=random.Random(0))
        rc.start()
        try:
            await asyncio.wait_for(rc.wait_connected(), 5)
            await until(lambda: any(c.preferred for c in derp.relay.conns.values()))
            await derp.close()  # drops every client; the listener stays up
            await until(lambda: rc.connects == 2 and rc.client is not None and rc.client.connected)
            assert rc.send(key(1).public(), b"to myself after reconnect")
            await until(lambda: bool(got))
            assert got == [F.RecvPacket(key(1).public_raw(), b"to myself after reconnect")]
            # NotePreferred is re-sent on every new connection.
            await until(lambda: any(c.preferred for c in derp.relay.conns.values()))
        finally:
            await rc.close()
            await derp.close()
            await http.close(grace=0.5)

    asyncio.run(main())


def test_regions_home_switching_and_idle_close() -> None:
    async def main() -> None:
        d1, d2 = DERPServer(key(91)), DERPServer(key(92))
        (h1, u1), (h2, u2) = await start(d1), await start(d2)
        events: list[tuple[int, ClientEvent]] = []
        regions = DERPRegions(key(1), {1: u1, 2: u2}, lambda r, ev: events.append((r, ev)))
        try:
            await asyncio.wait_for(regions.set_home(1).wait_connected(), 5)
            await until(lambda: [c.preferred for c in d1.relay.conns.values()] == [True])
            await asyncio.wait_for(regions.set_home(2).wait_connected(), 5)
            await until(lambda: [c.preferred for c in d2.relay.conns.values()] == [True])
            await until(lambda: [c.preferred for c in d1.relay.conns.values()] == [False])
            assert regions.send(1, key(1).public(), b"via old home")
            await until(lambda: bool(events))
            assert events == [(1, F.RecvPacket(key(1).public_raw(), b"via old home"))]
            now = asyncio.get_running_loop().time()
            assert await regions.close_idle(now + 61) == [1]
            await until(lambda: d1.relay.client_count == 0)
            assert d2.relay.client_count == 1
        finally:
            await regions.close()
            for d, h in ((d1, h1), (d2, h2)):
                await d.close()
                await h.close(grace=0.5)

    asyncio.run(main())


def test_region_tries_nodes_in_order_and_map_change_reconnects() -> None:
    async def main() -> None:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/derp"
        d1, d2 = DERPServer(key(91)), DERPServer(key(92))
        (h1, u1), (h2, u2) = await start(d1), await start(d2)
        regions = DERPRegions(key(1), {9: [dead_url, u1]}, lambda r, ev: None)
        try:
            rc = regions.set_home(9)
            await asyncio.wait_for(rc.wait_connected(), 5)
            assert rc.url == u1
            assert rc.failures == 0
            await until(lambda: d1.relay.client_count == 1)
            regions.urls = {9: [u2]}  # the region's nodes changed: reconnect there
            await until(lambda: 9 in regions.regions and regions.regions[9].client is not None)
            await until(lambda: d1.relay.client_count == 0 and d2.relay.client_count == 1)
            await until(lambda: [c.preferred for c in d2.relay.conns.values()] == [True])
        finally:
            dead.close()
            await regions.close()
            for d, h in ((d1, h1), (d2, h2)):
                await d.close()
                await h.close(grace=0.5)

    asyncio.run(main())


def test_packets_sent_while_connecting_go_out_once_connected() -> None:
    """A WireGuard handshake sent before the relay connection is up must not be lost (its
    retry comes 5 s later): the region holds it and sends it on connect."""

    async def main() -> None:
        derp = DERPServer(key(99))
        http, url = await start(derp)
        got: list[ClientEvent] = []
        rc = RegionClient(key(1), url, got.append, rng=random.Random(0))
        try:
            assert rc.send(key(1).public(), b"early")  # not started: nothing connected yet
            rc.start()
            await asyncio.wait_for(rc.wait_connected(), 5)
            await until(lambda: bool(got))
            assert got == [F.RecvPacket(key(1).public_raw(), b"early")]
        finally:
            await rc.close()
            await derp.close()
            await http.close(grace=0.5)

    asyncio.run(main())
