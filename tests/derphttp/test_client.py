"""derphttp.DERPClient: the HTTP upgrade against servers that misbehave."""

from __future__ import annotations

import asyncio

import pytest

from meshscale.derp.errors import HandshakeError
from meshscale.derphttp import DERPClient
from meshscale.key import NodePrivate
from meshscale.testing.rawserver import canned_server


@pytest.mark.parametrize(
    ("scheme", "answer", "match"),
    [
        ("http", b"HTTP/1.1\r\n\r\n", "bad HTTP response"),  # a short status line
        ("http", b"\x00\x01garbage\r\n\r\n", "bad HTTP response"),
        ("http", b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno", "refused: 426"),
        ("http", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "refused: 200"),
        ("ws", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n", "Accept"),
    ],
)  # fmt: skip
def test_bad_upgrade_answers_are_handshake_errors(scheme: str, answer: bytes, match: str) -> None:
    async def body() -> None:
        async with canned_server(answer) as port:
            c = DERPClient(
                NodePrivate.generate(bytes([1]) * 32), f"{scheme}://127.0.0.1:{port}/derp"
            )
            with pytest.raises(HandshakeError, match=match):
                await c.connect()
            assert not c.connected

    asyncio.run(asyncio.wait_for(body(), 5))


def test_101_then_close_is_a_connection_error() -> None:
    async def body() -> None:
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
        async with canned_server(answer) as port:
            c = DERPClient(NodePrivate.generate(bytes([1]) * 32), f"http://127.0.0.1:{port}/derp")
            with pytest.raises(ConnectionError):
                await c.connect()

    asyncio.run(asyncio.wait_for(body(), 5))
