"""The decrypted byte stream of a ts2021 connection (either side).

raw stream (TCP/TLS after the 101: io.stream.RawStream or the server's UpgradeStream)
  -> NoiseStream: controlbase records <-> plaintext (meshscale.controlbase.Conn)
    -> HTTP/2 (H2Server on the control server, H2Client on the node)
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from meshscale.controlbase import Conn

READ_CHUNK = 64 * 1024  # bytes per socket read
DRAIN_THRESHOLD = 64 * 1024  # bytes queued in the socket buffer before a write waits
WRITE_TIMEOUT = 30.0  # seconds a write may wait for the peer to read: peers that never read


class ByteStream(Protocol):
    """What NoiseStream needs of the connection under it."""

    async def read(self, n: int = ...) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class NoiseStream:
    """Plaintext reads and writes over controlbase records on an upgraded connection."""

    def __init__(self, raw: ByteStream, conn: Conn) -> None:
        self.raw = raw
        self.conn = conn
        self._pending = b""
        # The transport under raw, looked up once (writable() runs once per stream and
        # fan-out tick: the property chain cost as much as the encryption).
        self._transport: asyncio.WriteTransport | None = getattr(raw, "transport", None)

    def push_front(self, plaintext: bytes) -> None:
        """Plaintext already decrypted (records that arrived with the handshake)."""
        self._pending = plaintext + self._pending

    async def read(self) -> bytes:
        """Some plaintext; b"" at EOF. Raises ControlBaseError on a bad record."""
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        while True:
            data = await self.raw.read(READ_CHUNK)
            if not data:
                return b""
            out = self.conn.receive_data(data)
            if out:
                return out

    def write(self, plaintext: bytes) -> None:
        if plaintext:
            self.raw.write(self.conn.send(plaintext))

    def writable(self) -> bool:
        """True when a write now would not queue past DRAIN_THRESHOLD (nor hit a closed
        connection): the map fan-out writes synchronously only then."""
        transport = self._transport
        if transport is None:
            return False
        return not transport.is_closing() and transport.get_write_buffer_size() < DRAIN_THRESHOLD

    async def drain(self) -> None:
        """Wait for the socket buffer to empty; a peer that stops reading for WRITE_TIMEOUT
        loses the connection (ConnectionError), so it cannot pin a session forever."""
        transport: asyncio.WriteTransport | None = getattr(self.raw, "transport", None)
        if transport is not None and transport.get_write_buffer_size() < DRAIN_THRESHOLD:
            if transport.is_closing():
                raise ConnectionError("connection closed")
            return  # the common case: nothing queued, no need to set up a deadline
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.raw.drain()
        except TimeoutError:
            self.raw.close()
            raise ConnectionError("peer stopped reading") from None
