"""controlhttp client side: /key and /ts2021 against servers that misbehave, and a real one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from meshscale.controlbase import HandshakeError
from meshscale.controlhttp import ClientError, NoiseRequest, NoiseUpgrade, dial, fetch_key
from meshscale.io.http import HTTPServer, Response, Router
from meshscale.key import MachinePrivate
from meshscale.testing.rawserver import canned_server

KEY = MachinePrivate(bytes([4]) * 32)
CLIENT = MachinePrivate(bytes([5]) * 32)


async def _dial(port: int, version: int = 130) -> None:
    conn = await dial(
        "127.0.0.1", port, tls=False, machine_key=CLIENT, control_key=KEY.public(),
        version=version, rand=random.Random(1).randbytes,
    )  # fmt: skip
    await conn.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1\r\n\r\n",  # the short status line that crashed the old test client
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nno\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n\r\n",
        b"garbage",
        b"",
    ],
)
def test_bad_upgrade_answers_are_client_errors(answer: bytes) -> None:
    async def body() -> None:
        async with canned_server(answer) as port:
            with pytest.raises(ClientError):
                await _dial(port)

    asyncio.run(asyncio.wait_for(body(), 5))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",  # a pre-Noise server: no key
    ],
)
def test_bad_key_answers_are_client_errors(answer: bytes) -> None:
    async def body() -> None:
        async with canned_server(answer) as port:
            with pytest.raises(ClientError):
                await fetch_key("127.0.0.1", port, tls=False, version=130)

    asyncio.run(asyncio.wait_for(body(), 5))


def test_key_is_read_chunked_and_dial_reaches_http2() -> None:
    async def dispatch(req: NoiseRequest) -> Response:
        return Response.text(200, f"{req.method} {req.path} {req.headers.get('x-a')}")

    async def key(req: object) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b'{"publicKey":'
            yield f'"{KEY.public().text()}"}}'.encode()

        return Response(200, gen(), content_type="application/json")

    async def body() -> None:
        router = Router()
        router.add("GET", "/key", key)  # type: ignore[arg-type]
        router.add_upgrade("/ts2021", NoiseUpgrade(KEY, dispatch, rand=random.Random(2).randbytes))
        server = HTTPServer(router)
        port = (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
        try:
            assert await fetch_key("127.0.0.1", port, tls=False, version=130) == KEY.public()
            conn = await dial(
                "127.0.0.1", port, tls=False, machine_key=CLIENT, control_key=KEY.public(),
                version=130, rand=random.Random(3).randbytes,
            )  # fmt: skip
            try:
                assert conn.early_payload is not None and b"chalpub:" in conn.early_payload
                got = await conn.request("POST", "/x", b"{}", [("x-a", "b")])
                assert got == (200, b"POST /x b")
            finally:
                await conn.close()
            await asyncio.wait_for(conn.closed.wait(), 5)
            with pytest.raises(ClientError):
                await conn.request("GET", "/after-close")
            # An unsupported version: the server's error frame, not a hang.
            with pytest.raises(HandshakeError, match=r"unsupported client .*v1\.78 or newer"):
                await _dial(port, version=108)
        finally:
            await server.close(grace=0.5)

    asyncio.run(asyncio.wait_for(body(), 10))


def test_issue_8_short_status_line_is_a_client_error_not_index_error() -> None:
    """The old test client split the status line by hand and raised IndexError on this."""
    from meshscale.testing.controlclient import ControlClient

    async def body() -> None:
        async with canned_server(b"HTTP/1.1\r\n\r\n") as port:
            c = ControlClient("127.0.0.1", port, control_key=KEY.public())
            with pytest.raises(ClientError, match="bad HTTP response"):
                await c.connect()
            with pytest.raises(ClientError, match="bad HTTP response"):
                await c.fetch_key()

    asyncio.run(asyncio.wait_for(body(), 5))


def test_a_large_response_needs_no_stream_window_updates() -> None:
    """Our stream window is STREAM_WINDOW (as Go's transport): a 1 MiB map arrives in one
    flight. With h2's default 64 KiB the client sent a WINDOW_UPDATE every 32 KiB and the
    server waited a round trip for each (the 10,000-node ramp of issue #14)."""
    import hyperframe.frame

    from meshscale.controlhttp.client import STREAM_WINDOW

    big = bytes(range(256)) * 4096  # 1 MiB

    async def dispatch(req: NoiseRequest) -> Response:
        return Response(200, big)

    async def body() -> None:
        router = Router()
        router.add_upgrade("/ts2021", NoiseUpgrade(KEY, dispatch, rand=random.Random(2).randbytes))
        server = HTTPServer(router)
        port = (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
        try:
            conn = await dial(
                "127.0.0.1", port, tls=False, machine_key=CLIENT, control_key=KEY.public(),
                version=130, rand=random.Random(3).randbytes,
            )  # fmt: skip
            sent = bytearray()
            write = conn._stream.write
            conn._stream.write = lambda data: (sent.extend(data), write(data))[1]  # type: ignore[method-assign]
            try:
                assert await conn.request("GET", "/big") == (200, big)
            finally:
                await conn.close()
        finally:
            await server.close(grace=0.5)
        updates = []
        pos = 0
        while pos + 9 <= len(sent):
            f, length = hyperframe.frame.Frame.parse_frame_header(memoryview(sent[pos : pos + 9]))
            if isinstance(f, hyperframe.frame.WindowUpdateFrame) and f.stream_id:
                updates.append(f.stream_id)
            pos += 9 + length
        assert pos == len(sent)
        assert updates == []
        assert 2 * len(big) <= STREAM_WINDOW

    asyncio.run(asyncio.wait_for(body(), 10))
