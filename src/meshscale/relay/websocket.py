"""DERP over WebSocket (derp-disco-stun.md 1.3): the DERP byte stream inside binary messages.

Message boundaries carry no meaning: both directions are one continuous byte stream, exactly
the frames of 1.4, starting with ServerKey. Framing is wsproto's (sans-IO); this module only
adapts it to the stream API the relay and the client already use (``read``, ``write``,
``writelines``, ``drain``, ``close``, ``transport``).
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Protocol

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from ..io.http import Request, UpgradeStream

SUBPROTOCOL = "derp"
READ_CHUNK = 64 * 1024  # bytes


class ByteStream(Protocol):
    async def read(self, n: int = ...) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def writelines(self, data: list[bytes | memoryview]) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    @property
    def transport(self) -> asyncio.WriteTransport: ...


def wants_derp_websocket(req: Request) -> bool:
    """Upgrade: websocket with ``derp`` among the offered subprotocols (1.3)."""
    if (req.headers.get("upgrade") or "").lower() != "websocket":
        return False
    offered = ",".join(req.headers.get_all("sec-websocket-protocol"))
    return SUBPROTOCOL in [p.strip() for p in offered.split(",")]


async def accept_websocket(req: Request, stream: UpgradeStream) -> WebSocketStream:
    """Write the WebSocket 101 (subprotocol derp, no compression) and wrap the stream."""
    key = req.headers.get("sec-websocket-key") or ""
    await stream.accept(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode()),
            ("Sec-WebSocket-Protocol", SUBPROTOCOL),
        ]
    )
    return WebSocketStream(stream, ConnectionType.SERVER)


def client_handshake_headers(host: str, path: str) -> tuple[bytes, str]:
    """(request bytes, expected Sec-WebSocket-Accept) for a client upgrade to DERP."""
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    ).encode()
    return req, generate_accept_token(key.encode()).decode()


class WebSocketStream:
    """A continuous byte stream carried in binary WebSocket messages over ``inner``."""

    def __init__(self, inner: ByteStream, role: ConnectionType) -> None:
        self.inner = inner
        self.ws = Connection(role)
        self._buf = bytearray()
        self._eof = False

    async def read(self, n: int = READ_CHUNK) -> bytes:
        """Up to n bytes of message payload; b"" once the peer closed."""
        while not self._buf and not self._eof:
            data = await self.inner.read(READ_CHUNK)
            if not data:
                self.ws.receive_data(None)
                self._eof = True
                break
            self.ws.receive_data(data)
            for ev in self.ws.events():
                if isinstance(ev, BytesMessage):
                    self._buf += ev.data
                elif isinstance(ev, TextMessage):
                    self._buf += ev.data.encode()
                elif isinstance(ev, Ping):
                    self.inner.write(self.ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        self.inner.write(self.ws.send(ev.response()))
                    self._eof = True
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.inner.write(self.ws.send(Message(data=bytes(data))))

    def writelines(self, data: list[bytes | memoryview]) -> None:
        self.write(b"".join(data))

    async def drain(self) -> None:
        await self.inner.drain()

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self.inner.transport
