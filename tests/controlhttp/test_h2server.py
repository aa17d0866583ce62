"""controlhttp: HTTP/2 inside Noise over loopback, with a custom dispatch (no control logic)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from meshscale.controlhttp import MAX_NOISE_BODY, NoiseRequest, NoiseUpgrade, StreamAborted
from meshscale.io.http import HTTPServer, Response, Router
from meshscale.key import MachinePrivate
from meshscale.testing.controlclient import ControlClient

pytestmark = pytest.mark.slow


async def _serve(dispatch, rng: random.Random) -> tuple[HTTPServer, int, MachinePrivate]:  # type: ignore[no-untyped-def]
    key = MachinePrivate(rng.randbytes(32))
    router = Router()
    up = NoiseUpgrade(key, dispatch, rand=rng.randbytes, is_node=lambda mk: True)
    router.add_upgrade("/ts2021", up)
    server = HTTPServer(router)
    srv = await server.start("127.0.0.1", 0)
    return server, srv.sockets[0].getsockname()[1], key


def test_machine_key_body_limits_large_and_concurrent_responses() -> None:
    seen: list[NoiseRequest] = []
    release = asyncio.Event()

    async def dispatch(req: NoiseRequest) -> Response:
        seen.append(req)
        if req.path == "/big":
            return Response(200, bytes(range(256)) * 2000)  # 512000 B: flow control
        if req.path == "/slow":

            async def body() -> AsyncIterator[bytes]:
                yield b"a"
                await release.wait()
                yield b"b"

            return Response(200, body())
        if req.path in ("/abort", "/empty"):

            async def failing() -> AsyncIterator[bytes]:
                if req.path == "/abort":
                    raise StreamAborted(404, "gone\n")
                return
                yield b""  # an async generator that yields nothing

            return Response(200, failing())
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        return Response.text(200, f"{req.method} {req.path} {len(req.body)}")

    async def go() -> None:
        rng = random.Random(1)
        server, port, key = await _serve(dispatch, rng)
        c = ControlClient("127.0.0.1", port, control_key=key.public(), rand=rng.randbytes)
        try:
            await c.connect()
            slow = asyncio.create_task(c.request("POST", "/slow"))
            status, body = await c.request("POST", "/echo", b"x" * 100_000)
            assert (status, body) == (200, b"POST /echo 100000")
            assert seen[-1].machine_key == c.machine_key.public()
            assert seen[-1].protocol_version == c.version
            status, body = await c.request("GET", "/big")
            assert status == 200
            assert body == bytes(range(256)) * 2000
            status, _ = await c.request("POST", "/huge", b"y" * (MAX_NOISE_BODY + 1))
            assert status == 413
            assert (await c.request("GET", "/boom"))[0] == 500
            assert await c.request("POST", "/abort") == (404, b"gone\n")
            assert await c.request("POST", "/empty") == (200, b"")
            assert not slow.done()  # a long response does not block other streams
            release.set()
            assert await asyncio.wait_for(slow, 5) == (200, b"ab")
        finally:
            await c.close()
            await server.close(grace=0.5)

    asyncio.run(asyncio.wait_for(go(), 20))


def test_client_disconnect_cancels_streaming_handler() -> None:
    closed = asyncio.Event()

    async def dispatch(req: NoiseRequest) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"x"
                await asyncio.sleep(60)
                yield b"y"
            finally:
                closed.set()

        return Response(200, body())

    async def go() -> None:
        rng = random.Random(2)
        server, port, key = await _serve(dispatch, rng)
        c = ControlClient("127.0.0.1", port, control_key=key.public(), rand=rng.randbytes)
        await c.connect()
        task = asyncio.create_task(c.request("POST", "/stream"))
        await asyncio.sleep(0.05)
        await c.close()
        await asyncio.wait_for(closed.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close(grace=0.5)

    asyncio.run(asyncio.wait_for(go(), 20))


class _FakeRaw:
    """An UpgradeStream stand-in fed from a list of chunks; records what is written."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.written = bytearray()

    async def read(self, n: int = 65536) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


def _pair() -> tuple[object, object]:
    from meshscale.controlbase import ClientConn, ClientHandshake, Conn, server_accept

    s, c = MachinePrivate(bytes([1]) * 32), MachinePrivate(bytes([2]) * 32)
    hs = ClientHandshake(c, s.public(), 130, bytes([3]) * 32)
    cc = ClientConn(hs, s.public())
    resp, peer, v, (tx, rx) = server_accept(cc.initiation, s, bytes([4]) * 32)
    cc.receive_data(resp)
    return cc.conn, Conn(tx, rx, peer, v)


@hsettings(max_examples=60)
@given(st.binary(max_size=300), st.booleans())
def test_h2server_survives_garbage(data: bytes, with_preface: bool) -> None:
    """Whatever arrives inside valid records, the server ends cleanly (no exception)."""
    from meshscale.controlhttp import H2Server, NoiseStream

    client, server = _pair()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if with_preface else b""
    raw = _FakeRaw([client.send(preface + data)])  # type: ignore[attr-defined]

    async def dispatch(req: NoiseRequest) -> Response:
        return Response()

    async def go() -> None:
        srv = H2Server(NoiseStream(raw, server), dispatch, server.peer, 130)  # type: ignore[arg-type, attr-defined]
        await asyncio.wait_for(srv.run(), 5)

    asyncio.run(go())
