"""DERP over WebSocket (docs/protocol/derp-disco-stun.md §1.3): the DERP byte stream inside binary
messages.

Message boundaries carry no meaning: both directions are one continuous byte stream, exactly
the frames of 1.4, starting with ServerKey. Framing is wsproto's (sans-IO); this module only
adapts it to the stream API the relay and the client already use (``read``, ``write``,
``writelines``, ``drain``, ``close``, ``transport``). The client's upgrade request is here;
the relay's accept is ``meshscale.relay.websocket``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Protocol

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

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


def client_handshake_headers(nonce: bytes) -> tuple[list[tuple[str, str]], str]:
    """(upgrade request headers, expected Sec-WebSocket-Accept) for a client upgrade to DERP;
    ``nonce`` is 16 random bytes (RFC 6455 4.1)."""
    key = base64.b64encode(nonce).decode()
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", SUBPROTOCOL),
    ]
    return headers, generate_accept_token(key.encode()).decode()


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
