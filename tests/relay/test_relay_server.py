"""The DERP relay over real loopback sockets: our client and server, hostile clients, mesh."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from meshscale import stun
from meshscale.derp import frames as F
from meshscale.derp.client import ClientSession
from meshscale.derp.errors import HandshakeError
from meshscale.derp.info import ClientInfo
from meshscale.derphttp import DERPClient
from meshscale.io.http import HTTPServer, Router
from meshscale.key import NodePrivate, NodePublic
from meshscale.relay.app import mount_derp
from meshscale.relay.metrics import render
from meshscale.relay.server import DERPServer
from meshscale.relay.stun_server import STUNServer

MESH_KEY = bytes(range(32))


def key(n: int) -> NodePrivate:
    return NodePrivate.generate(bytes([n]) * 32)


class Node:
    def __init__(self, derp: DERPServer) -> None:
        self.derp = derp
        router = Router()
        mount_derp(router, derp)
        self.http = HTTPServer(router)
        self.url = ""

    async def start(self) -> None:
        srv = await self.http.start("127.0.0.1", 0)
        self.port = srv.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/derp"

    async def close(self) -> None:
        await self.derp.close()
        await self.http.close(grace=0.5)


def run(body: Callable[..., Awaitable[Any]], *servers: DERPServer, timeout: float = 10) -> Any:
    async def main() -> Any:
        nodes = [Node(s) for s in servers]
        for n in nodes:
            await n.start()
        try:
            return await asyncio.wait_for(body(*nodes), timeout)
        finally:
            for n in nodes:
                await n.close()

    return asyncio.run(main())


async def connected(node: Node, priv: NodePrivate, **kw: Any) -> DERPClient:
    c = DERPClient(priv, node.url, **kw)
    await c.connect()
    return c


async def recv_packet(c: DERPClient, wait: float = 3) -> F.RecvPacket:
    async with asyncio.timeout(wait):
        while True:
            ev = await c.recv()
            if isinstance(ev, F.RecvPacket):
                return ev


def test_two_clients_exchange_packets_and_ping() -> None:
    async def body(node: Node) -> None:
        a, b = await connected(node, key(1)), await connected(node, key(2))
        assert a.server_key == node.derp.public
        for i in range(50):
            assert a.send(key(2).public(), b"a->b %d" % i)
        got = [await recv_packet(b) for _ in range(50)]
        assert [g.packet for g in got] == [b"a->b %d" % i for i in range(50)]
        assert {g.src for g in got} == {key(1).public_raw()}
        b.send(key(1).public(), b"reply")
        assert (await recv_packet(a)).packet == b"reply"
        reader = asyncio.create_task(a.recv())
        rtt = await a.ping()
        reader.cancel()
        assert 0 <= rtt < 1
        text = render(node.derp)
        assert "derp_clients 2" in text
        assert "derp_packets_relayed_total 51" in text
        assert "# TYPE derp_packets_relayed_total counter" in text
        assert text.count("# HELP ") == text.count("# TYPE ") >= 10
        await a.close()
        await b.close()

    run(body, DERPServer(key(99)))


def test_peer_gone_when_sender_disconnects() -> None:
    async def body(node: Node) -> None:
        a, b = await connected(node, key(1)), await connected(node, key(2))
        a.send(key(2).public(), b"hi")
        await recv_packet(b)
        await a.close()
        async with asyncio.timeout(3):
            ev = await b.recv()
        assert ev == F.PeerGone(key(1).public_raw(), 0)
        await b.close()

    run(body, DERPServer(key(99)))


def test_verification_refuses_unknown_keys() -> None:
    allowed = {key(1).public()}
    seen: list[tuple[NodePublic, ClientInfo]] = []

    async def verify(k: NodePublic, info: ClientInfo) -> bool:
        seen.append((k, info))
        return k in allowed

    async def body(node: Node) -> None:
        a = await connected(node, key(1))
        with pytest.raises((ConnectionError, HandshakeError, asyncio.IncompleteReadError)):
            await connected(node, key(2))
        assert node.derp.counters.login_failures == {"unknown_node": 1}
        assert node.derp.relay.client_count == 1
        await a.close()

    run(body, DERPServer(key(99), verify_client=verify))
    assert seen[0][1] == ClientInfo(version=2, can_ack_pings=True)


def test_failing_verifier_fails_closed() -> None:
    async def verify(k: NodePublic, info: ClientInfo) -> bool:
        raise RuntimeError("node table unavailable")

    async def body(node: Node) -> None:
        with pytest.raises((ConnectionError, HandshakeError)):
            await connected(node, key(1))
        assert node.derp.counters.login_failures == {"verify_error": 1}

    run(body, DERPServer(key(99), verify_client=verify))


async def until(cond: Callable[[], bool], limit: int = 500) -> None:
    """Poll a condition on the event loop, bounded in steps (10 ms each)."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_two_meshed_relays_forward() -> None:
    async def body(n1: Node, n2: Node) -> None:
        n1.derp.add_mesh_peer(n2.url)
        n2.derp.add_mesh_peer(n1.url)
        a = await connected(n1, key(1))
        b = await connected(n2, key(2))
        await until(
            lambda: (
                key(2).public_raw() in n1.derp.relay.forward_key
                and key(1).public_raw() in n2.derp.relay.forward_key
            )
        )
        a.send(key(2).public(), b"over the mesh")
        got = await recv_packet(b)
        assert (got.src, got.packet) == (key(1).public_raw(), b"over the mesh")
        b.send(key(1).public(), b"and back")
        assert (await recv_packet(a)).packet == b"and back"
        assert n1.derp.relay.stats.packets_forwarded == 1
        assert n2.derp.relay.stats.packets_forwarded == 1
        await b.close()
        await until(lambda: key(2).public_raw() not in n1.derp.relay.forward_key)
        await a.close()

    run(body, DERPServer(key(91), mesh_key=MESH_KEY), DERPServer(key(92), mesh_key=MESH_KEY))


