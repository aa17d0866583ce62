"""Issue #12 finding 1: unbounded /ts2021. Each test performs the attack over real loopback
sockets (self-made machine keys, a real Noise handshake, raw HTTP/2 frames) and asserts on
the server's own counters (``NoiseUpgrade.gate``), not on timing."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import hpack
import pytest
from hyperframe.frame import HeadersFrame

from meshscale.controlhttp import (
    Budget,
    ClientError,
    H2Client,
    NoiseLimits,
    NoiseRequest,
    NoiseUpgrade,
    dial,
)
from meshscale.io.http import HTTPServer, Response, Router
from meshscale.key import MachinePrivate, MachinePublic
from meshscale.tailcfg import CURRENT_CAPABILITY_VERSION

pytestmark = pytest.mark.slow

FAST = Budget(idle_timeout=0.4, body_timeout=0.4, max_streams=4, max_body=8192, max_buffered=16384)
NODE = Budget(
    idle_timeout=0.4, body_timeout=5.0, max_streams=100, max_body=1 << 20, max_buffered=4 << 20
)


async def _dispatch(req: NoiseRequest) -> Response:
    if req.path == "/poll":  # a long poll: the handler runs, keep-alives prove liveness

        async def body() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"k"
                await asyncio.sleep(0.05)

        return Response(200, body())
    return Response.text(200, f"{req.path} {len(req.body)}")


async def _serve(
    limits: NoiseLimits, nodes: set[MachinePublic] | None = None
) -> tuple[HTTPServer, int, MachinePrivate, NoiseUpgrade]:
    key = MachinePrivate(random.Random(7).randbytes(32))
    known = nodes if nodes is not None else set()
    up = NoiseUpgrade(key, _dispatch, limits=limits, is_node=lambda mk: mk in known)
    router = Router()
    router.add_upgrade("/ts2021", up)
    server = HTTPServer(router)
    srv = await server.start("127.0.0.1", 0)
    return server, srv.sockets[0].getsockname()[1], key, up


async def _dial(port: int, key: MachinePrivate, mk: MachinePrivate | None = None) -> H2Client:
    return await dial(
        "127.0.0.1",
        port,
        tls=False,
        machine_key=mk or MachinePrivate(random.randbytes(32)),
        control_key=key.public(),
        version=CURRENT_CAPABILITY_VERSION,
    )


async def _until(pred: Callable[[], bool], wait: float = 5.0) -> None:
    async with asyncio.timeout(wait):
        for _ in range(int(wait * 100)):
            if pred():
                return
            await asyncio.sleep(0.01)
    assert pred()


def _run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def test_idle_unauthenticated_connection_is_closed() -> None:
    async def go() -> None:
        server, port, key, up = await _serve(NoiseLimits(unauth=FAST))
        try:
            c = await _dial(port, key)
            assert up.gate.stats()["connections"] == 1
            await asyncio.wait_for(c.closed.wait(), 5)  # we never send a request
            await _until(lambda: up.gate.connections == 0)
            assert up.gate.closed_idle == 1
            await c.close()
        finally:
            await server.close(grace=0.5)

    _run(go)


def test_node_long_poll_outlives_idle_deadline_and_idle_node_is_closed() -> None:
    async def go() -> None:
        mk = MachinePrivate(random.randbytes(32))
        server, port, key, up = await _serve(NoiseLimits(node=NODE), {mk.public()})
        try:
            c = await _dial(port, key, mk)
            assert up.gate.unauth_connections == 0  # classed as a node's
            status, body = await c.request("POST", "/poll")  # 2 s > 5 idle deadlines
            assert (status, body) == (200, b"k" * 40)
            assert up.gate.closed_idle == 0
            await asyncio.wait_for(c.closed.wait(), 5)  # idle afterwards: closed
            await _until(lambda: up.gate.connections == 0)
            assert up.gate.closed_idle == 1
            await c.close()
        finally:
            await server.close(grace=0.5)

    _run(go)


def test_per_source_and_global_unauthenticated_caps() -> None:
    async def go() -> None:
        mk = MachinePrivate(random.randbytes(32))
        limits = NoiseLimits(max_unauth_per_source=3, max_unauth_connections=10)
        server, port, key, up = await _serve(limits, {mk.public()})
        clients: list[H2Client] = []
        try:
            clients += [await _dial(port, key) for _ in range(3)]
            with pytest.raises(ClientError, match="503"):
                await _dial(port, key)
            assert up.gate.stats()["unauth_connections"] == 3
            assert up.gate.refused == 1
            # The full source is refused before the handshake (cheap), so a node sharing
            # the address waits too (SECURITY.md) ...
            with pytest.raises(ClientError, match="503"):
                await _dial(port, key, mk)
            await clients.pop(0).close()
            await _until(lambda: up.gate.unauth_connections == 2)
            node = await _dial(port, key, mk)  # ... and gets in once there is room,
            clients.append(node)
            assert (await node.request("POST", "/x"))[0] == 200
            assert up.gate.unauth_connections == 2  # counted as a node, not against the cap
            clients.append(await _dial(port, key))  # room again
        finally:
            for c in clients:
                await c.close()
            await server.close(grace=0.5)
        limits = NoiseLimits(max_unauth_per_source=10, max_unauth_connections=2)
        server, port, key, up = await _serve(limits)
        try:
            clients = [await _dial(port, key) for _ in range(2)]
            with pytest.raises(ClientError, match="503"):
                await _dial(port, key)
            assert up.gate.refused == 1
        finally:
            for c in clients:
                await c.close()
            await server.close(grace=0.5)

    _run(go)


def _open_unfinished(c: H2Client, n: int, size: int) -> list[int]:
    """Start ``n`` requests whose bodies never end (``size`` bytes each sent)."""
    h = c._h2
    sids = []
    for _ in range(n):
        sid = h.get_next_available_stream_id()
        h.send_headers(
            sid, [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/r")]
        )
        h.send_data(sid, b"z" * size)
        sids.append(sid)
    c._flush()
    return sids


def test_unfinished_bodies_are_budgeted_and_timed_out() -> None:
    async def go() -> None:
        limits = NoiseLimits(unauth=FAST, max_buffered_unauth=1 << 20)
        server, port, key, up = await _serve(limits)
        try:
            c = await _dial(port, key)
            await asyncio.sleep(0.05)  # the server's SETTINGS (4 streams) arrived
            _open_unfinished(c, 4, 6000)  # 24,000 B against a 16,384 B budget
            await _until(lambda: up.gate.rejected_bodies >= 2)
            assert up.gate.buffered <= FAST.max_buffered
            assert up.gate.buffered == 12000  # two bodies held, two refused with 503
            await asyncio.wait_for(c.closed.wait(), 5)  # the body deadline passed
            await _until(lambda: up.gate.connections == 0)
            assert up.gate.buffered == 0
            assert up.gate.closed_idle == 1
            await c.close()
            # A body over the per-request cap is refused at once, before its end.
            c = await _dial(port, key)
            await asyncio.sleep(0.05)
            reply = await c.start("POST", "/big", b"y" * (FAST.max_body + 1))
            assert reply.status == 413
            await c.close()
        finally:
            await server.close(grace=0.5)

    _run(go)


def test_server_wide_unauthenticated_body_budget() -> None:
    async def go() -> None:
        limits = NoiseLimits(unauth=FAST, max_buffered_unauth=10000)
        server, port, key, up = await _serve(limits)
        try:
            a, b = await _dial(port, key), await _dial(port, key)
            await asyncio.sleep(0.05)
            _open_unfinished(a, 1, 6000)
            await _until(lambda: up.gate.buffered == 6000)
            _open_unfinished(b, 1, 6000)  # would make 12,000 > 10,000 server-wide
            await _until(lambda: up.gate.rejected_bodies == 1)
            assert up.gate.buffered_unauth == 6000
            await a.close()
            await b.close()
            await _until(lambda: up.gate.connections == 0)
            assert up.gate.buffered == 0
        finally:
            await server.close(grace=0.5)

    _run(go)


def test_declared_huge_frame_closes_before_buffering() -> None:
    async def go() -> None:
        server, port, key, up = await _serve(NoiseLimits())
        try:
            c = await _dial(port, key)
            await asyncio.sleep(0.05)
            # A DATA frame declaring 16 MiB - 1 bytes, then only 4 KiB of it.
            c._stream.write(
                ((16 << 20) - 1).to_bytes(3, "big")
                + b"\x00\x00"
                + (1).to_bytes(4, "big")
                + b"q" * 4096
            )
            await asyncio.wait_for(c.closed.wait(), 5)  # closed at once, not after 16 MiB
            await _until(lambda: up.gate.connections == 0)
            await c.close()
        finally:
            await server.close(grace=0.5)

    _run(go)


def test_non_utf8_header_closes_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        server, port, key, up = await _serve(NoiseLimits())
        try:
            c = await _dial(port, key)
            await asyncio.sleep(0.05)
            block = hpack.Encoder().encode(
                [
                    (b":method", b"POST"),
                    (b":scheme", b"https"),
                    (b":authority", b"x"),
                    (b":path", b"/\xff\xfe"),
                    (b"x-bad", b"\xc3\x28"),
                ]
            )
            frame = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
            c._stream.write(frame.serialize())
            await asyncio.wait_for(c.closed.wait(), 5)
            await _until(lambda: up.gate.connections == 0)
            await c.close()
        finally:
            await server.close(grace=0.5)

    with caplog.at_level(logging.INFO):
        _run(go)
    bad = [r for r in caplog.records if "bad HTTP/2 input" in r.getMessage()]
    assert len(bad) == 1
    assert bad[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_connection_is_promoted_once_its_machine_key_registers() -> None:
    async def go() -> None:
        mk = MachinePrivate(random.randbytes(32))
        known: set[MachinePublic] = set()
        server, port, key, up = await _serve(NoiseLimits(unauth=FAST, node=NODE), known)
        try:
            c = await _dial(port, key, mk)
            assert up.gate.unauth_connections == 1
            assert (await c.request("POST", "/x", b"a" * 9000))[0] == 413  # unauth budget
            known.add(mk.public())  # "registered" on this connection
            assert (await c.request("POST", "/x", b"a" * 9000)) == (200, b"/x 9000")
            assert up.gate.unauth_connections == 0
            assert up.gate.connections == 1
            await c.close()
        finally:
            await server.close(grace=0.5)

    _run(go)


def test_new_unauthenticated_connections_are_paced_then_refused() -> None:
    async def go() -> None:
        mk = MachinePrivate(random.randbytes(32))
        limits = NoiseLimits(unauth_rate=1000, unauth_rate_per_source=10, max_pace=0.3)
        server, port, key, up = await _serve(limits, {mk.public()})
        try:
            got = await asyncio.gather(*(_dial(port, key) for _ in range(10)),
                                       return_exceptions=True)  # fmt: skip
            ok = [c for c in got if isinstance(c, H2Client)]
            refused = [e for e in got if isinstance(e, ClientError)]
            assert len(ok) + len(refused) == 10
            assert up.gate.paced >= 1  # over the rate: made to wait, still served
            assert refused and up.gate.refused == len(refused)  # past max_pace: 503
            assert all("503" in str(e) for e in refused)
            for c in ok:
                await c.close()
            node = await _dial(port, key, mk)  # nodes are not rate-limited
            await node.close()
            await asyncio.sleep(0.5)  # tokens come back
            await (await _dial(port, key)).close()
        finally:
            await server.close(grace=0.5)

    _run(go)
