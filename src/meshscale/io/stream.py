"""The raw byte stream of a connection after HTTP/1.1 handed it over (an Upgrade).

Both sides of an upgrade end with one: the server's ``UpgradeStream`` (io.http) and the
client's ``Upgraded.stream`` (io.httpclient). The HTTP parser (h11) may have read past the
head: those bytes come first out of ``read``. After that the stream is the socket::

    await read(n)          # up to n bytes, b"" at EOF
    await readexactly(n)   # asyncio.IncompleteReadError at EOF
    write(b); writelines([b, ...]); await drain()
    close()                # graceful: flushes what is buffered
    abort()                # at once: a peer that stopped reading
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

READ_CHUNK = 64 * 1024  # bytes per socket read


class RawStream:
    """asyncio streams with the bytes an HTTP parser had already buffered in front."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buffered: bytes = b""
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._buffered = buffered

    @property
    def buffered(self) -> bytes:
        """Bytes received after the HTTP head and not yet returned by read()."""
        return self._buffered

    async def read(self, n: int = READ_CHUNK) -> bytes:
        """Up to n bytes; b"" at EOF."""
        if self._buffered:
            out, self._buffered = self._buffered[:n], self._buffered[n:]
            return out
        return await self._reader.read(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; raises asyncio.IncompleteReadError at EOF."""
        if len(self._buffered) >= n:
            out, self._buffered = self._buffered[:n], self._buffered[n:]
            return out
        head, self._buffered = self._buffered, b""
        return head + await self._reader.readexactly(n - len(head))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writer.write(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._writer.writelines(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        """Close after flushing what is buffered (graceful)."""
        self._writer.close()

    def abort(self) -> None:
        """Close at once, discarding buffered output (a peer that stopped reading)."""
        self._writer.transport.abort()

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._writer.transport

    def take_over(
        self, make: Callable[[asyncio.BaseProtocol], asyncio.BaseProtocol]
    ) -> tuple[bytes, bool] | None:
        """Hand the transport to ``make(old_protocol)``, which then gets every byte received
        and must pass flow control and the connection's end on to ``old_protocol`` (see
        ``PassThrough``). Returns (bytes received but not yet read, whether EOF was seen), or
        None, with nothing changed, when this stream cannot be taken over.

        After this, ``read`` must not be called; ``write``, ``drain`` and ``close`` still work.
        """
        reader = self._reader
        buf = getattr(reader, "_buffer", None)  # asyncio has no public "what is buffered"
        eof = getattr(reader, "_eof", None)
        if not isinstance(buf, bytearray) or not isinstance(eof, bool):
            return None
        transport = self._writer.transport
        if reader.exception() is not None or transport.is_closing():
            return None
        if not isinstance(transport, asyncio.Transport):
            return None
        pending = self._buffered + bytes(buf)
        self._buffered = b""
        buf.clear()
        transport.set_protocol(make(transport.get_protocol()))
        if not eof and not transport.is_reading():
            transport.resume_reading()  # the reader may have paused it (its buffer was full)
        return pending, eof


class PassThrough(asyncio.BufferedProtocol):
    """Base for protocols installed by ``RawStream.take_over``: flow control and the end of
    the connection still reach the streams' protocol, so ``drain`` and ``close`` keep working."""

    __slots__ = ("_old",)

    def __init__(self, old: asyncio.BaseProtocol) -> None:
        self._old = old

    def pause_writing(self) -> None:
        self._old.pause_writing()

    def resume_writing(self) -> None:
        self._old.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._old.connection_lost(exc)