def test_wrong_mesh_key_refused() -> None:
    async def body(node: Node) -> None:
        with pytest.raises((ConnectionError, HandshakeError)):
            await connected(node, key(1), info=ClientInfo(mesh_key="11" * 32))
        assert node.derp.counters.login_failures == {"bad_mesh_key": 1}

    run(body, DERPServer(key(99), mesh_key=MESH_KEY))


async def raw_login(
    node: Node, priv: NodePrivate, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-driven client: upgrade and ClientInfo, then the caller misbehaves."""
    sock = socket.socket()
    if rcvbuf is not None:  # a small window, so the kernel cannot absorb megabytes for us
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port))
    r, w = await asyncio.open_connection(sock=sock)
    w.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
    await r.readuntil(b"\r\n\r\n")
    s = ClientSession(priv, lambda n: bytes(n))
    s.receive_data(await r.readexactly(45))
    w.write(s.data_to_send())
    await w.drain()
    return r, w


@pytest.mark.slow
def test_slow_reader_does_not_stall_others() -> None:
    async def body(node: Node) -> None:
        _, w = await raw_login(node, key(3), rcvbuf=4096)  # logs in, then never reads
        w.transport.pause_reading()
        a, b = await connected(node, key(1)), await connected(node, key(2))
        big = bytes(60000)
        for i in range(400):  # ~24 MB toward the non-reader
            a.send(key(3).public(), big)
            if i % 20 == 0:
                a.send(key(2).public(), b"still flowing %d" % i)
                assert (await recv_packet(b)).packet == b"still flowing %d" % i
            await a.drain()
        drops = node.derp.relay.stats.drops
        assert drops.get("queue_head", 0) > 0
        assert a.dropped == 0
        # The client that never reads is closed once one write blocks past the deadline
        # (kernel buffers first absorb several MB, so keep pushing, bounded in count).
        for _ in range(300):
            if node.derp.relay.client_count == 2:
                break
            a.send(key(3).public(), big)
            await a.drain()
            await asyncio.sleep(0.01)
        assert node.derp.relay.client_count == 2
        assert node.derp.counters.write_timeouts == 1
        w.close()
        await a.close()
        await b.close()

    run(body, DERPServer(key(99), write_timeout=0.5), timeout=20)


def test_slow_but_reading_receiver_holds_the_sender_instead_of_dropping() -> None:
    """A receiver that reads, slowly: the relay stops reading the sender while the
    receiver's socket is backed up (TCP pushes back), so nothing is head-dropped."""
    n, big = 300, bytes(30000)  # 9 MB: more than the kernel buffers absorb

    async def body(node: Node) -> int:
        r, w = await raw_login(node, key(3), rcvbuf=4096)
        a = await connected(node, key(1))
        got = 0

        async def slow_reader() -> None:
            nonlocal got
            fb = F.FrameBuffer(F.MAX_CLIENT_FRAME)
            while got < n:
                data = await r.read(32768)
                if not data:
                    return
                fb.feed(data)
                got += sum(t == F.FrameType.RECV_PACKET for t, _ in fb.frames())
                await asyncio.sleep(0.005)

        task = asyncio.create_task(slow_reader())
        for _ in range(n):
            a.send(key(3).public(), big)
            await a.drain()
        with contextlib.suppress(TimeoutError):  # packets were dropped: got < n
            await asyncio.wait_for(task, 20)
        w.close()
        await a.close()
        return got

    server = DERPServer(key(99), queue_depth=4, max_stall=5.0)
    assert run(body, server, timeout=30) == n
    assert server.relay.stats.drops.get("queue_head", 0) == 0
    assert server.counters.write_timeouts == 0


@pytest.mark.parametrize(
    "garbage",
    [
        F.header(F.FrameType.SEND_PACKET, 0x7FFFFFFF),  # oversized announced frame
        F.encode(F.FrameType.SEND_PACKET, b"short"),  # shorter than a key
        F.encode(F.FrameType.NOTE_PREFERRED, b"\x01\x02"),
        F.encode(F.FrameType.FORWARD_PACKET, bytes(64)),  # mesh-only frame
    ],
)
def test_bad_frames_close_only_that_client(garbage: bytes) -> None:
    async def body(node: Node) -> None:
        a, b = await connected(node, key(1)), await connected(node, key(2))
        r, w = await raw_login(node, key(3))
        w.write(garbage)
        await w.drain()
        async with asyncio.timeout(3):
            while await r.read(65536):
                pass  # server closes us after ServerInfo
        assert node.derp.counters.protocol_errors == 1
        a.send(key(2).public(), b"unaffected")
        assert (await recv_packet(b)).packet == b"unaffected"
        w.close()
        await a.close()
        await b.close()

    run(body, DERPServer(key(99)))


def test_garbage_before_client_info_and_slowloris_login() -> None:
    async def body(node: Node) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        w.write(b"\xff" * 64)
        async with asyncio.timeout(3):
            while await r.read(65536):
                pass
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        async with asyncio.timeout(3):
            while await r.read(65536):  # never send ClientInfo
                pass
        w.close()
        assert node.derp.counters.login_failures == {"handshake": 1, "timeout": 1}

    run(body, DERPServer(key(99), login_timeout=0.2))


def test_http_endpoints() -> None:
    async def body(node: Node) -> list[bytes]:
        out = []
        for raw in (
            b"GET /derp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"HEAD /derp/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /derp/latency-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: abc.1\r\n"
            b"Connection: close\r\n\r\n",
        ):
            r, w = await asyncio.open_connection("127.0.0.1", node.port)
            w.write(raw)
            out.append(await r.read())
            w.close()
        return out

    upgrade, probe, latency, g204 = run(body, DERPServer(key(99)))
    assert upgrade.startswith(b"HTTP/1.1 426")
    assert upgrade.endswith(b"DERP requires connection upgrade")
    assert probe.startswith(b"HTTP/1.1 200")
    assert b"Access-Control-Allow-Origin: *" in probe
    assert latency.startswith(b"HTTP/1.1 200")
    assert g204.startswith(b"HTTP/1.1 204")
    assert b"X-Tailscale-Response: response abc.1" in g204


def test_101_headers_and_fast_start() -> None:
    async def body(node: Node) -> tuple[bytes, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(
            b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
            b"Derp-Fast-Start: 1\r\n\r\n"
        )
        first = await r.readexactly(45)
        w.close()
        return head, first

    server = DERPServer(key(99))
    head, first = run(body, server)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Upgrade: DERP\r\n" in head
    assert b"Derp-Version: 2\r\n" in head
    assert b"Derp-Public-Key: " + server.public.hex().encode() in head
    assert first == F.server_key(server.public.raw)


def test_stun_server_loopback_v4_and_v6() -> None:
    async def main() -> list[stun.STUNResponse]:
        srv = STUNServer()
        bound = await srv.start(None, 0)
        port = bound[0][1]
        assert srv.port == port
        loop = asyncio.get_running_loop()
        out = []
        families = [(socket.AF_INET, "127.0.0.1")]
        if len(bound) == 2:
            families.append((socket.AF_INET6, "::1"))
        for fam, host in families:
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((host, port))
            txid = bytes(range(12))
            sock.send(b"junk that is ignored")
            sock.send(stun.request(txid))
            data = await asyncio.wait_for(loop.sock_recv(sock, 1500), 2)
            resp = stun.parse_response(data)
            assert resp.txid == txid
            assert resp.port == sock.getsockname()[1]
            out.append(resp)
            sock.close()
        assert srv.counters.ignored >= 1
        srv.close()
        return out

    got = asyncio.run(main())
    assert got[0].addr == ipaddress.IPv4Address("127.0.0.1")
    if len(got) == 2:
        assert got[1].addr == ipaddress.IPv6Address("::1")


def test_websocket_client_talks_to_plain_client() -> None:
    async def body(node: Node) -> None:
        ws_url = node.url.replace("http://", "ws://")
        a = await connected(node, key(1))
        w = DERPClient(key(2), ws_url)
        await w.connect()
        assert w.server_key == node.derp.public
        big = bytes(range(256)) * 200  # spans several WebSocket messages' worth of stream
        w.send(key(1).public(), big)
        got = await recv_packet(a)
        assert (got.src, got.packet) == (key(2).public_raw(), big)
        a.send(key(2).public(), b"back over ws")
        assert (await recv_packet(w)).packet == b"back over ws"
        await w.close()
        await a.close()

    run(body, DERPServer(key(99)))


def test_old_websocket_upgrade_without_subprotocol_is_raw_derp() -> None:
    async def body(node: Node) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", node.port)
        w.write(
            b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await r.readuntil(b"\r\n\r\n")
        first = await r.readexactly(45)
        w.close()
        return first

    server = DERPServer(key(99))
    assert run(body, server) == F.server_key(server.public.raw)


def test_random_garbage_after_login_never_hurts_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seeded fuzz through real sockets: random frames and bytes from logged-in clients."""
    import random

    rng = random.Random(7)

    async def body(node: Node) -> None:
        a, b = await connected(node, key(1)), await connected(node, key(2))
        for i in range(30):
            _r, w = await raw_login(node, key(10 + i))
            if rng.random() < 0.5:
                junk = rng.randbytes(rng.randrange(1, 300))
            else:  # plausible frame types with random payloads
                junk = F.encode(
                    rng.choice([*range(0x01, 0x16), 0xFF]), rng.randbytes(rng.randrange(0, 80))
                )
            w.write(junk)
            await w.drain()
            w.close()
            a.send(key(2).public(), b"alive %d" % i)
            assert (await recv_packet(b)).packet == b"alive %d" % i
        await until(lambda: node.derp.relay.client_count == 2)
        await a.close()
        await b.close()

    run(body, DERPServer(key(99)))
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_accept_rate_limit_closes_excess_connections() -> None:
    async def body(node: Node) -> None:
        a, b = await connected(node, key(1)), await connected(node, key(2))
        with pytest.raises((ConnectionError, HandshakeError, asyncio.IncompleteReadError)):
            await connected(node, key(3))
        assert node.derp.counters.login_failures == {"accept_rate": 1}
        assert node.derp.relay.client_count == 2
        await a.close()
        await b.close()

    run(body, DERPServer(key(99), accept_limit=1e-6, accept_burst=2))


def test_recv_many_returns_a_burst_in_order() -> None:
    async def body(node: Node) -> None:
        a, b = await connected(node, key(1)), await connected(node, key(2))
        for i in range(20):
            a.send(key(2).public(), b"%d" % i)
        got: list[bytes] = []
        async with asyncio.timeout(3):
            while len(got) < 20:
                got += [e.packet for e in await b.recv_many() if isinstance(e, F.RecvPacket)]
        assert got == [b"%d" % i for i in range(20)]
        await a.close()
        await b.close()

    run(body, DERPServer(key(99)))


def test_health_broadcast_reaches_clients() -> None:
    async def body(node: Node) -> None:
        a = await connected(node, key(1))
        node.derp.broadcast_health("maintenance at noon")
        async with asyncio.timeout(3):
            assert await a.recv() == F.Health("maintenance at noon")
        node.derp.broadcast_health("")
        async with asyncio.timeout(3):
            assert await a.recv() == F.Health("")
        await a.close()

    run(body, DERPServer(key(99)))


def test_keepalive_sent_when_idle() -> None:
    async def body(node: Node) -> bytes:
        r, w = await raw_login(node, key(3))
        fb = F.FrameBuffer(F.MAX_CLIENT_FRAME)
        types: list[int] = []
        async with asyncio.timeout(3):
            while types.count(F.FrameType.KEEP_ALIVE) < 2:
                fb.feed(await r.read(65536))
                types += [t for t, _ in fb.frames()]
        w.close()
        return bytes(types)

    types = run(body, DERPServer(key(99), keepalive=0.05))
    assert types[0] == F.FrameType.SERVER_INFO  # raw_login consumed the ServerKey
    assert set(types[1:]) == {F.FrameType.KEEP_ALIVE}
